"""Static KV-cache graph vs our concatenating graph vs onnxruntime-genai's builder graph (not a test).

    bash bench/genai_env.sh /work/venvs/genai                       # the builder's own environment
    /work/venvs/genai/bin/python -m onnxruntime_genai.models.builder \\
        -i ~/.cache/sleb-deploy/models/smollm2-135m -o /work/venvs/builder-smollm2-fp32 -p fp32 -e cpu
    python bench/static_cache_bench.py --builder /work/venvs/builder-smollm2-fp32 [--genai-venv /work/venvs/genai]

1. Exports the default model (SmolLM2-135M, dense, fp32) with our exporter twice: the concatenating contract
   (the default) and ``--kv-cache static`` (symbolic ``max_cache_len``), into ``--work`` (git-ignored).
2. Loads the three graphs in ONE process, sessions sharing ONE ONNX Runtime intra-op pool (2 threads,
   ``use_per_session_threads=False``), every call through ``run_with_iobinding``:
   - ``concat``: pasts bound as ``OrtValue``s ``[B, H, past, D]``, presents and logits allocated by ORT
     (what ``OrtGenerator`` does);
   - ``static``: one buffer ``[B, H, L, D]`` per tensor bound as input and output (in place);
   - ``builder``: the builder's ``GroupQueryAttention`` graph with its shared past/present buffer
     (``past_present_share_buffer``: the same ``[B, H, L, D]`` buffer as past and present, the mask as long as
     past + new), the way onnxruntime-genai runs it.
   The buffer length L is the same for ``static`` and ``builder``: past + ``--headroom``. Random K/V.
3. Times them interleaved (order rotated every round, after warm-up) at decode B=1/4/16 past 128, B=1/4 past
   2048 and prefill B=1 S=128; medians and per-round ratios (each run over the builder's / concat's run of the
   same round). Decode slope: ms per 1K tokens of context between past 128 and 2048. A sensitivity row times
   ``static`` at past 128 with a 4096-slot buffer. Before timing, the three graphs' prefill logits are compared.
4. Writes bench/results/static_cache.{json,md} with the machine load, versions and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def export_ours(work: Path) -> dict[str, Path]:
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    out = {}
    for kv in ("concat", "static"):
        d = work / kv
        if not (d / "export.json").is_file():
            print(f"exporting {kv} -> {d}", flush=True)
            export_checkpoint("smollm2-135m", d, ExportConfig(kv_cache=kv, force=True))
        out[kv] = d / "model.onnx"
    return out


class Graph:
    """One graph and the I/O binding of one shape (built once per shape, reused by every timed run)."""

    def __init__(self, name: str, path: Path, so: Any) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.name = name
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
        if self.name == "concat":
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
        if self.name == "static":
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


def measure(graphs: list[Graph], rounds: int, warmup: int, headroom: int) -> list[dict[str, Any]]:
    """Every shape: the three graphs (static and builder with a buffer of past + new + ``headroom`` slots) and
    ``static_tight``, the static graph's session with a buffer of exactly past + new slots (the last step of a
    generation whose buffer the generator sized to prompt + new tokens)."""
    rows = []
    shapes = [(*s, s[3] + s[2] + headroom) for s in SHAPES]
    shapes.append(("decode B=1 past 128, 4096-slot buffer", 1, 1, 128, 4096))
    by_name = {g.name: g for g in graphs}
    for label, batch, seq, past, length in shapes:
        todo = [g.name for g in graphs if "4096" not in label or g.name != "concat"]
        if "4096" not in label:
            todo.append("static_tight")
        binds = {
            n: by_name[n.split("_")[0]].bind(
                batch, seq, past, past + seq if n == "static_tight" else length, np.random.default_rng(1)
            )
            for n in todo
        }
        times: dict[str, list[float]] = {n: [] for n in todo}
        for _ in range(warmup):
            for n in todo:
                by_name[n.split("_")[0]].run(binds[n])
        n_rounds = rounds if seq == 1 else max(8, rounds // 2)
        for r in range(n_rounds):
            k = r % len(todo)
            for n in todo[k:] + todo[:k]:
                times[n].append(by_name[n.split("_")[0]].run(binds[n]))
        row: dict[str, Any] = {
            "shape": label, "batch": batch, "seq": seq, "past": past, "buffer": length, "rounds": n_rounds,
        }  # fmt: skip
        for n in todo:
            t = np.array(times[n]) * 1e3
            row[n] = {"median_ms": round(float(np.median(t)), 3), "p90_ms": round(float(np.percentile(t, 90)), 3)}
        for mine in ("static", "static_tight"):
            for base in ("builder", "concat"):
                if base in times and mine in times:
                    paired = np.array(times[mine]) / np.array(times[base])
                    row[f"{mine}_over_{base}"] = round(float(np.median(paired)), 3)
                    row[f"{mine}_over_{base}_iqr"] = [round(float(np.percentile(paired, q)), 3) for q in (25, 75)]
        row["load"] = _load()
        rows.append(row)
        print(
            f"{label:40s} "
            + "  ".join(f"{n} {row[n]['median_ms']:.2f}" for n in todo)
            + f"  static/builder {row.get('static_over_builder')}  static/concat {row.get('static_over_concat')}"
            + f"  tight/builder {row.get('static_tight_over_builder')}"
            + f"  tight/concat {row.get('static_tight_over_concat')}"
            + f"  load {row['load'][0]}",
            flush=True,
        )
    return rows


def profile(graphs: list[Graph], shape: tuple[int, int, int], headroom: int) -> dict[str, Any]:
    """Per-op-type time (ms per run, ORT's profiler, sessions of their own on the shared pool) at one decode shape."""
    import onnxruntime as ort

    batch, past, runs = *shape[:2], shape[2]
    out = {}
    for g in graphs:
        so = ort.SessionOptions()
        so.use_per_session_threads = False
        so.log_severity_level = 3
        so.enable_profiling = True
        so.profile_file_prefix = str(Path("/tmp") / f"static-cache-profile-{g.name}")
        prof = Graph(g.name, g.path, so)
        b = prof.bind(batch, 1, past, past + 1 + headroom, np.random.default_rng(2))
        for _ in range(runs):
            prof.run(b)
        trace = json.loads(Path(prof.session.end_profiling()).read_text())
        by_op: dict[str, float] = {}
        for ev in trace:
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                op = ev["args"]["op_name"]
                by_op[op] = by_op.get(op, 0.0) + ev["dur"]
        top = sorted(by_op.items(), key=lambda kv: -kv[1])[:6]
        out[g.name] = {op: round(us / runs / 1e3, 2) for op, us in top}
    return out


def slopes(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ms per 1K tokens of context, decode past 128 -> 2048, per batch and graph."""
    by = {(r["batch"], r["past"]): r for r in rows if r["seq"] == 1 and "4096" not in r["shape"]}
    out: dict[str, dict[str, float]] = {}
    for batch in (1, 4):
        lo, hi = by[(batch, 128)], by[(batch, 2048)]
        out[f"B={batch}"] = {
            g: round((hi[g]["median_ms"] - lo[g]["median_ms"]) / 1.92, 2)
            for g in ("static", "static_tight", "concat", "builder")
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
    lines = [
        "# Static KV-cache graph vs concatenating graph vs onnxruntime-genai builder (ONNX Runtime CPU)",
        "",
        f"Model: {r['model']}, dense fp32. {r['threads']} intra-op threads, ONE shared pool, one process, "
        f"interleaved (order rotated per round), `run_with_iobinding`, random K/V, {r['rounds']} rounds per "
        f"decode shape (prefill: half), medians. Buffer (static and builder): past + new + {r['headroom']} slots.",
        f"Our onnxruntime {r['versions']['onnxruntime']}; the builder graph written by onnxruntime-genai "
        f"{r['versions']['builder_env']['onnxruntime_genai']} (its env: onnxruntime "
        f"{r['versions']['builder_env']['onnxruntime']}), `-p fp32 -e cpu`, {r['nodes']['builder']} nodes "
        f"(ours: concat {r['nodes']['concat']}, static {r['nodes']['static']}), timed with our onnxruntime.",
        f"Load average (1/5/15 min) before: {r['load_before']}, after: {r['load_after']} "
        f"on {r['machine']['cpus']} CPUs (shared machine). Command: `{r['command']}`.",
        f"Prefill logits vs concat (max |diff|): {r['logits_vs_concat']}.",
        "",
        "`static`: buffer of past + new + headroom slots; `tight`: the same graph with a buffer of exactly past + new",
        "slots. Ratios are medians of per-round ratios (runs adjacent in time).",
        "",
        "| shape | static (ms) | tight (ms) | concat (ms) | builder, shared buffer (ms) | static / builder | "
        "tight / builder | static / concat | tight / concat |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(row: dict[str, Any], key: str) -> str:
        return f"{row[key]['median_ms']:.2f}" if key in row else "–"

    for row in r["rows"]:
        lines.append(
            f"| {row['shape']} | {ms(row, 'static')} | {ms(row, 'static_tight')} | {ms(row, 'concat')} | "
            f"{ms(row, 'builder')} | {row.get('static_over_builder', '–')} | "
            f"{row.get('static_tight_over_builder', '–')} | {row.get('static_over_concat', '–')} | "
            f"{row.get('static_tight_over_concat', '–')} |"
        )
    lines += ["", "Decode slope, ms per 1K tokens of context (past 128 -> 2048):", ""]
    lines += ["| batch | static | tight | concat | builder |", "|---|---|---|---|---|"]
    for batch, s in r["slopes"].items():
        lines.append(f"| {batch} | {s['static']} | {s['static_tight']} | {s['concat']} | {s['builder']} |")
    lines += ["", f"ORT profile, ms per run by op type ({r['profile']['shape']}, separate sessions):", ""]
    for name, ops in r["profile"]["ops"].items():
        lines.append(f"- {name}: " + ", ".join(f"{op} {t}" for op, t in ops.items()))
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--builder", type=Path, required=True, help="directory of the builder's model.onnx")
    ap.add_argument("--genai-venv", type=Path, default=Path("/work/venvs/genai"))
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "static-cache")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--headroom", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnxruntime as ort

    from sleb_deploy.bench.ort_runner import session_options

    paths = export_ours(args.work)
    so = session_options(args.threads)
    graphs = [
        Graph("static", paths["static"], so),
        Graph("concat", paths["concat"], so),
        Graph("builder", args.builder / "model.onnx", so),
    ]
    diffs = prefill_logits(graphs)
    print("prefill logits vs concat", diffs, flush=True)
    load_before = _load()
    rows = measure(graphs, args.rounds, args.warmup, args.headroom)
    prof = {
        "shape": f"decode B=16 past 128, buffer {129 + args.headroom}",
        "ops": profile(graphs, (16, 128, 10), args.headroom),
    }
    result = {
        "model": "smollm2-135m (SmolLM2-135M-Instruct)",
        "threads": args.threads,
        "rounds": args.rounds,
        "headroom": args.headroom,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]]),
        "versions": {"onnxruntime": ort.__version__, "builder_env": genai_versions(args.genai_venv)},
        "nodes": {g.name: g.nodes for g in graphs},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_before": load_before,
        "load_after": _load(),
        "logits_vs_concat": {k: float(f"{v:.3g}") for k, v in diffs.items()},
        "rows": rows,
        "slopes": slopes(rows),
        "profile": prof,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "static_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "static_cache.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
