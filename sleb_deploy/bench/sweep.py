"""The sweep: every backend x row x batch size, skipping what cannot run with a note, keeping what ran.

Backends run one after another (each loads dense, pruned and the probe, measures every cell, and frees them
before the next backend loads), so two runtimes never hold the cores or the memory at once. Within a backend
the variants are interleaved round by round (``harness.measure_cell``).

A cell is skipped, with the reason in its records, when the context is over the model's
``max_position_embeddings``, when the batch is over a runner's ``max_batch`` (an engine built for fewer),
when it writes more KV slots than a static-cache graph's fixed buffer holds (``max_cache_len``), when the
estimated memory (KV caches of the loaded variants + logits) is over what the device has free, or when the
runtime fails to allocate; the sweep goes on with the next cell. The results accumulate in
``Sweep.records`` as they are measured, so an interrupted sweep still has them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from sleb_deploy.bench import memory
from sleb_deploy.bench.backends import Backend, Runner, unavailable
from sleb_deploy.bench.harness import Clock, cell_records, check_harness, measure_cell
from sleb_deploy.bench.ort_runner import BackendUnavailable, pool_threads
from sleb_deploy.bench.records import PHASES, BackendRun, BenchConfig, HarnessCheck, Record, Row
from sleb_deploy.bench.workspace import PROBE, Variant, Workspace
from sleb_deploy.contract import CONCAT, STATIC, static_slots

# on_progress(done, total, what): cells finished so far
Progress = Callable[[int, int, str], None]
HARNESS_CHECK_ROUNDS = 30
_OOM_WORDS = ("out of memory", "failed to allocate", "bad_alloc", "cannot allocate", "memoryerror")


def _looks_like_oom(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return isinstance(err, MemoryError) or any(word in text for word in _OOM_WORDS)


def estimate_mb(graph: Any, blocks: list[int], batch: int, row: Row) -> float:
    """Memory a cell needs beyond the weights: every loaded variant's KV cache at full length (each keeps
    its last cache until its next prefill; a static graph with a fixed buffer: that buffer) and three
    prefill-sized logits tensors (output, arena, argmax)."""
    itemsize = 2 if graph.dtype in ("fp16", "bf16") else 4
    fixed = graph.max_cache_len if getattr(graph, "kv_cache", CONCAT) == STATIC else None
    length = fixed if fixed is not None else row.prompt_len + row.new_tokens
    per_block = 2 * batch * graph.num_kv_heads * length * graph.head_dim * itemsize
    positions = 1 if graph.last_logits_only else row.prompt_len
    logits = batch * positions * graph.vocab_size * 4
    return (sum(blocks) * per_block + 3 * logits) / 1024**2


def _over_engine_limits(runners: dict[str, Runner], batch: int, row: Row) -> str | None:
    """Why a cell is over the limits an engine was built with (its ``engine.json``) or a static graph's fixed
    KV cache buffer, or None when it fits."""
    buffers = [m for r in runners.values() if (m := getattr(r, "max_cache_len", None)) is not None]
    slots = static_slots(row.prompt_len, row.new_tokens)
    if buffers and slots > min(buffers):
        return (
            f"prompt + new tokens - 1 = {slots} slots, over the static graph's {min(buffers)}-slot KV cache buffer "
            "(export with a larger --max-cache-len)"
        )
    checks = (
        ("max_batch", batch, "batch", "--max-batch"),
        ("max_input_len", row.prompt_len, "prompt length", "--max-input-len"),
        ("max_context_len", row.prompt_len + row.new_tokens, "prompt + new tokens", "--max-context-len"),
    )
    for attr, value, what, option in checks:
        limits = [m for r in runners.values() if (m := getattr(r, attr, None)) is not None]
        if limits and value > min(limits):
            return f"{what} {value} is over the engine's limit of {min(limits)} (rebuild it with a larger {option})"
    return None


class Sweep:
    def __init__(
        self,
        cfg: BenchConfig,
        ws: Workspace,
        variants: list[Variant],
        prompts: np.ndarray,
        clock: Clock = time.perf_counter,
        on_progress: Progress | None = None,
        notify: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.cfg, self.ws, self.variants, self.prompts = cfg, ws, variants, prompts
        self.clock, self.notify = clock, notify
        self.on_progress = on_progress or (lambda done, total, what: None)
        self.records: list[Record] = []
        self.backend_runs: list[BackendRun] = []
        self.harness: HarnessCheck | None = None
        self.rows = cfg.rows()
        self._cells = sum(len(r.batch_sizes) for r in self.rows)
        self._done = 0
        self._total = 0

    def run(self, backends: list[Backend]) -> None:
        runnable = []
        for backend in backends:
            note = unavailable(backend.key)
            if note is None:
                runnable.append(backend)
            else:
                self.backend_runs.append(BackendRun(backend.key, "skipped", note))
                self.notify(f"{backend.key}: skipped: {note}")
        self._total = self._cells * len(runnable)
        self.on_progress(0, self._total, "loading")
        for backend in runnable:
            self._run_backend(backend)

    def _load(self, backend: Backend, run: BackendRun) -> dict[str, Runner]:
        runners: dict[str, Runner] = {}
        try:
            for variant in self.variants:
                before = memory.rss_mb()
                try:
                    runner = backend.load(variant, self.cfg.threads, str(self.ws.graph.dtype))
                except BackendUnavailable as err:
                    if variant.name == PROBE:  # the sweep goes on; the ideal is reported as unknown
                        run.note = f"probe not loaded ({err}): no ideal line"
                        continue
                    raise
                after = memory.rss_mb()
                runners[variant.name] = runner
                run.load_s[variant.name] = round(runner.load_s, 3)
                if before is not None and after is not None:
                    run.load_rss_mb[variant.name] = round(after - before, 1)
        except BaseException:
            for runner in runners.values():
                runner.close()
            raise
        return runners

    def _run_backend(self, backend: Backend) -> None:
        run = BackendRun(backend.key, "partial")
        self.backend_runs.append(run)
        self.notify(f"{backend.key}: loading {', '.join(v.name for v in self.variants)}")
        try:
            runners = self._load(backend, run)
        except BackendUnavailable as err:
            run.status, run.note = "skipped", str(err)
            self.notify(f"{backend.key}: skipped: {err}")
            self._done += self._cells
            return
        if backend.framework == "ort":
            run.threads = pool_threads()
        try:
            first = next(iter(runners.values()))
            fits = static_slots(self.rows[0].prompt_len, 2) <= (getattr(first, "max_cache_len", None) or sys.maxsize)
            if self.cfg.harness_check and backend.key == "ort-cpu" and self.harness is None and fits:
                self.on_progress(self._done, self._total, f"{backend.key} harness check")
                ids = self.prompts[:1, : self.rows[0].prompt_len]
                self.harness = check_harness(first, ids, HARNESS_CHECK_ROUNDS, backend.key, self.clock)
            for row in self.rows:
                for batch in row.batch_sizes:
                    self.on_progress(self._done, self._total, f"{backend.key} {row.label} batch {batch}")
                    self._cell(backend, runners, row, batch, run)
                    self._done += 1
                    self.on_progress(self._done, self._total, f"{backend.key} {row.label} batch {batch}")
            run.status = "ran"
        finally:
            for runner in runners.values():
                runner.close()

    def _skip(self, backend: Backend, runners: dict[str, Runner], row: Row, batch: int, note: str) -> None:
        self.notify(f"{backend.key} {row.label} batch {batch}: skipped: {note}")
        for name, runner in runners.items():
            for phase in PHASES:
                rec = Record(
                    backend=backend.key, variant=name, row=row.label, batch=batch, prompt_len=row.prompt_len,
                    new_tokens=row.new_tokens, phase=phase, blocks=runner.blocks, status="skipped", note=note,
                )  # fmt: skip
                self.records.append(rec)

    def _cell(self, backend: Backend, runners: dict[str, Runner], row: Row, batch: int, run: BackendRun) -> None:
        limit = self.ws.max_context
        if limit is not None and row.prompt_len + row.new_tokens > limit:
            note = f"prompt + new tokens = {row.prompt_len + row.new_tokens}, over the model's context of {limit}"
            return self._skip(backend, runners, row, batch, note)
        over = _over_engine_limits(runners, batch, row)
        if over is not None:
            return self._skip(backend, runners, row, batch, over)
        blocks = {name: r.blocks for name, r in runners.items()}
        need, free = estimate_mb(self.ws.graph, list(blocks.values()), batch, row), backend.free_mb()
        if free is not None and need > 0.9 * free:
            note = f"needs about {need:.0f} MiB beyond the weights, {free:.0f} MiB free: over memory"
            return self._skip(backend, runners, row, batch, note)
        ids = self.prompts[:batch, : row.prompt_len]
        try:
            for runner in runners.values():
                runner.reserve(batch, row.prompt_len + row.new_tokens)
            times = measure_cell(
                backend, runners, ids, row.new_tokens, self.cfg.warmup, self.cfg.seconds_per_cell,
                self.cfg.min_reps, self.cfg.max_reps, self.clock,
            )  # fmt: skip
        except Exception as err:
            if not _looks_like_oom(err):
                raise
            backend.release_cache()
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            return self._skip(backend, runners, row, batch, f"out of memory: {first}")
        self.records.extend(cell_records(backend.key, row, batch, blocks, times, run.load_s))
