"""The timing harness: warm-up, interleaved rounds, one clock around every prefill and decode step.

How a cell (one backend, row and batch size) is measured:

1. **Warm-up**, variant by variant: ``warmup`` untimed generations at the exact shape (the runtime sizes its
   buffers, caches kernels, grows its arena). The process's peak RSS is reset before and read after each
   variant's warm-up: that is the record's ``peak_rss_mb``.
2. **Rounds**: every round runs one full generation of every variant, dense and pruned (and the probe)
   back to back, the order reversed every other round, so slow drift in machine speed hits all variants
   alike and each round is a matched pair. The number of rounds is what fits ``seconds_per_cell`` (from
   the warm-up's duration), between ``min_reps`` and ``max_reps``. Python's garbage collector is paused
   during the rounds (as ``timeit`` does).
3. **A generation** is the prompt (no padding: the batch's prompts are cut to the exact length) and a
   fixed number of new tokens with no stop on EOS. The clock is read before the prefill, after it and after
   every decode step; each runner returns only when its step is complete on the device, so intervals are
   back to back and sum exactly to the end-to-end time.

The clock is a parameter: tests inject a deterministic one and check the bookkeeping, never the speed.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sleb_deploy.bench.backends import Backend, Runner
from sleb_deploy.bench.ideal import ideal
from sleb_deploy.bench.records import PHASES, HarnessCheck, Record, Row
from sleb_deploy.bench.stats import paired_ratio, rounds_for, summarize
from sleb_deploy.bench.workspace import DENSE, PROBE, PRUNED

Clock = Callable[[], float]


@dataclass
class Generation:
    """Seconds taken by one generation: the prefill (first token) and each later decode step."""

    prefill_s: float
    steps_s: list[float]

    @property
    def e2e_s(self) -> float:
        return self.prefill_s + sum(self.steps_s)

    @property
    def decode_s(self) -> float:
        """Mean time per output token after the first (this generation's TPOT)."""
        return sum(self.steps_s) / len(self.steps_s) if self.steps_s else 0.0

    def value(self, phase: str) -> float:
        return {"prefill": self.prefill_s, "decode": self.decode_s, "e2e": self.e2e_s}[phase]


def time_generation(runner: Runner, ids: np.ndarray, new_tokens: int, clock: Clock) -> Generation:
    """Prefill ``ids`` and decode until ``new_tokens`` tokens exist; no early stop."""
    start = clock()
    runner.prefill(ids)
    last = clock()
    prefill = last - start
    steps = []
    for _ in range(new_tokens - 1):
        runner.decode()
        now = clock()
        steps.append(now - last)
        last = now
    return Generation(prefill, steps)


@dataclass
class CellTimes:
    generations: dict[str, list[Generation]]  # per variant, one per round, in round order
    peaks: dict[str, dict[str, float | None]]  # per variant: peak_rss_mb, cuda_max_allocated_mb


def measure_cell(
    backend: Backend,
    runners: dict[str, Runner],
    ids: np.ndarray,
    new_tokens: int,
    warmup: int,
    budget_s: float,
    min_reps: int,
    max_reps: int,
    clock: Clock = time.perf_counter,
) -> CellTimes:
    """Warm up every variant, then time interleaved rounds (see the module docstring)."""
    names = list(runners)
    peaks: dict[str, dict[str, float | None]] = {}
    round_s = 0.0
    for name in names:
        backend.reset_peak()
        for _ in range(max(1, warmup)):
            g = time_generation(runners[name], ids, new_tokens, clock)
        round_s += g.e2e_s
        peaks[name] = backend.peak()
    rounds = rounds_for(budget_s, round_s, min_reps, max_reps)
    gens: dict[str, list[Generation]] = {n: [] for n in names}
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection inside one variant's generation is noise, not its cost
    try:
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                gens[name].append(time_generation(runners[name], ids, new_tokens, clock))
    finally:
        if enabled:
            gc.enable()
    return CellTimes(gens, peaks)


def tokens_per_s(phase: str, batch: int, row: Row, p50_ms: float) -> float | None:
    """Throughput at the median: prompt tokens/s for prefill, output tokens/s for decode and end to end."""
    tokens = {"prefill": batch * row.prompt_len, "decode": batch, "e2e": batch * row.new_tokens}[phase]
    return tokens / (p50_ms / 1e3) if p50_ms > 0 else None


def cell_records(
    backend: str, row: Row, batch: int, blocks: dict[str, int], times: CellTimes, load_s: dict[str, float]
) -> list[Record]:
    """Records of one measured cell: every variant x phase, with speedup and ideal on the pruned ones."""
    out: list[Record] = []
    gens = times.generations
    for name, series in gens.items():
        for phase in PHASES:
            if phase == "decode":
                samples = [s for g in series for s in g.steps_s]
            else:
                samples = [g.value(phase) for g in series]
            if not samples:  # one new token: no decode step
                continue
            summary = summarize(samples, scale=1e3)
            peak = times.peaks.get(name, {})
            rec = Record(
                backend=backend, variant=name, row=row.label, batch=batch, prompt_len=row.prompt_len,
                new_tokens=row.new_tokens, phase=phase, blocks=blocks[name], rounds=len(series),
                latency_ms=summary, tokens_per_s=tokens_per_s(phase, batch, row, summary.p50),
                peak_rss_mb=peak.get("peak_rss_mb"), cuda_max_allocated_mb=peak.get("cuda_max_allocated_mb"),
                load_s=load_s.get(name),
            )  # fmt: skip
            if name == PRUNED and DENSE in gens:
                _add_speedup(rec, phase, gens, blocks)
            out.append(rec)
    return out


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def _add_speedup(rec: Record, phase: str, gens: dict[str, list[Generation]], blocks: dict[str, int]) -> None:
    dense = [g.value(phase) for g in gens[DENSE]]
    pruned = [g.value(phase) for g in gens[PRUNED]]
    rec.speedup = paired_ratio(dense, pruned)
    probe = [g.value(phase) for g in gens[PROBE]] if PROBE in gens else None
    result = ideal(
        dense_blocks=blocks[DENSE],
        dense_time=_median(dense),
        pruned_blocks=blocks[PRUNED],
        probe_blocks=blocks.get(PROBE) if probe else None,
        probe_time=_median(probe) if probe else None,
        measured_speedup=rec.speedup.median,
    )
    rec.ideal_speedup, rec.ratio_to_ideal = result.speedup, result.ratio
    rec.naive_speedup, rec.fixed_share, rec.ideal_note = result.naive, result.fixed_share, result.note


def check_harness(
    runner: Runner, ids: np.ndarray, rounds: int, backend: str, clock: Clock = time.perf_counter
) -> HarnessCheck:
    """Our decode step (IO binding, OrtValue KV, argmax) vs ``session.run`` with numpy feeds, same state.

    Both run the same decode step from the same prompt's cache, alternating, after two warm-up calls each;
    the per-round ratio harness/bare is what the report states (the limit is 1.03).
    """
    from sleb_deploy.bench.ort_runner import OrtRunner

    if not isinstance(runner, OrtRunner):
        raise TypeError("the harness check compares ONNX Runtime steps")
    runner.reserve(int(ids.shape[0]), int(ids.shape[1]) + 1)
    runner.prefill(ids)
    feeds = runner.bare_feeds()
    session = runner.session
    harness: list[float] = []
    bare: list[float] = []
    for r in range(rounds + 2):
        for which in ("harness", "bare") if r % 2 == 0 else ("bare", "harness"):
            start = clock()
            if which == "harness":
                runner.step(commit=False)
            else:
                session.run(None, feeds)
            elapsed = clock() - start
            if r >= 2:
                (harness if which == "harness" else bare).append(elapsed)
    return HarnessCheck(
        backend=backend,
        batch=int(ids.shape[0]),
        past=int(ids.shape[1]),
        rounds=rounds,
        harness_ms=summarize(harness, 1e3),
        bare_ms=summarize(bare, 1e3),
        ratio=paired_ratio(harness, bare),
    )
