"""Static KV-cache graph vs our concatenating graph vs onnxruntime-genai's builder graph (not a test).

    bash bench/genai_env.sh /work/venvs/genai                       # the builder's own environment
    /work/venvs/genai/bin/python -m onnxruntime_genai.models.builder \\
        -i ~/.cache/sleb-deploy/models/smollm2-135m -o /work/venvs/builder-smollm2-fp32 -p fp32 -e cpu
    python bench/static_cache_bench.py --builder /work/venvs/builder-smollm2-fp32 [--genai-venv /work/venvs/genai]

1. Exports the default model (SmolLM2-135M, dense, fp32) with our exporter three times: the concatenating
   contract (the default), ``--kv-cache static`` (symbolic ``max_cache_len``: the MatMul attention form) and
   ``--kv-cache static --static-attention op`` (the Attention-op form a fixed length gets), into ``--work``
   (git-ignored). ``--old-static``: a static graph exported by an earlier version, timed too.
2. Loads the graphs in ONE process, sessions sharing ONE ONNX Runtime intra-op pool (2 threads,
   ``use_per_session_threads=False``), every call through ``run_with_iobinding``:
   - ``concat``: pasts bound as ``OrtValue``s ``[B, H, past, D]``, presents and logits allocated by ORT
     (what ``OrtGenerator`` does);
   - ``static`` (and ``op``, ``old``): one buffer ``[B, H, L, D]`` per tensor bound as input and output
     (in place);
   - ``builder``: the builder's ``GroupQueryAttention`` graph with its shared past/present buffer
     (``past_present_share_buffer``: the same ``[B, H, L, D]`` buffer as past and present, the mask as long as
     past + new), the way onnxruntime-genai runs it.
   The buffer length L is the same for ``static`` and ``builder``: past + new + ``--headroom``; ``static_tight``,
   ``op_tight`` and ``old_tight``: exactly past + new. Random K/V.
3. Times them interleaved (order rotated every round, after warm-up) at decode B=1/4/16 past 128, B=1/4 past
   2048 and prefill B=1 S=128, in ``--replicas`` replicas: each loads fresh sessions of every graph in a rotated
   order (by default as many replicas as graphs, so each graph is loaded first once), times ``--rounds``
   rounds and drops them. Where a session's weights land in memory moves its whole step by a few per cent,
   and the same graph loaded twice in one process has timed 3-7% apart (the first-loaded the slower) -- a bias
   as large as the differences measured here, so no graph keeps one placement. Medians over every replica's
   rounds and per-round ratios (each run over the builder's / concat's / the old
   graph's run of the same round). ``--old-concat``: a concatenating graph exported by an earlier version, timed
   as ``oldconcat`` beside ours (``concat / oldconcat``). Decode slope: ms per 1K tokens of context between past
   128 and 2048. A sensitivity row times ``static`` at past 128 with a 4096-slot buffer. Before timing, the
   graphs' prefill logits are compared.
4. Writes bench/results/static_cache.{json,md} with the machine load, versions and the command.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SHAPES = [  # label, batch, seq, past
    ("decode B=1 past 128", 1, 1, 128),
    ("decode B=4 past 128", 4, 1, 128),
    ("decode B=16 past 128", 16, 1, 128),
    ("decode B=1 past 2048", 1, 1, 2048),
    ("decode B=4 past 2048", 4, 1, 2048),
    ("prefill B=1 S=128", 1, 128, 0),
]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


NOTES = "<!-- notes: kept when the table is regenerated -->"
OURS = {  # graph name -> (directory under --work, export options)
    "concat": ("concat", {"kv_cache": "concat"}),
    "static": ("static-matmul", {"kv_cache": "static", "static_attention": "matmul"}),
    "op": ("static-op", {"kv_cache": "static", "static_attention": "op"}),
}


def export_ours(work: Path) -> dict[str, Path]:
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    out = {}
    for name, (sub, options) in OURS.items():
        d = work / sub
        graph = json.loads((d / "export.json").read_text())["graph"] if (d / "export.json").is_file() else None
        if graph is None or graph.get("attention") != options.get("static_attention"):
            print(f"exporting {name} -> {d}", flush=True)
            export_checkpoint("smollm2-135m", d, ExportConfig(**options, force=True))
        out[name] = d / "model.onnx"
    return out


class Graph:
    """One graph and the I/O binding of one shape (built once per shape, reused by every timed run)."""

    def __init__(self, name: str, path: Path, so: Any) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.name = name
        # op, old: the static contract; oldconcat: the concatenating one (an earlier version's)
        self.kind = "concat" if name == "oldconcat" else name if name in ("concat", "builder") else "static"
        self.path = path
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        ins = self.session.get_inputs()
        self.input_names = [i.name for i in ins]
        past = [i for i in ins if i.name.startswith("past_key_values")]
        self.past_names = [i.name for i in past]
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        self.kv_heads = int(past[0].shape[1])
        dim = past[0].shape[3]  # the builder's graph names it kv_cache_dim; its genai_config.json says head_size
        if not isinstance(dim, int):
            dim = json.loads((path.parent / "genai_config.json").read_text())["model"]["decoder"]["head_size"]
        self.head_dim = int(dim)
        self.nodes = len(__import__("onnx").load(str(path), load_external_data=False).graph.node)

    def bind(self, batch: int, seq: int, past: int, length: int, rng: np.random.Generator) -> Any:
        ort = self.ort
        ids = rng.integers(100, 40000, size=(batch, seq), dtype=np.int64)
        pos = np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq)).copy()
        b = self.session.io_binding()
        b.bind_cpu_input("input_ids", ids)
        if "position_ids" in self.input_names:
            b.bind_cpu_input("position_ids", pos)
        b.bind_output("logits", "cpu")
        self._keep: list[Any] = []
        if self.kind == "concat":
            b.bind_cpu_input("attention_mask", np.ones((batch, past + seq), dtype=np.int64))
            shape = (batch, self.kv_heads, past, self.head_dim)
            for n in self.past_names:
                v = ort.OrtValue.ortvalue_from_numpy(rng.standard_normal(shape, dtype=np.float32) * 0.5)
                self._keep.append(v)
                b.bind_ortvalue_input(n, v)
            for n in self.present_names:
                b.bind_output(n, "cpu")
            return b
        shape = (batch, self.kv_heads, length, self.head_dim)
        if self.kind == "static":
            mask = np.zeros((batch, length), dtype=np.int64)
            mask[:, : past + seq] = 1
            b.bind_cpu_input("attention_mask", mask)
            b.bind_cpu_input("write_indices", np.full(batch, past, dtype=np.int64))
        else:  # the builder's graph: mask as long as past + new, GQA derives the lengths from it
            b.bind_cpu_input("attention_mask", np.ones((batch, past + seq), dtype=np.int64))
        for past_name, present_name in zip(self.past_names, self.present_names, strict=True):
            buf = np.zeros(shape, dtype=np.float32)
            buf[:, :, :past] = rng.standard_normal((batch, self.kv_heads, past, self.head_dim), dtype=np.float32) * 0.5
            v = ort.OrtValue.ortvalue_from_numpy(buf)
            self._keep.append(v)
            b.bind_ortvalue_input(past_name, v)
            b.bind_ortvalue_output(present_name, v)
        return b

    def run(self, binding: Any) -> float:
        start = time.perf_counter()
        self.session.run_with_iobinding(binding)
        return time.perf_counter() - start


def prefill_logits(graphs: list[Graph]) -> dict[str, float]:
    """Same weights, same 24-token prompt at batch 2: each graph's last-position logits against concat's."""
    out = {}
    for g in graphs:
        b = g.bind(2, 24, 0, 64, np.random.default_rng(0))
        g.session.run_with_iobinding(b)
        out[g.name] = b.get_outputs()[0].numpy()[:, -1]
    ref = out["concat"]
    return {k: float(np.abs(v - ref).max()) for k, v in out.items() if k != "concat"}


TIGHT = ("static_tight", "op_tight", "old_tight")  # a buffer of exactly past + new slots
MINE = ("static", *TIGHT)
BASES = ("builder", "concat", "old_tight")


def measure(graphs: list[Graph], rounds: int, warmup: int, headroom: int) -> list[dict[str, Any]]:
    """Every shape: every graph (static and builder with a buffer of past + new + ``headroom`` slots) and the
    ``*_tight`` runs, the static graphs' sessions with a buffer of exactly past + new slots (the last step of a
    generation whose buffer the generator sized to prompt + new tokens). Per shape: its description and the
    raw times (seconds) of every run name, round by round (``summarize`` makes the row)."""
    out = []
    shapes = [(*s, s[3] + s[2] + headroom) for s in SHAPES]
    shapes.append(("decode B=1 past 128, 4096-slot buffer", 1, 1, 128, 4096))
    by_name = {g.name: g for g in graphs}
    for label, batch, seq, past, length in shapes:
        wide = "4096" in label
        todo = [g.name for g in graphs if g.name in ("static", "builder") or not (wide or g.name in ("op", "old"))]
        if not wide:
            todo += [t for t in TIGHT if t.split("_")[0] in by_name]
        binds = {
            n: by_name[n.split("_")[0]].bind(
                batch, seq, past, past + seq if n in TIGHT else length, np.random.default_rng(1)
            )
            for n in todo
        }
        times: dict[str, list[float]] = {n: [] for n in todo}
        for _ in range(warmup):
            for n in todo:
                by_name[n.split("_")[0]].run(binds[n])
        n_rounds = rounds if seq == 1 else max(4, rounds // 2)
        for r in range(n_rounds):
            k = r % len(todo)
            for n in todo[k:] + todo[:k]:
                times[n].append(by_name[n.split("_")[0]].run(binds[n]))
        meta = {"shape": label, "batch": batch, "seq": seq, "past": past, "buffer": length}
        out.append({"meta": meta, "times": times})
        print(f"{label:40s} " + "  ".join(f"{n} {np.median(times[n]) * 1e3:.2f}" for n in todo), flush=True)
    return out


def summarize(replicas: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per shape over every replica's rounds: medians and p90 per run name, and per-round ratios
    (``mine_over_base``: the median of each round's ratio, with its interquartile range)."""
    rows = []
    for i, first in enumerate(replicas[0]):
        times: dict[str, list[float]] = {n: [] for n in first["times"]}
        for rep in replicas:
            for n, t in rep[i]["times"].items():
                times[n] += t
        row: dict[str, Any] = {**first["meta"], "rounds": len(next(iter(times.values())))}
        for n, t_s in times.items():
            t = np.array(t_s) * 1e3
            row[n] = {"median_ms": round(float(np.median(t)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3)}
        for mine, base in [(m, b) for m in MINE for b in BASES] + [("concat", "oldconcat")]:
            if base in times and mine in times and base != mine:
                paired = np.array(times[mine]) / np.array(times[base])
                row[f"{mine}_over_{base}"] = round(float(np.median(paired)), 3)
                row[f"{mine}_over_{base}_iqr"] = [round(float(np.percentile(paired, q)), 3) for q in (25, 75)]
        row["load"] = _load()
        rows.append(row)
        print(
            f"{row['shape']:40s} "
            + "".join(f"  {k} {v}" for k, v in row.items() if "_over_" in k and not k.endswith("_iqr")),
            flush=True,
        )
    return rows


def profile(paths: dict[str, Path], shape: tuple[int, int, int], headroom: int) -> dict[str, Any]:
    """ORT's profiler at one decode shape ``(batch, past, runs)``, sessions of their own on the shared pool; the
    static graphs with a tight buffer, the builder with ``headroom`` spare slots (it stops at the length). Per
    graph: the top op types (ms per run), the mean run, the sum of its kernels, and the nodes run per step
    (the difference run - kernels is the executor's per-node cost)."""
    import onnxruntime as ort

    batch, past, runs = shape
    out = {}
    for name, path in paths.items():
        so = ort.SessionOptions()
        so.use_per_session_threads = False
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path("/tmp") / f"static-cache-profile-{name}")
        prof = Graph(name, path, so)
        b = prof.bind(batch, 1, past, past + 1 + (0 if prof.kind == "static" else headroom), np.random.default_rng(2))
        for _ in range(runs):
            prof.run(b)
        trace = json.loads(Path(prof.session.end_profiling()).read_text())
        by_op: dict[str, float] = {}
        kernels = 0
        for ev in trace:
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                op = ev["args"]["op_name"]
                by_op[op] = by_op.get(op, 0.0) + ev["dur"]
                kernels += 1
        model_runs = [ev["dur"] for ev in trace if ev.get("name") == "model_run"]
        top = sorted(by_op.items(), key=lambda kv: -kv[1])[:6]
        out[name] = {
            "ops": {op: round(us / runs / 1e3, 2) for op, us in top},
            "run_ms": round(float(np.mean(model_runs)) / 1e3, 2),  # mean, like the kernels' sum
            "kernels_ms": round(sum(by_op.values()) / runs / 1e3, 2),
            "nodes_per_run": kernels // runs,
        }
    return out


