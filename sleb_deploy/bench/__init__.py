"""``sleb-deploy bench``: dense vs pruned latency per batch size on every available backend (DESIGN.md section 6).

``stage.run_bench`` is the stage (workspace in, report directory out); ``harness`` times, ``stats`` summarises,
``ideal`` computes the ideal speedup from measured costs, ``report``/``plots`` render ``bench.json``.
"""

from sleb_deploy.bench.records import BenchConfig, BenchManifest, Record
from sleb_deploy.bench.stage import render_report, run_bench

__all__ = ["BenchConfig", "BenchManifest", "Record", "render_report", "run_bench"]
