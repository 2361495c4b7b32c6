"""``bench.json`` -> ``bench.csv`` and ``bench.md`` (and the plots, ``plots.py``): one renderer for the stage and
for ``sleb-deploy report``, so a report can always be regenerated from the record alone."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sleb_deploy.bench.backends import BACKENDS
from sleb_deploy.bench.records import BenchManifest, Record

CSV_FILE, MD_FILE = "bench.csv", "bench.md"
CSV_COLUMNS = [
    "backend", "variant", "row", "batch", "prompt_len", "new_tokens", "phase", "blocks", "status", "note",
    "rounds", "n", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "ci95_low_ms",
    "ci95_high_ms", "tokens_per_s", "peak_rss_mb", "cuda_max_allocated_mb", "load_s", "speedup", "speedup_p25",
    "speedup_p75", "ideal_speedup", "ratio_to_ideal", "naive_speedup", "fixed_share",
]  # fmt: skip


def csv_row(rec: Record) -> dict[str, Any]:
    s = rec.latency_ms
    row: dict[str, Any] = {
        "backend": rec.backend, "variant": rec.variant, "row": rec.row, "batch": rec.batch,
        "prompt_len": rec.prompt_len, "new_tokens": rec.new_tokens, "phase": rec.phase, "blocks": rec.blocks,
        "status": rec.status, "note": rec.note, "rounds": rec.rounds, "tokens_per_s": rec.tokens_per_s,
        "peak_rss_mb": rec.peak_rss_mb, "cuda_max_allocated_mb": rec.cuda_max_allocated_mb, "load_s": rec.load_s,
        "ideal_speedup": rec.ideal_speedup, "ratio_to_ideal": rec.ratio_to_ideal,
        "naive_speedup": rec.naive_speedup, "fixed_share": rec.fixed_share,
    }  # fmt: skip
    if s is not None:
        row.update(n=s.n, p50_ms=s.p50, p90_ms=s.p90, p99_ms=s.p99, mean_ms=s.mean, std_ms=s.std, min_ms=s.min,
                   max_ms=s.max, ci95_low_ms=s.ci95_low, ci95_high_ms=s.ci95_high)  # fmt: skip
    if rec.speedup is not None:
        row.update(speedup=rec.speedup.median, speedup_p25=rec.speedup.p25, speedup_p75=rec.speedup.p75)
    return {k: ("" if v is None else v) for k, v in row.items()}


def write_csv(manifest: BenchManifest, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for rec in manifest.records:
            writer.writerow(csv_row(rec))


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def _find(records: Iterable[Record], **match: Any) -> Record | None:
    for rec in records:
        if all(getattr(rec, k) == v for k, v in match.items()):
            return rec
    return None


def _lat(rec: Record | None) -> str:
    if rec is None or rec.latency_ms is None:
        return "–"
    s = rec.latency_ms
    return f"{s.p50:.1f} ({s.p90:.1f} / {s.p99:.1f})"


def _speed(rec: Record | None) -> str:
    if rec is None or rec.speedup is None:
        return "–"
    text = f"{rec.speedup.median:.3f} ({rec.speedup.p25:.2f}-{rec.speedup.p75:.2f})"
    if rec.ideal_speedup is not None and rec.ratio_to_ideal is not None:
        text += f" / {rec.ideal_speedup:.3f} = **{rec.ratio_to_ideal:.2f}**"
    return text


def _cells(m: BenchManifest) -> list[tuple[str, str, int]]:
    seen: dict[tuple[str, str, int], None] = {}
    for rec in m.records:
        seen.setdefault((rec.backend, rec.row, rec.batch), None)
    return list(seen)


def _kv_contract(models: dict[str, Any]) -> str:
    """The graphs' KV-cache contract in words (a bench.json from before the static contract: concatenating)."""
    if models.get("kv_cache", "concat") != "static":
        return "concatenating KV cache (present = concat(past, new))"
    length = models.get("max_cache_len")
    size = f"{length} slots" if length is not None else "sized to each cell's prompt + new tokens"
    return f"static KV cache (buffers updated in place, {size})"