def slopes(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ms per 1K tokens of context, decode past 128 -> 2048, per batch and graph."""
    by = {(r["batch"], r["past"]): r for r in rows if r["seq"] == 1 and "4096" not in r["shape"]}
    out: dict[str, dict[str, float]] = {}
    for batch in (1, 4):
        lo, hi = by[(batch, 128)], by[(batch, 2048)]
        out[f"B={batch}"] = {
            g: round((hi[g]["median_ms"] - lo[g]["median_ms"]) / 1.92, 2)
            for g in ("static", *TIGHT, "concat", "oldconcat", "builder")
            if g in hi and g in lo
        }
    return out


def genai_versions(venv: Path) -> dict[str, str]:
    code = (
        "import json, onnxruntime_genai as g, onnxruntime as o, transformers as t, torch;"
        "print(json.dumps({'onnxruntime_genai': g.__version__, 'onnxruntime': o.__version__,"
        " 'transformers': t.__version__, 'torch': torch.__version__}))"
    )
    res = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def markdown(r: dict[str, Any]) -> str:
    old = r.get("old_static")
    lines = [
        "# Static KV-cache graph vs concatenating graph vs onnxruntime-genai builder (ONNX Runtime CPU)",
        "",
        f"Model: {r['model']}, dense fp32. {r['threads']} intra-op threads, ONE shared pool, one process, "
        f"interleaved (order rotated per round), `run_with_iobinding`, random K/V; {r.get('replicas', 1)} "
        f"replicas (fresh sessions, loaded in a rotated order) x {r['rounds']} rounds per decode shape (prefill: "
        f"half), medians over all of them. Buffer (static and builder): past + new + {r['headroom']} slots.",
        f"Our onnxruntime {r['versions']['onnxruntime']}; the builder graph written by onnxruntime-genai "
        f"{r['versions']['builder_env']['onnxruntime_genai']} (its env: onnxruntime "
        f"{r['versions']['builder_env']['onnxruntime']}), `-p fp32 -e cpu`, {r['nodes']['builder']} nodes "
        f"(ours: {', '.join(f'{k} {v}' for k, v in r['nodes'].items() if k != 'builder')}), timed with our "
        "onnxruntime.",
        f"Load average (1/5/15 min) before: {r['load_before']}, after: {r['load_after']} "
        f"on {r['machine']['cpus']} CPUs (shared machine). Command: `{r['command']}`.",
        f"Prefill logits vs concat (max |diff|): {r['logits_vs_concat']}.",
        "",
        "Graphs: `static` = `--kv-cache static` (symbolic length: attention as MatMul/Softmax/MatMul, "
        "export.json `graph.attention` = `matmul`), buffer of past + new + headroom slots; `tight`: the same "
        "graph with a buffer of exactly past + new slots; `op`: `--static-attention op` (the Attention op, what a "
        "fixed `--max-cache-len` gets), tight buffer"
        + (f"; `old`: the static graph of an earlier version ({old}), tight buffer." if old else "."),
        "Ratios are medians of per-round ratios (runs adjacent in time).",
        "",
        "| shape | static (ms) | tight (ms) | op (ms) | old (ms) | concat (ms) | builder, shared buffer (ms) | "
        "static / builder | tight / builder | op / builder | old / builder | tight / concat | tight / old |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(row: dict[str, Any], key: str) -> str:
        return f"{row[key]['median_ms']:.2f}" if key in row else "–"

    for row in r["rows"]:
        ratios = [
            "static_over_builder", "static_tight_over_builder", "op_tight_over_builder", "old_tight_over_builder",
            "static_tight_over_concat", "static_tight_over_old_tight",
        ]  # fmt: skip
        lines.append(
            f"| {row['shape']} | "
            + " | ".join(ms(row, k) for k in ("static", "static_tight", "op_tight", "old_tight", "concat", "builder"))
            + " | "
            + " | ".join(str(row.get(k, "–")) for k in ratios)
            + " |"
        )
    if r.get("old_concat"):
        lines += [
            "",
            f"Our concatenating graph against the same contract exported by an earlier version ({r['old_concat']}),"
            " timed in the same rounds:",
            "",
            "| shape | concat (ms) | earlier concat (ms) | concat / earlier |",
            "|---|---|---|---|",
        ]
        for row in r["rows"]:
            if "oldconcat" in row:
                cells = [ms(row, "concat"), ms(row, "oldconcat"), row.get("concat_over_oldconcat", "–")]
                lines.append(f"| {row['shape']} | " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Decode slope, ms per 1K tokens of context (past 128 -> 2048):", ""]
    lines += ["| batch | static | tight | op | old | concat | earlier concat | builder |", "|---" * 8 + "|"]
    for batch, sl in r["slopes"].items():
        keys = ("static", "static_tight", "op_tight", "old_tight", "concat", "oldconcat", "builder")
        cells = [sl.get(k, "–") for k in keys]
        lines.append(f"| {batch} | " + " | ".join(str(c) for c in cells) + " |")
    for p in r["profiles"]:
        lines += ["", f"ORT profile ({p['shape']}, separate sessions), ms per run:", ""]
        lines += ["| graph | run | kernels | outside kernels | nodes run | top op types |", "|---|---|---|---|---|---|"]
        for name, g in p["graphs"].items():
            ops = ", ".join(f"{op} {t}" for op, t in g["ops"].items())
            outside = g["run_ms"] - g["kernels_ms"]
            cells = [name, g["run_ms"], g["kernels_ms"], f"{outside:.2f}", g["nodes_per_run"], ops]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builder", type=Path, required=True, help="directory of the builder's model.onnx")
    ap.add_argument("--genai-venv", type=Path, default=Path("/work/venvs/genai"))
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "static-cache")
    ap.add_argument("--rounds", type=int, default=6, help="rounds per replica and decode shape (prefill: half)")
    ap.add_argument(
        "--replicas", type=int, default=0, help="fresh sessions, loaded in a rotated order (0: one per graph)"
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--headroom", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--old-static", type=Path, help="model.onnx of a static graph by an earlier version (timed too)")
    ap.add_argument("--old-label", default="", help="what --old-static is (e.g. the commit that exported it)")
    ap.add_argument("--old-concat", type=Path, help="model.onnx of a concatenating graph by an earlier version")
    ap.add_argument("--old-concat-label", default="", help="what --old-concat is")
    args = ap.parse_args()

    import onnxruntime as ort

    from sleb_deploy.bench.ort_runner import session_options

    paths = dict(export_ours(args.work))
    if args.old_static is not None:
        paths["old"] = args.old_static
    if args.old_concat is not None:
        paths["oldconcat"] = args.old_concat
    paths["builder"] = args.builder / "model.onnx"
    so = session_options(args.threads)
    names = list(paths)
    load_before = _load()
    replicas = []
    args.replicas = args.replicas or len(names)  # every graph loaded first once, last once, ...
    for rep in range(args.replicas):
        # Sessions are created in a rotated order per replica, then dropped: where a session's weights land
        # in memory moves its GEMMs by a few per cent (the same graph loaded twice in one process: the first
        # session 3-7% slower than the second), so no graph keeps one placement, or one load position.
        order = names[rep % len(names) :] + names[: rep % len(names)]
        print(f"replica {rep + 1}/{args.replicas}: sessions loaded in the order {order}", flush=True)
        graphs = [Graph(name, paths[name], so) for name in order]
        if rep == 0:
            diffs = prefill_logits(graphs)
            print("prefill logits vs concat", diffs, flush=True)
            nodes = {g.name: g.nodes for g in graphs}
        replicas.append(measure(graphs, args.rounds, args.warmup, args.headroom))
        del graphs
        gc.collect()
    rows = summarize(replicas)
    prof = [
        {
            "shape": f"decode B={b} past {past}, static buffers {past + 1} slots, "
            f"the builder's {past + 1 + args.headroom}",
            "graphs": profile(paths, (b, past, runs), args.headroom),
        }
        for b, past, runs in ((1, 128, 60), (4, 2048, 8))
    ]
    result = {
        "model": "smollm2-135m (SmolLM2-135M-Instruct)",
        "threads": args.threads,
        "rounds": args.rounds,
        "replicas": args.replicas,
        "headroom": args.headroom,
        "old_static": (args.old_label or str(args.old_static)) if args.old_static else None,
        "old_concat": (args.old_concat_label or str(args.old_concat)) if args.old_concat else None,
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "versions": {"onnxruntime": ort.__version__, "builder_env": genai_versions(args.genai_venv)},
        "nodes": {name: nodes[name] for name in names},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_before": load_before,
        "load_after": _load(),
        "logits_vs_concat": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        "rows": rows,
        "slopes": slopes(rows),
        "profiles": prof,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "static_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    md = RESULTS / "static_cache.md"
    notes = md.read_text().partition(NOTES)[2] if md.is_file() else ""  # hand-written findings, kept on rewrite
    md.write_text(markdown(result) + "\n" + NOTES + notes)
    print(markdown(result))


if __name__ == "__main__":
    main()
