"""The prune stage: checkpoint in, pruned checkpoint + `sleb.json` out.

Resumable: after each phase the finished phases go into a progress file next to the output
(`.<out>.progress.json`); `resume=True` continues from it when model, calibration tokens and settings match.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sleb_deploy.artifacts import check_writable_target, environment, staged_dir, write_json
from sleb_deploy.config import DEFAULT_RATIO, METRICS, SCORERS, PruneConfig
from sleb_deploy.data import draw_windows, resolve_window_bos
from sleb_deploy.errors import ArtifactError, SlebDeployError, UserInputError
from sleb_deploy.evaluate import perplexity
from sleb_deploy.models.adapters import adapter_for, remove_blocks
from sleb_deploy.models.load import (
    ModelSource,
    load_model,
    load_tokenizer,
    read_model_type,
    read_num_blocks,
    resolve_model,
)
from sleb_deploy.prune.manifest import SlebManifest, SourceModel
from sleb_deploy.prune.scoring import BlockCounter, CachedScorer, NaiveScorer, block_influence
from sleb_deploy.prune.select import Phase, check_barriers, num_to_remove, one_shot_select, sleb_select

METHOD_LABELS = {
    "sleb": "SLEB (Song et al. 2024): greedy, iterative, calibration NLL with the block skipped",
    "block-influence": "baseline: ShortGPT block influence, one-shot, 1 - cos(in, out)",
    "blocks": "user-given block list",
}

# on_candidate(phase_index, phases_total, done, total)
CandidateHook = Callable[[int, int, int, int], None]


class PruneInterrupted(SlebDeployError):
    exit_code = 130


def model_name(spec: str) -> str:
    """A short name for the workspace: the alias, the directory name or the hub repo name."""
    return Path(spec.rstrip("/")).name or "model"


def default_out(cfg: PruneConfig) -> Path:
    return Path("export") / model_name(cfg.model) / "hf-pruned"


def progress_path(out: Path) -> Path:
    return out.absolute().parent / f".{out.name}.progress.json"


def _validate(cfg: PruneConfig) -> None:
    if cfg.metric not in METRICS:
        raise UserInputError(f"--metric {cfg.metric} is not one of {', '.join(METRICS)}")
    if cfg.scorer not in SCORERS:
        raise UserInputError(f"--scorer {cfg.scorer} is not one of {', '.join(SCORERS)}")
    if cfg.blocks is not None and (cfg.remove is not None or cfg.ratio is not None):
        raise UserInputError("--blocks names the blocks itself; drop --remove/--ratio")
    if cfg.batch_size < 1:
        raise UserInputError("--batch-size must be >= 1")


def _load_progress(path: Path, fingerprint: dict[str, Any]) -> list[Phase]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if data.get("fingerprint") != fingerprint:
        raise ArtifactError(
            f"{path} belongs to a run with other settings (model, calibration or barriers); "
            "run without --resume to start over"
        )
    return [Phase.from_json(p) for p in data["phases"]]


def prune(cfg: PruneConfig, on_candidate: CandidateHook | None = None) -> SlebManifest:
    """Run SLEB (or a baseline) and write the pruned checkpoint; see the module docstring."""
    _validate(cfg)
    start = time.perf_counter()
    out = Path(cfg.out) if cfg.out is not None else default_out(cfg)
    check_writable_target(out, cfg.force)
    source = resolve_model(cfg.model)
    n = read_num_blocks(source)
    if cfg.blocks is not None:
        removed = _check_blocks(cfg.blocks, n)
        k = len(removed)
    else:
        ratio = DEFAULT_RATIO if cfg.remove is None and cfg.ratio is None else cfg.ratio
        k = num_to_remove(n, cfg.remove, ratio)
        if cfg.metric == "sleb":
            check_barriers(n, k, cfg.early_barrier, cfg.latter_barrier)

    # Text first: a too-short calibration file fails before the weights are loaded.
    bos = resolve_window_bos(cfg.window_bos, read_model_type(source))
    tokenizer = load_tokenizer(source)
    eval_ids, eval_spec = draw_windows(tokenizer, cfg.eval_text, cfg.eval_windows, cfg.seq_len, None, "eval", bos=bos)
    calib_ids = calib_spec = None
    if cfg.blocks is None:
        calib_ids, calib_spec = draw_windows(tokenizer, cfg.calib, cfg.windows, cfg.seq_len, cfg.seed, bos=bos)
    model = load_model(source, cfg.dtype, cfg.device)
    blocks = adapter_for(model).blocks(model)
    if len(blocks) != n:
        raise ArtifactError(f"config.json says {n} blocks but the model has {len(blocks)}; fix the checkpoint")
    dense_ppl = perplexity(model, eval_ids, cfg.batch_size)

    phases: list[Phase] = []
    resumed = 0
    counter = BlockCounter(list(blocks))
    try:
        if calib_ids is not None and calib_spec is not None:
            if cfg.metric == "block-influence":
                scores = block_influence(model, calib_ids, cfg.batch_size)
                removed = one_shot_select(scores, k)
                phases = [Phase(0, list(range(n)), scores, removed[0], {"one_shot_order": removed})]
            else:
                phases, resumed = _run_sleb(
                    cfg, model, calib_ids, source, calib_spec.to_json(), n, k, out, on_candidate
                )
                removed = [p.removed for p in phases]
    finally:
        counter.close()

    kept = [i for i in range(n) if i not in removed]
    remove_blocks(model, kept)
    pruned_ppl = perplexity(model, eval_ids, cfg.batch_size)
    method = "blocks" if cfg.blocks is not None else cfg.metric
    manifest = SlebManifest(
        model=SourceModel(**source.to_json(), model_type=str(model.config.model_type), num_blocks=n),
        method={
            "metric": method,
            "label": METHOD_LABELS[method],
            "scorer": cfg.scorer if method == "sleb" else None,
            "barriers": [cfg.early_barrier, cfg.latter_barrier],
            "dtype": cfg.dtype,
            "batch_size": cfg.batch_size,
            "window_bos": {"choice": cfg.window_bos, "used": bos},
        },
        calibration=calib_spec.to_json() if calib_spec is not None else None,
        removal_order=removed,
        kept_blocks=kept,
        num_blocks_after=len(kept),
        phases=[p.to_json() for p in phases],
        perplexity={"eval": eval_spec.to_json(), "dense": dense_ppl.to_json(), "pruned": pruned_ppl.to_json()},
        cost={
            "block_forwards": counter.count,
            "seconds": round(time.perf_counter() - start, 2),
            "resumed_phases": resumed,
        },
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        environment=environment(),
    )
    with staged_dir(out, cfg.force) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest.write(tmp)
    progress_path(out).unlink(missing_ok=True)
    manifest.directory = out.absolute()
    return manifest


def _check_blocks(blocks: list[int], n: int) -> list[int]:
    bad = [b for b in blocks if not 0 <= b < n]
    if bad:
        raise UserInputError(f"--blocks {bad} out of range: the model has blocks 0..{n - 1}")
    if len(set(blocks)) != len(blocks):
        raise UserInputError(f"--blocks {blocks} lists a block twice")
    if not 1 <= len(blocks) < n:
        raise UserInputError(f"--blocks must name between 1 and {n - 1} blocks")
    return list(blocks)


def _run_sleb(
    cfg: PruneConfig,
    model: Any,
    windows: Any,
    source: ModelSource,
    calibration: dict[str, Any],
    n: int,
    k: int,
    out: Path,
    on_candidate: CandidateHook | None,
) -> tuple[list[Phase], int]:
    fingerprint = {
        "model_checksum": source.checksum or source.location,
        "token_sha256": calibration["token_sha256"],
        "barriers": [cfg.early_barrier, cfg.latter_barrier],
        "dtype": cfg.dtype,
        "batch_size": cfg.batch_size,
    }
    ppath = progress_path(out)
    done = _load_progress(ppath, fingerprint) if cfg.resume else []
    done = done[:k]
    state = {"phase": len(done)}

    def progress(i: int, total: int) -> None:
        if on_candidate is not None:
            on_candidate(state["phase"], k, i, total)

    scorer_cls = CachedScorer if cfg.scorer == "cached" else NaiveScorer
    scorer = scorer_cls(model, windows, cfg.batch_size, progress)

    def save(phases: list[Phase]) -> None:
        state["phase"] = len(phases)
        ppath.parent.mkdir(parents=True, exist_ok=True)
        write_json(ppath, {"fingerprint": fingerprint, "phases": [p.to_json() for p in phases]})

    try:
        phases = sleb_select(n, k, scorer, cfg.early_barrier, cfg.latter_barrier, done, save)
    except KeyboardInterrupt:
        saved = state["phase"]
        raise PruneInterrupted(
            f"interrupted in phase {saved + 1} of {k}; {saved} finished phase(s) kept in {ppath}: "
            "run the same command with --resume to continue"
        ) from None
    return phases, len(done)
