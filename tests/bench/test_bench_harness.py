"""The harness and the sweep on fake runners and a fake clock: the bookkeeping, never the speed."""

from __future__ import annotations

import numpy as np
import pytest
from bench_fakes import FIXED, PER_BLOCK, FakeClock, FakeRunner, fake_backend, fake_variants, fake_workspace

from sleb_deploy.bench.harness import cell_records, measure_cell, time_generation
from sleb_deploy.bench.records import BenchConfig, Row
from sleb_deploy.bench.sweep import Sweep

IDS = np.arange(16, dtype=np.int64).reshape(2, 8)  # batch 2, prompt 8


def _runners(backend) -> dict:  # type: ignore[no-untyped-def]
    return {v.name: backend.load(v, 0, "fp32") for v in fake_variants()}


def test_time_generation_brackets_every_call() -> None:
    clock = FakeClock()
    runner = FakeRunner("dense", 6, clock, [])
    g = time_generation(runner, IDS, new_tokens=4, clock=clock)
    per_token = FIXED + 6 * PER_BLOCK
    assert g.prefill_s == pytest.approx(8 * per_token)
    assert g.steps_s == pytest.approx([per_token] * 3)  # 4 new tokens: the prefill's and 3 decode steps
    assert g.e2e_s == pytest.approx(11 * per_token) and g.decode_s == pytest.approx(per_token)
    assert runner.generated().shape == (2, 4)


def test_measure_cell_warms_up_then_interleaves() -> None:
    backend = fake_backend()
    times = measure_cell(backend, _runners(backend), IDS, 4, warmup=1, budget_s=1.0, min_reps=2, max_reps=10,
                         clock=backend.clock)  # fmt: skip
    # one warm-up round takes (0.010 + 0.008 + 0.005) * 11 = 0.253 s: 1.0 s of budget holds 4 rounds
    assert {n: len(g) for n, g in times.generations.items()} == {"dense": 4, "pruned": 4, "probe": 4}
    order = [entry.split()[1] for entry in backend.log if entry.startswith("prefill")]
    warm, rounds = order[:3], order[3:]
    assert warm == ["dense", "pruned", "probe"]
    assert rounds == ["dense", "pruned", "probe", "probe", "pruned", "dense"] * 2  # reversed every other round
    assert times.peaks["dense"]["peak_rss_mb"] == 123.0


def test_cell_records_figures_and_exact_ideal() -> None:
    backend = fake_backend()
    times = measure_cell(backend, _runners(backend), IDS, 4, 1, 1.0, 2, 10, backend.clock)
    row = Row("short", 8, 4, (2,))
    blocks = {"dense": 6, "pruned": 4, "probe": 1}
    records = cell_records("fake-cpu", row, 2, blocks, times, {"dense": 0.5})
    assert len(records) == 3 * 3  # variants x phases
    by = {(r.variant, r.phase): r for r in records}
    dense_e2e = by["dense", "e2e"]
    per_token = FIXED + 6 * PER_BLOCK
    assert dense_e2e.latency_ms is not None and dense_e2e.latency_ms.p50 == pytest.approx(11 * per_token * 1e3)
    assert dense_e2e.tokens_per_s == pytest.approx(2 * 4 / (11 * per_token))  # batch x new tokens / e2e
    assert by["dense", "prefill"].tokens_per_s == pytest.approx(2 * 8 / (8 * per_token))  # prompt tokens / s
    assert by["dense", "decode"].latency_ms.n == 4 * 3  # type: ignore[union-attr]  # every step of every round
    assert dense_e2e.load_s == 0.5 and dense_e2e.speedup is None
    for phase in ("prefill", "decode", "e2e"):
        pruned = by["pruned", phase]
        assert pruned.speedup is not None
        assert pruned.speedup.median == pytest.approx(per_token / (FIXED + 4 * PER_BLOCK))
        # costs exactly linear in the blocks: the line through dense and probe predicts pruned exactly
        assert pruned.ideal_speedup == pytest.approx(pruned.speedup.median)
        assert pruned.ratio_to_ideal == pytest.approx(1.0)
        assert pruned.naive_speedup == pytest.approx(6 / 4)
        assert pruned.fixed_share == pytest.approx(FIXED / per_token)


def test_cell_records_without_probe_have_no_ideal() -> None:
    backend = fake_backend()
    runners = _runners(backend)
    del runners["probe"]
    times = measure_cell(backend, runners, IDS, 4, 1, 1.0, 2, 10, backend.clock)
    records = cell_records("fake-cpu", Row("short", 8, 4, (2,)), 2, {"dense": 6, "pruned": 4}, times, {})
    pruned = next(r for r in records if r.variant == "pruned" and r.phase == "e2e")
    assert pruned.speedup is not None and pruned.ideal_speedup is None and "probe" in pruned.ideal_note


def _sweep(backend, **cfg) -> Sweep:  # type: ignore[no-untyped-def]
    settings = dict(batch_sizes=(1, 2), prompt_len=8, new_tokens=3, long_prompt_len=0, min_reps=2, max_reps=3,
                    seconds_per_cell=0.01)  # fmt: skip
    config = BenchConfig(**{**settings, **cfg})  # type: ignore[arg-type]
    prompts = np.arange(4 * 300, dtype=np.int64).reshape(4, 300)
    return Sweep(config, fake_workspace(), fake_variants(), prompts, clock=backend.clock)


