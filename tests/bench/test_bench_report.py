"""bench.json, CSV, Markdown and plots from a deterministic (fake-clock) sweep; `report` renders them again."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from bench_fakes import fake_backend, fake_variants, fake_workspace

from sleb_deploy.bench.records import BenchConfig, BenchManifest, HarnessCheck
from sleb_deploy.bench.report import CSV_COLUMNS
from sleb_deploy.bench.stage import render_report, write_reports
from sleb_deploy.bench.stats import paired_ratio, summarize
from sleb_deploy.bench.sweep import Sweep


def _manifest(partial: bool = False) -> BenchManifest:
    backend = fake_backend(fail_batch=4)
    cfg = BenchConfig(batch_sizes=(1, 2, 4), prompt_len=8, new_tokens=3, long_prompt_len=16, long_new_tokens=2,
                      min_reps=2, max_reps=3, seconds_per_cell=0.01)  # fmt: skip
    sweep = Sweep(cfg, fake_workspace(), fake_variants(), np.ones((4, 16), dtype=np.int64), clock=backend.clock)
    sweep.run([backend])
    check = HarnessCheck("fake-cpu", 1, 8, 3, summarize([1.0, 1.1]), summarize([1.0, 1.0]), paired_ratio([1.0], [1.0]))
    return BenchManifest(
        workspace="/nowhere/export/fake", name="fake", config={"text": "t.txt", "new_tokens": 3},
        models={"dense_blocks": 6, "pruned_blocks": 4, "removal_order": [2, 3]},
        quality={"method": "sleb", "dense_ppl": 10.0, "pruned_ppl": 12.5, "eval": {"source": "x"}},
        backends=sweep.backend_runs, harness_check=check, records=sweep.records, partial=partial,
        environment={"commit": "abc"},
    )  # fmt: skip


def test_writers_and_round_trip(tmp_path: Path) -> None:
    manifest = _manifest()
    written = write_reports(manifest, tmp_path)
    manifest.write(tmp_path)
    names = {p.name for p in written}
    assert {"bench.csv", "bench.md"} <= names
    with open(tmp_path / "bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(manifest.records)
    ok = [r for r in rows if r["status"] == "ok"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(ok) == 3 * 3 * 3  # short 1, 2 and long 1: variants x phases
    assert len(skipped) == 3 * 3 and all(r["note"].startswith("out of memory") for r in skipped)
    pruned = next(r for r in ok if r["variant"] == "pruned" and r["phase"] == "e2e")
    assert float(pruned["ratio_to_ideal"]) == 1.0 or abs(float(pruned["ratio_to_ideal"]) - 1.0) < 1e-9

    md = (tmp_path / "bench.md").read_text()
    assert "perplexity dense **10.000** -> pruned **12.500**" in md
    assert "## Speedup, pruned vs dense" in md and "= **1.00**" in md
    assert "fake-cpu short batch 4: out of memory" in md
    assert "Partial" not in md

    again = BenchManifest.read(tmp_path)
    assert again == manifest  # every field survives the file, nested records included
    assert again.records[0].latency_ms == manifest.records[0].latency_ms

    (tmp_path / "bench.md").unlink()
    render_report(tmp_path / "bench.json")
    assert (tmp_path / "bench.md").read_text() == md


def test_partial_is_said(tmp_path: Path) -> None:
    manifest = _manifest(partial=True)
    write_reports(manifest, tmp_path)
    assert "Partial: the sweep was interrupted" in (tmp_path / "bench.md").read_text()


def test_plots_are_written(tmp_path: Path) -> None:
    import pytest

    pytest.importorskip("matplotlib")
    written = write_reports(_manifest(), tmp_path)
    for name in ("latency.png", "speedup.png"):
        assert tmp_path / name in written and (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
