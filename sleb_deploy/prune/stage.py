"""The prune stage: checkpoint in, pruned checkpoint + `sleb.json` out.

The SLEB search runs on the scorer the memory plan (`plan.py`) picks for `--max-memory` (default: the free
memory): `cached` with the whole model loaded when it fits, else `streamed` (`streamed.py`), which holds only the
non-block weights and reads each block from the checkpoint when it runs; then perplexity is streamed too and
the pruned checkpoint is written tensor by tensor.

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
from sleb_deploy.models.adapters import adapter_for, get_adapter, remove_blocks
from sleb_deploy.models.load import (
    ModelSource,
    load_model,
    load_tokenizer,
    read_config,
    read_model_type,
    read_num_blocks,
    resolve_model,
    torch_dtype,
)
from sleb_deploy.prune.manifest import SlebManifest, SourceModel
from sleb_deploy.prune.plan import Calibration, MemoryPlan, ModelShape, format_bytes, free_memory, parse_memory
from sleb_deploy.prune.plan import plan_memory as plan_memory_for
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
    if cfg.max_memory is not None:
        parse_memory(cfg.max_memory)


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


def prune(
    cfg: PruneConfig, on_candidate: CandidateHook | None = None, on_plan: Callable[[MemoryPlan], None] | None = None
) -> SlebManifest:
    """Run SLEB (or a baseline) and write the pruned checkpoint; see the module docstring. ``on_plan`` gets the
    memory plan of a SLEB search before the weights are loaded."""
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
    plan = plan_memory(cfg, source, k) if calib_ids is not None and cfg.metric == "sleb" else None
    if plan is not None and on_plan is not None:
        on_plan(plan)
    streamed = None
    if plan is not None and plan.scorer == "streamed":
        from sleb_deploy.prune.streamed import StreamedModel, streamed_perplexity

        load_dtype = torch_dtype(cfg.dtype)
        streamed = StreamedModel(
            checkpoint_dir(source), None if isinstance(load_dtype, str) else load_dtype, cfg.device
        )
        model, blocks = streamed.model, streamed.blocks
    else:
        model = load_model(source, cfg.dtype, cfg.device)
        blocks = list(adapter_for(model).blocks(model))
    if len(blocks) != n:
        raise ArtifactError(f"config.json says {n} blocks but the model has {len(blocks)}; fix the checkpoint")
    if streamed is not None:
        dense_ppl = streamed_perplexity(streamed, eval_ids, cfg.batch_size, list(range(n)))
    else:
        dense_ppl = perplexity(model, eval_ids, cfg.batch_size)

    phases: list[Phase] = []
    resumed = 0
    counter = BlockCounter(blocks)
    try:
        if calib_ids is not None and calib_spec is not None:
            if cfg.metric == "block-influence":
                scores = block_influence(model, calib_ids, cfg.batch_size)
                removed = one_shot_select(scores, k)
                phases = [Phase(0, list(range(n)), scores, removed[0], {"one_shot_order": removed})]
            else:
                assert plan is not None  # planned for every SLEB search above
                phases, resumed = _run_sleb(
                    cfg, plan, streamed or model, calib_ids, source, calib_spec.to_json(), n, k, out, on_candidate
                )
                removed = [p.removed for p in phases]
    finally:
        counter.close()

    kept = [i for i in range(n) if i not in removed]
    if streamed is not None:
        pruned_ppl = streamed_perplexity(streamed, eval_ids, cfg.batch_size, kept)
    else:
        remove_blocks(model, kept)
        pruned_ppl = perplexity(model, eval_ids, cfg.batch_size)
    method = "blocks" if cfg.blocks is not None else cfg.metric
    manifest = SlebManifest(
        model=SourceModel(**source.to_json(), model_type=str(model.config.model_type), num_blocks=n),
        method={
            "metric": method,
            "label": METHOD_LABELS[method],
            "scorer": plan.scorer if plan is not None else None,
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
            **({"block_loads": streamed.loads} if streamed is not None else {}),
        },
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        memory_plan=plan.to_json() if plan is not None else None,
        environment=environment(),
    )
    with staged_dir(out, cfg.force) as tmp:
        if streamed is not None:
            from sleb_deploy.prune.streamed import write_pruned_checkpoint

            write_pruned_checkpoint(streamed, kept, tmp)
        else:
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


def checkpoint_dir(source: ModelSource) -> Path:
    """The local checkpoint directory (a hub model is fetched into the Hugging Face cache first)."""
    if source.kind != "hub":
        return Path(source.location)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source.location, allow_patterns=["*.json", "*.safetensors"]))


def plan_memory(cfg: PruneConfig, source: ModelSource, k: int) -> MemoryPlan:
    """The plan of this run's SLEB search (``plan.py``), from the config, the checkpoint's safetensors headers
    (exact block sizes) when it is local, the calibration size, the dtype and the budget. Raises when nothing
    fits a budget that was given (or, for ``--scorer auto``, the free memory)."""
    config = read_config(source).get_text_config()
    shape = ModelShape.from_config(config)
    dtype: Any = torch_dtype(cfg.dtype)
    weights = None
    local = Path(source.location)
    if source.kind != "hub" and any(local.glob("*.safetensors")):
        from sleb_deploy.models.checkpoint import CheckpointTensors
        from sleb_deploy.prune.streamed import checkpoint_weight_bytes

        ckpt = CheckpointTensors(local)
        dtype = ckpt.float_dtype() if dtype == "auto" else dtype
        blocks_path = get_adapter(str(config.model_type)).blocks_path
        weights = checkpoint_weight_bytes(ckpt, blocks_path, shape.num_blocks, dtype)
    if dtype == "auto":
        import torch

        dtype = getattr(config, "dtype", None) or torch.float32
    if cfg.max_memory is not None:
        budget, budget_source = parse_memory(cfg.max_memory), "--max-memory"
    else:
        budget, budget_source = free_memory(cfg.device)
    plan = plan_memory_for(
        shape, Calibration(cfg.windows, cfg.seq_len, cfg.batch_size, cfg.eval_windows), k,
        dtype.itemsize, budget, scorer=cfg.scorer, device=cfg.device, budget_source=budget_source,
        weights=weights, early=cfg.early_barrier, latter=cfg.latter_barrier,
    )  # fmt: skip
    if not plan.fits and (cfg.scorer == "auto" or cfg.max_memory is not None):
        raise UserInputError(
            f"the SLEB search needs ~{format_bytes(plan.peak_bytes)} with the {plan.scorer} scorer, more than "
            f"{format_bytes(budget)} ({budget_source}); raise --max-memory or lower --windows, --seq-len "
            "or --batch-size"
        )
    return plan


def _run_sleb(
    cfg: PruneConfig,
    plan: MemoryPlan,
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

    scorer: Any
    if plan.scorer == "streamed":
        from sleb_deploy.prune.streamed import StreamedScorer

        states = "cpu" if plan.states_on == "cpu" else None
        scorer = StreamedScorer(model, windows, cfg.batch_size, progress, plan.window_groups, states)
    else:
        scorer = (NaiveScorer if plan.scorer == "naive" else CachedScorer)(model, windows, cfg.batch_size, progress)

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