def test_sweep_skips_cells_with_a_note_and_goes_on() -> None:
    backend = fake_backend(fail_batch=2)
    sweep = _sweep(backend, long_prompt_len=300, long_new_tokens=2, long_batch_sizes=(1,))
    progress: list[tuple[int, int]] = []
    sweep.on_progress = lambda done, total, what: progress.append((done, total))
    sweep.run([backend])
    status = {(r.row, r.batch): (r.status, r.note) for r in sweep.records if r.variant == "dense" and r.phase == "e2e"}
    assert status["short", 1] == ("ok", "")
    assert status["short", 2][0] == "skipped" and status["short", 2][1].startswith("out of memory: ")
    assert status["long", 1][0] == "skipped" and "over the model's context of 256" in status["long", 1][1]
    assert progress[-1] == (3, 3) and "release" in backend.log
    assert sweep.backend_runs[0].status == "ran" and sweep.backend_runs[0].load_s["probe"] == 0.5
    assert all(r.closed for r in backend.runners)


def test_sweep_skips_over_memory_before_trying() -> None:
    backend = fake_backend(free=0.001)  # MiB
    sweep = _sweep(backend)
    sweep.run([backend])
    notes = {r.note for r in sweep.records}
    assert len(notes) == 1 and "over memory" in notes.pop()
    assert backend.log == []  # nothing ran


def test_sweep_skips_batches_over_an_engine_limit() -> None:
    backend = fake_backend(max_batch=1)
    sweep = _sweep(backend)
    sweep.run([backend])
    status = {r.batch: (r.status, r.note) for r in sweep.records if r.variant == "dense" and r.phase == "e2e"}
    assert status[1] == ("ok", "")
    assert status[2][0] == "skipped" and "over the engine's limit of 1" in status[2][1]


@pytest.mark.parametrize(
    ("limits", "skipped", "option"),
    [
        (dict(max_input_len=16), "prompt length 32 is over the engine's limit of 16", "--max-input-len"),
        (dict(max_context_len=40), "prompt + new tokens 48 is over the engine's limit of 40", "--max-context-len"),
        (dict(max_cache_len=40), "47 slots, over the static graph's 40-slot KV cache buffer", "--max-cache-len"),
    ],
)
def test_sweep_skips_cells_over_an_engines_lengths(limits: dict[str, int], skipped: str, option: str) -> None:
    """An engine's max input and max context (from its engine.json) skip the rows it was not built for."""
    backend = fake_backend(**limits)
    sweep = _sweep(backend, long_prompt_len=32, long_new_tokens=16, long_batch_sizes=(1,))
    sweep.run([backend])
    notes = {(r.row, r.status, r.note) for r in sweep.records if r.variant == "dense" and r.phase == "e2e"}
    assert any(status == "ok" for _, status, _ in notes)
    assert any(status == "skipped" and skipped in note and option in note for _, status, note in notes)
    measured = [cell for r in backend.runners for cell in r.reserved]  # buffers made before each measured cell
    assert measured and set(measured) == {(b, 8 + 3) for b in (1, 2)}


def test_sweep_reports_unavailable_backends_and_keeps_results_on_interrupt() -> None:
    from sleb_deploy.bench.backends import select

    backend = fake_backend()
    sweep = _sweep(backend)

    def interrupt(done: int, total: int, what: str) -> None:
        if done == 1:
            raise KeyboardInterrupt

    sweep.on_progress = interrupt
    with pytest.raises(KeyboardInterrupt):
        sweep.run([*select("tensorrt"), backend])
    assert sweep.backend_runs[0].status == "skipped" and "NVIDIA GPU" in sweep.backend_runs[0].note
    assert sweep.backend_runs[1].status == "partial"
    assert {r.batch for r in sweep.records} == {1}  # the first cell was measured and is kept
    assert all(r.closed for r in backend.runners)


def test_unavailable_names_the_extra() -> None:
    from sleb_deploy.bench.backends import unavailable

    def missing(name: str) -> None:
        return None

    assert "sleb-deploy[onnx]" in (unavailable("ort-cpu", find_spec=missing) or "")
    assert "sleb-deploy[gpu]" in (unavailable("ort-cuda", find_spec=missing) or "")
    assert "sleb-deploy[gpu]" in (unavailable("ort-cuda", ort_providers=lambda: ["CPUExecutionProvider"]) or "")
    assert unavailable("ort-cuda", ort_providers=lambda: ["CUDAExecutionProvider"]) is None
    assert "sleb-deploy[trt]" in (unavailable("tensorrt", find_spec=missing) or "")
    found = lambda name: object()  # noqa: E731
    assert "no CUDA device" in (unavailable("tensorrt", find_spec=found, torch_cuda=lambda: False) or "")
    assert unavailable("tensorrt", find_spec=found, torch_cuda=lambda: True) is None
    assert unavailable("torch-cuda", torch_cuda=lambda: False) is not None
    assert unavailable("torch-cpu") is None
