"""What ``sleb-deploy bench`` takes (``BenchConfig``) and what it writes (``bench.json``: ``BenchManifest``).

``bench.json`` holds one ``Record`` per backend x variant x row x batch x phase, where a row is a prompt
length with a number of new tokens and a phase is ``prefill`` (time to first token), ``decode`` (time per
output token, every step of every round) or ``e2e`` (the whole generation). Skipped cells are records too,
with ``status: skipped`` and the reason, so a report shows what was not measured and why. The CSV, the
Markdown report and the plots are all rendered from this file (``sleb-deploy report bench.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sleb_deploy.bench.stats import Ratio, Summary
from sleb_deploy.data import DEFAULT_EVAL
from sleb_deploy.manifest import Manifest
from sleb_deploy.models.zoo import DEFAULT_MODEL

PHASES = ("prefill", "decode", "e2e")
SHORT, LONG = "short", "long"


@dataclass
class BenchConfig:
    """Everything ``sleb-deploy bench`` takes; defaults are the CLI's and fit 10 minutes on 2 CPU cores."""

    workspace: Path = Path("export") / DEFAULT_MODEL
    out: Path | None = None  # default: bench/<workspace name>
    backends: str = "auto"  # or a comma-separated list of backends.BACKENDS
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    prompt_len: int = 128
    new_tokens: int = 16
    long_prompt_len: int = 1024  # the long-context row, where the KV cache dominates; 0: no long row
    long_new_tokens: int = 16
    long_batch_sizes: tuple[int, ...] = (1,)
    text: str = DEFAULT_EVAL  # where the prompts come from (never padded: cut to the exact length)
    warmup: int = 1  # untimed generations per variant before each cell
    min_reps: int = 5  # interleaved rounds per cell: at least this many ...
    max_reps: int = 40  # ... at most this many ...
    seconds_per_cell: float = 6.0  # ... and as many as fit this time, from the warm-up's duration
    threads: int = 0  # intra-op threads of ONNX Runtime's global pool and of torch (0: their defaults)
    ideal: bool = True  # time the 1-block probe for the ideal line
    harness_check: bool = True  # time our ORT decode step against a bare session.run
    force: bool = False

    def rows(self) -> list[Row]:
        rows = [Row(SHORT, self.prompt_len, self.new_tokens, tuple(self.batch_sizes))]
        if self.long_prompt_len > 0 and self.long_batch_sizes:
            rows.append(Row(LONG, self.long_prompt_len, self.long_new_tokens, tuple(self.long_batch_sizes)))
        return rows


@dataclass(frozen=True)
class Row:
    label: str
    prompt_len: int
    new_tokens: int
    batch_sizes: tuple[int, ...]


@dataclass
class Record:
    backend: str
    variant: str  # dense | pruned | probe
    row: str  # short | long
    batch: int
    prompt_len: int
    new_tokens: int
    phase: str  # prefill | decode | e2e
    blocks: int
    status: str = "ok"  # ok | skipped
    note: str = ""
    rounds: int = 0
    latency_ms: Summary | None = None
    tokens_per_s: float | None = None  # prefill: prompt tokens/s; decode and e2e: output tokens/s (at p50)
    peak_rss_mb: float | None = None  # process high-water mark over this variant's warm-up at this shape
    cuda_max_allocated_mb: float | None = None
    load_s: float | None = None
    # pruned rows only (see ideal.py): dense/pruned per round, and what the measured costs predict
    speedup: Ratio | None = None
    ideal_speedup: float | None = None
    ratio_to_ideal: float | None = None
    naive_speedup: float | None = None
    fixed_share: float | None = None
    ideal_note: str = ""


@dataclass
class BackendRun:
    key: str
    status: str  # ran | skipped | partial
    note: str = ""
    load_s: dict[str, float] = field(default_factory=dict)
    load_rss_mb: dict[str, float] = field(default_factory=dict)  # resident memory added by loading each variant
    threads: int | None = None


@dataclass
class HarnessCheck:
    """Our ORT decode step vs a bare ``session.run`` loop on the same inputs (item 5 of issue 9)."""

    backend: str
    batch: int
    past: int
    rounds: int
    harness_ms: Summary
    bare_ms: Summary
    ratio: Ratio  # harness / bare, per round
    limit: float = 1.03

    @property
    def within(self) -> bool:
        return self.ratio.median <= self.limit


@dataclass(kw_only=True)
class BenchManifest(Manifest):
    SCHEMA: ClassVar[str] = "sleb-deploy/bench@1"
    FILE: ClassVar[str] = "bench.json"

    workspace: str
    name: str
    config: dict[str, Any]
    models: dict[str, Any]  # blocks of each variant, removal order, the graph's dtype and options
    quality: dict[str, Any]  # perplexity of dense and pruned from sleb.json
    backends: list[BackendRun]
    harness_check: HarnessCheck | None
    records: list[Record]
    partial: bool = False  # interrupted: what was measured is here, the rest is missing
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
