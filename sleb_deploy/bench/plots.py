"""PNG plots of a ``bench.json``: latency and throughput vs batch size (dense vs pruned), speedup vs batch
size with the ideal line. matplotlib is optional (``pip install 'sleb-deploy[plot]'``); without it the report
says so and carries the tables alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sleb_deploy._optional import require
from sleb_deploy.bench.records import BenchManifest, Record

LATENCY_PNG, SPEEDUP_PNG = "latency.png", "speedup.png"
STYLE: dict[str, tuple[str, Any, str]] = {
    "dense": ("tab:blue", "-", "o"),
    "pruned": ("tab:orange", "--", "s"),
    "probe": ("tab:gray", ":", "."),
}
PHASE_COLOR = {"prefill": "tab:purple", "decode": "tab:green", "e2e": "tab:red"}


def _ok(m: BenchManifest, **match: Any) -> list[Record]:
    recs = [
        r
        for r in m.records
        if r.status == "ok" and r.latency_ms is not None and all(getattr(r, k) == v for k, v in match.items())
    ]
    return sorted(recs, key=lambda r: r.batch)


def _backends(m: BenchManifest) -> list[str]:
    return list(dict.fromkeys(r.backend for r in m.records if r.status == "ok"))


def _rows(m: BenchManifest, backend: str) -> list[str]:
    return list(dict.fromkeys(r.row for r in m.records if r.status == "ok" and r.backend == backend))


def _blocks(n: int) -> str:
    return "block" if n == 1 else "blocks"


def _plain_log_y(ax: Any) -> None:
    """A log y axis labelled 20, 50, 100 rather than 2x10^1 (minor ticks labelled at 2 and 5 only)."""
    import math

    from matplotlib.ticker import FuncFormatter

    def minor(v: float, _: Any) -> str:
        return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)


def _batch_axis(ax: Any, batches: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.grid(alpha=0.3)


def _row_note(m: BenchManifest, backend: str) -> str:
    """'short 128+32 (lines), long 1536+16 (hollow markers)' for the legend."""
    parts = []
    for k, row in enumerate(_rows(m, backend)):
        rec = _ok(m, backend=backend, row=row)[0]
        parts.append(f"{row} {rec.prompt_len}+{rec.new_tokens} tokens ({'lines' if k == 0 else 'hollow markers'})")
    return "; ".join(parts)


def _legend(fig: Any, handles: list[Any], note: str) -> None:
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0), title=note, title_fontsize=8)  # fmt: skip


def latency_plot(m: BenchManifest, path: Path) -> bool:
    """Per backend (a row of panels): TTFT, TPOT and output tokens/s vs batch size at the p50, bars 25-75%;
    dense solid, pruned dashed, the 1-block probe dotted. The short row draws lines; the long-context row
    (usually one batch size) draws hollow markers."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    backends = _backends(m)
    if not backends:
        return False
    panels = [("prefill", "TTFT (ms)"), ("decode", "TPOT (ms / token)"), ("e2e", "output tokens/s (end to end)")]
    fig, axes = plt.subplots(len(backends), 3, figsize=(13, 3.4 * len(backends) + 0.9), squeeze=False)
    blocks: dict[str, int] = {}
    for i, backend in enumerate(backends):
        batches = sorted({r.batch for r in _ok(m, backend=backend)})
        for j, (phase, label) in enumerate(panels):
            ax = axes[i][j]
            for k, row in enumerate(_rows(m, backend)):
                for variant, (color, ls, marker) in STYLE.items():
                    recs = _ok(m, backend=backend, row=row, variant=variant, phase=phase)
                    if not recs:
                        continue
                    blocks[variant] = recs[0].blocks
                    xs = [r.batch for r in recs]
                    stats = [r.latency_ms for r in recs if r.latency_ms is not None]
                    hollow = k > 0
                    style = dict(
                        color=color,
                        marker="D" if hollow else marker,
                        alpha=0.6 if variant == "probe" else 1,
                        markerfacecolor="white" if hollow else color,
                        markersize=7 if hollow else 5,
                    )
                    if phase == "e2e":
                        ax.plot(xs, [r.tokens_per_s or 0.0 for r in recs], "none" if hollow else ls, **style)
                        continue
                    ys = [x.p50 for x in stats]
                    err = [
                        [y - x.p25 for y, x in zip(ys, stats, strict=True)],
                        [x.p75 - y for y, x in zip(ys, stats, strict=True)],
                    ]
                    ax.errorbar(xs, ys, yerr=err, linestyle="none" if hollow else ls, capsize=2, **style)
            _batch_axis(ax, batches)
            _plain_log_y(ax)
            ax.set_ylabel(label)
            ax.set_title(f"{backend}: {label.split(' (')[0]}", fontsize=10)
    handles = [
        Line2D([], [], color=c, linestyle=ls, marker=mk, label=f"{v} ({blocks[v]} {_blocks(blocks[v])})")
        for v, (c, ls, mk) in STYLE.items()
        if v in blocks
    ]  # fmt: skip
    _legend(fig, handles, _row_note(m, backends[0]))
    fig.suptitle(f"{m.name}: dense vs pruned, p50 with 25-75% bars" + (" (PARTIAL)" if m.partial else ""))
    fig.tight_layout(rect=(0, 0.6 / (3.4 * len(backends) + 0.9), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def speedup_plot(m: BenchManifest, path: Path) -> bool:
    """Per backend (a row) and phase (a column): measured speedup vs batch size (median of paired rounds,
    bars 25-75%), the ideal from measured costs dashed, N/M dotted, 1.0 solid."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    backends = [b for b in _backends(m) if _ok(m, backend=b, variant="pruned")]
    if not backends:
        return False
    fig, axes = plt.subplots(len(backends), 3, figsize=(13, 3.3 * len(backends) + 0.9), squeeze=False)
    for i, backend in enumerate(backends):
        batches = sorted({r.batch for r in _ok(m, backend=backend)})
        for j, (phase, color) in enumerate(PHASE_COLOR.items()):
            ax = axes[i][j]
            values: list[float] = [1.0]
            for k, row in enumerate(_rows(m, backend)):
                recs = [r for r in _ok(m, backend=backend, row=row, variant="pruned", phase=phase) if r.speedup]
                if not recs:
                    continue
                hollow = k > 0
                xs = [r.batch for r in recs]
                ys = [r.speedup.median for r in recs if r.speedup]
                err = [[y - r.speedup.p25 for y, r in zip(ys, recs, strict=True) if r.speedup],
                       [r.speedup.p75 - y for y, r in zip(ys, recs, strict=True) if r.speedup]]  # fmt: skip
                face = "white" if hollow else color
                ax.errorbar(xs, ys, yerr=err, color=color, marker="D" if hollow else "o", capsize=3,
                            linestyle="none" if hollow else "-", markerfacecolor=face)  # fmt: skip
                ideal = [(r.batch, r.ideal_speedup) for r in recs if r.ideal_speedup is not None]
                if ideal:
                    ax.plot([b for b, _ in ideal], [v for _, v in ideal], "none" if hollow else "--", color=color,
                            marker="_", markersize=16, markeredgewidth=2, alpha=0.7)  # fmt: skip
                values += ys + [v for _, v in ideal]
                naive = recs[0].naive_speedup
                if naive is not None:
                    ax.axhline(naive, color="gray", linestyle=":", linewidth=1)
                    values.append(naive)
            ax.axhline(1.0, color="black", linewidth=0.8)
            lo, hi = min(values), max(values)
            pad = 0.15 * (hi - lo) + 0.05
            ax.set_ylim(lo - pad, hi + pad)  # outlying 25-75% bars are clipped rather than squashing the data
            _batch_axis(ax, batches)
            ax.set_ylabel("dense time / pruned time")
            ax.set_title(f"{backend}: {phase}", fontsize=10)
    handles = [
        Line2D([], [], color="black", marker="o", label="measured (median of paired rounds, bars 25-75%)"),
        Line2D([], [], color="black", linestyle="--", marker="_", markersize=14, label="ideal from measured costs"),
        Line2D([], [], color="gray", linestyle=":", label="N/M blocks (no cost outside the blocks)"),
    ]
    _legend(fig, handles, _row_note(m, backends[0]))
    fig.suptitle(f"{m.name}: speedup of pruned over dense" + (" (PARTIAL)" if m.partial else ""))
    fig.tight_layout(rect=(0, 0.6 / (3.3 * len(backends) + 0.9), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_plots(m: BenchManifest, directory: Path) -> list[str]:
    """The PNG files written into ``directory`` (names relative to it); [] without matplotlib."""
    from sleb_deploy.errors import MissingDependencyError

    try:
        written = []
        if latency_plot(m, directory / LATENCY_PNG):
            written.append(LATENCY_PNG)
        if speedup_plot(m, directory / SPEEDUP_PNG):
            written.append(SPEEDUP_PNG)
    except MissingDependencyError:
        return []
    return written