def markdown(m: BenchManifest, plots: list[str]) -> str:
    models, q, env = m.models, m.quality, m.environment
    out = [f"# sleb-deploy bench: {m.name}", ""]
    if m.partial:
        out += ["**Partial: the sweep was interrupted; the cells below are those measured before it stopped.**", ""]
    out += [
        f"Workspace `{m.workspace}`: dense {models.get('dense_blocks')} blocks, pruned "
        f"{models.get('pruned_blocks')} (removed {models.get('removal_order')}); graphs {models.get('dtype')} "
        f"{models.get('variant')}, last-logits-only {models.get('last_logits_only')}, {_kv_contract(models)}. "
        "Figures, not assertions: written by `sleb-deploy bench`, redrawn by `sleb-deploy report bench.json`.",
        "",
    ]
    if q.get("dense_ppl") is not None:
        ev = q.get("eval") or {}
        out += [
            f"Quality ({q.get('method')}): perplexity dense **{q['dense_ppl']:.3f}** -> pruned "
            f"**{q['pruned_ppl']:.3f}** on {ev.get('source')} ({ev.get('windows')} x {ev.get('seq_len')} tokens), "
            "from the pruned checkpoint's sleb.json.",
            "",
        ]
    out += [f"![{Path(p).stem}]({p})" for p in plots] + [""] if plots else []
    hc = m.harness_check
    if hc is not None:
        verdict = "within" if hc.within else "**over**"
        out += [
            f"Harness check ({hc.backend}, batch {hc.batch}, past {hc.past}, {hc.rounds} paired rounds): the harness's "
            f"decode step takes {hc.harness_ms.p50:.2f} ms (p50), a bare `session.run` on the same inputs "
            f"{hc.bare_ms.p50:.2f} ms; per-round ratio {hc.ratio.median:.3f} ({hc.ratio.p25:.3f}-{hc.ratio.p75:.3f}), "
            f"{verdict} the {hc.limit:.2f} limit.",
            "",
        ]
    out += ["| backend | status | load s (dense / pruned / probe) | load RSS MiB | note |", "|---|---|---|---|---|"]
    for b in sorted(m.backends, key=lambda b: BACKENDS.index(b.key) if b.key in BACKENDS else len(BACKENDS)):
        variants = ("dense", "pruned", "probe")
        loads = " / ".join(_f(b.load_s.get(v)) for v in variants) if b.load_s else "–"
        rss = " / ".join(_f(b.load_rss_mb.get(v), ".0f") for v in variants) if b.load_rss_mb else "–"
        out.append(f"| {b.key} | {b.status} | {loads} | {rss} | {b.note} |")
    out += [
        "",
        "## Speedup, pruned vs dense",
        "",
        "Measured speedup: median over rounds of dense time / pruned time in the same round (25-75% range), "
        "then `/ ideal = ratio to ideal`. The ideal comes from measured costs on the same backend and shape: "
        "t(L) = c + L·b fitted through the dense model and a 1-block probe, ideal = t(N) / t(M) "
        "(see `sleb_deploy/bench/ideal.py`); 1.00 = all of the removed blocks' measured share was delivered.",
        "",
        "| backend | row | batch | prefill | decode (per token) | end to end |",
        "|---|---|---|---|---|---|",
    ]
    for backend, row, batch in _cells(m):
        got = [_find(m.records, backend=backend, row=row, batch=batch, variant="pruned", phase=p) for p in
               ("prefill", "decode", "e2e")]  # fmt: skip
        if any(r is not None and r.status == "ok" for r in got):
            out.append(f"| {backend} | {row} | {batch} | " + " | ".join(_speed(r) for r in got) + " |")
    out += _latency_tables(m)
    skipped = [r for r in m.records if r.status != "ok" and r.phase == "e2e" and r.variant == "dense"]
    if skipped:
        out += ["", "Skipped cells:", ""]
        out += [f"- {r.backend} {r.row} batch {r.batch}: {r.note}" for r in skipped]
    out += _method(m, env)
    return "\n".join(out) + "\n"


def _latency_tables(m: BenchManifest) -> list[str]:
    out: list[str] = []
    for backend in dict.fromkeys(r.backend for r in m.records if r.status == "ok"):
        out += [
            "",
            f"## {backend}: latency",
            "",
            "Milliseconds, p50 (p90 / p99). TTFT = prefill of the whole batch; TPOT = one decode step "
            "(every step of every round); tok/s = output tokens per second end to end at the p50.",
            "",
            "| row | batch | variant | TTFT | TPOT | end to end | tok/s | rounds (± of p50) | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, row, batch in [c for c in _cells(m) if c[0] == backend]:
            for variant in ("dense", "pruned", "probe"):
                e2e = _find(m.records, backend=backend, row=row, batch=batch, variant=variant, phase="e2e")
                if e2e is None or e2e.status != "ok" or e2e.latency_ms is None:
                    continue
                pre = _find(m.records, backend=backend, row=row, batch=batch, variant=variant, phase="prefill")
                dec = _find(m.records, backend=backend, row=row, batch=batch, variant=variant, phase="decode")
                spread = f"{e2e.rounds} (±{e2e.latency_ms.rel_ci * 100:.1f}%)"
                label = f"{row} ({e2e.prompt_len}+{e2e.new_tokens})"
                out.append(
                    f"| {label} | {batch} | {variant} ({e2e.blocks}) | {_lat(pre)} | {_lat(dec)} | {_lat(e2e)} | "
                    f"{_f(e2e.tokens_per_s, '.1f')} | {spread} | {_f(e2e.peak_rss_mb, '.0f')} |"
                )
    return out


def _method(m: BenchManifest, env: dict[str, Any]) -> list[str]:
    c = m.config
    return [
        "",
        "## Method",
        "",
        f"Prompts: real text ({c.get('text')}), consecutive windows cut to the exact token length, no padding; "
        f"{c.get('new_tokens')} new tokens (long row: {c.get('long_new_tokens')}), greedy, no stop on EOS. "
        f"Per cell: {c.get('warmup')} warm-up generation(s) per variant, then interleaved rounds (dense, pruned, "
        "probe; order reversed every other round), as many as fit "
        f"{c.get('seconds_per_cell')} s within [{c.get('min_reps')}, {c.get('max_reps')}]; device synchronised "
        "inside every timed call; Python's garbage collector paused during the rounds. One process; all ONNX "
        "Runtime sessions share one global intra-op thread pool (`set_global_thread_pool_sizes` + "
        '`use_per_session_threads = False`). "± of p50" is the half-width of '
        "the median's distribution-free 95% interval; p99 of fewer than 100 samples is close to the maximum. "
        "Peak RSS: the process's high-water mark during the variant's warm-up at that shape (all loaded "
        "sessions' weights included); load RSS: what loading the variant added.",
        "",
        "## Environment",
        "",
        f"- {env.get('processor')}, {env.get('cpu_count')} cores; {env.get('platform')}; Python {env.get('python')}",
        f"- versions: {env.get('versions')}",
        f"- load average before/after: {env.get('load_avg_before')} / {env.get('load_avg_after')}",
        f"- commit {env.get('commit')}; {env.get('time_utc')}; {m.seconds:.0f} s in all",
        "",
    ]
