"""The bench stage: an exported workspace in, a report directory out (DESIGN.md sections 3 and 6).

``run_bench(cfg)`` reads ``export/<name>`` (dense and pruned ONNX + ``export.json``, the pruned checkpoint's
``sleb.json``), times every available backend (``backends.py``) over the sweep (``sweep.py``, ``harness.py``)
and writes ``bench/<name>/``: ``bench.json`` (the record, written last), ``bench.csv``, ``bench.md`` and the
PNG plots. The directory is staged: a failed run leaves nothing behind and an existing report is replaced
only with ``force``. Ctrl-C is the exception to "nothing": what was measured until then is written with
``partial: true`` (a benchmark interrupted after twenty minutes still has twenty minutes of figures).

``render_report(path)`` redraws the CSV, Markdown and plots from a ``bench.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from sleb_deploy.artifacts import check_writable_target, environment, staged_dir
from sleb_deploy.bench.backends import select, unavailable
from sleb_deploy.bench.harness import Clock
from sleb_deploy.bench.plots import write_plots
from sleb_deploy.bench.probe import probe_variant
from sleb_deploy.bench.records import BenchConfig, BenchManifest
from sleb_deploy.bench.report import CSV_FILE, MD_FILE, markdown, write_csv
from sleb_deploy.bench.sweep import Progress, Sweep
from sleb_deploy.bench.workspace import prompt_tokens, quality, read_workspace
from sleb_deploy.errors import ArtifactError, MissingDependencyError, UserInputError


def _check(cfg: BenchConfig) -> None:
    sizes = [*cfg.batch_sizes, *cfg.long_batch_sizes]
    if not cfg.batch_sizes or any(b < 1 for b in sizes):
        raise UserInputError(f"--batch-sizes must be positive integers (got {list(cfg.batch_sizes)})")
    if cfg.prompt_len < 1 or cfg.long_prompt_len < 0:
        raise UserInputError("--prompt-len must be >= 1 and --long-prompt-len >= 0 (0: no long-context row)")
    if cfg.new_tokens < 2 or (cfg.long_prompt_len > 0 and cfg.long_new_tokens < 2):
        raise UserInputError("--new-tokens must be >= 2: one prefill token and at least one decode step")
    if cfg.warmup < 1 or cfg.min_reps < 1 or cfg.max_reps < cfg.min_reps:
        raise UserInputError("need --warmup >= 1 and 1 <= --min-reps <= --max-reps")
    if cfg.seconds_per_cell <= 0:
        raise UserInputError("--seconds-per-cell must be positive")


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_bench(
    cfg: BenchConfig,
    on_progress: Progress | None = None,
    notify: Callable[[str], None] = lambda message: None,
    clock: Clock = time.perf_counter,
) -> BenchManifest:
    """Benchmark the workspace ``cfg.workspace`` into ``cfg.out`` (default ``bench/<name>``); see the module doc."""
    _check(cfg)
    start = time.perf_counter()
    ws = read_workspace(cfg.workspace)
    out = Path(cfg.out) if cfg.out is not None else Path("bench") / ws.name
    check_writable_target(out, cfg.force)
    backends = select(cfg.backends)
    notes = {b.key: unavailable(b.key) for b in backends}
    if all(notes.values()):
        raise MissingDependencyError("no backend can run here: " + "; ".join(f"{k}: {n}" for k, n in notes.items()))
    env = environment()  # first: the commit (and -dirty) of the code that measures
    env["load_avg_before"] = _load_avg()

    from transformers import AutoTokenizer

    rows = cfg.rows()
    tokenizer = AutoTokenizer.from_pretrained(str(ws.dense.onnx_dir))
    prompts = prompt_tokens(tokenizer, cfg.text, max(max(r.batch_sizes) for r in rows), max(r.prompt_len for r in rows))
    variants = ws.variants
    if cfg.ideal:
        ort_runs = any(b.framework == "ort" and notes[b.key] is None for b in backends)
        variants = [*variants, probe_variant(ws, onnx=ort_runs, notify=notify)]
    sweep = Sweep(cfg, ws, variants, prompts, clock, on_progress, notify)
    partial = False
    with staged_dir(out, cfg.force) as tmp:
        try:
            sweep.run(backends)
        except KeyboardInterrupt:
            partial = True
            notify("interrupted: writing what was measured so far (marked partial)")
        env["load_avg_after"] = _load_avg()
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
        manifest = BenchManifest(
            workspace=str(ws.root),
            name=ws.name,
            config=config,
            models={
                "dense_blocks": ws.dense.blocks,
                "pruned_blocks": ws.pruned.blocks,
                "removal_order": ws.sleb.removal_order if ws.sleb is not None else None,
                "dtype": ws.graph.dtype,
                "variant": ws.graph.variant,
                "last_logits_only": ws.graph.last_logits_only,
                "kv_cache": ws.graph.kv_cache,
                "max_cache_len": ws.graph.max_cache_len,
                "model": ws.model_source.spec,
            },
            quality=quality(ws.sleb),
            backends=sweep.backend_runs,
            harness_check=sweep.harness,
            records=sweep.records,
            partial=partial,
            seconds=round(time.perf_counter() - start, 1),
            environment=env,
        )
        write_reports(manifest, tmp)
        manifest.write(tmp)  # last: its presence means the report is complete (or says it is partial)
    manifest.directory = out.absolute()
    return manifest


def write_reports(manifest: BenchManifest, directory: Path) -> list[Path]:
    """CSV, plots and Markdown of ``manifest`` into ``directory``; returns the paths written."""
    directory = Path(directory)
    write_csv(manifest, directory / CSV_FILE)
    plots = write_plots(manifest, directory)
    (directory / MD_FILE).write_text(markdown(manifest, plots))
    return [directory / CSV_FILE, *(directory / p for p in plots), directory / MD_FILE]


def render_report(bench_json: Path) -> list[Path]:
    """Redraw the CSV, Markdown and plots beside ``bench_json`` (the file or its directory)."""
    path = Path(bench_json)
    file = path / BenchManifest.FILE if path.is_dir() else path
    if not file.is_file():
        raise ArtifactError(f"{file} not found: give a bench.json written by `sleb-deploy bench`")
    return write_reports(BenchManifest.read_file(file), file.parent)
