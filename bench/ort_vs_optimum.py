"""Our ONNX export vs Optimum's, same weights, same ONNX Runtime, one process (not a test).

    bash bench/optimum_env.sh                      # Optimum's own environment (transformers < 4.58)
    python bench/ort_vs_optimum.py [--work bench/ort-vs-optimum] [--last-logits-only] [--reps 40]

1. Exports the default model (SmolLM2-135M-Instruct, dense, fp32) with our exporter (default variant; with
   --last-logits-only also that variant) and with `optimum-cli export onnx --task text-generation-with-past`
   run in the Optimum environment. Optimum's input is a copy of the HF checkpoint whose config.json also
   spells `rope_theta` flat and whose tokenizer_config.json names a class transformers 4.x knows: transformers
   < 4.58 ignores `rope_parameters` and would export with its default base 10000 instead of 100000. The
   check: logits of both graphs on the same prompt agree (max |diff| recorded).
2. Loads every graph in ONE process, sessions sharing ORT's global thread pool, and times them interleaved
   (A, B, A, B, ... with the order flipped every round, after warm-up): decode step at batch 1/4/16 with 128
   past tokens, prefill of 128 tokens at batch 1. Median, p90, per-round ratios to Optimum; node counts.
3. Times two lower bounds beside them (`graph_bounds.py`): our graph with the norms, rotary, activation
   and residual adds cut out (`bound_core`: weight GEMMs + KV concat + the Attention op), and with attention
   cut out too (`bound_gemm`: what the weights and Optimum's I/O force on any graph). A bound above the target
   ratio means no graph of that kind can meet the target at that shape.
4. Writes bench/results/ort_vs_optimum.{json,md,png} (`--render` redraws the .md/.png from the .json).
   Timings are figures, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from graph_bounds import BOUNDS, strip_glue

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DECODE_BATCHES = (1, 4, 16)
PAST = 128
PREFILL = 128
TARGET = 0.8


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def export_ours(work: Path, last_logits_only: bool) -> Path:
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    out = work / ("ours-last-logits" if last_logits_only else "ours")
    if not (out / "export.json").is_file():
        print(f"exporting ours -> {out}", flush=True)
        export_checkpoint("smollm2-135m", out, ExportConfig(last_logits_only=last_logits_only))
    return out


def optimum_input(src: Path, dst: Path) -> dict[str, Any]:
    """Copy of the HF checkpoint that transformers < 4.58 reads as transformers 5 does."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    fixes: dict[str, Any] = {}
    cfg = json.loads((dst / "config.json").read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]
        fixes["config.rope_theta"] = rope["rope_theta"]
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg["dtype"]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    tc_path = dst / "tokenizer_config.json"
    if tc_path.is_file():
        tc = json.loads(tc_path.read_text())
        if tc.get("tokenizer_class") == "TokenizersBackend":
            tc["tokenizer_class"] = "PreTrainedTokenizerFast"
            fixes["tokenizer_config.tokenizer_class"] = "PreTrainedTokenizerFast"
            tc_path.write_text(json.dumps(tc, indent=2))
    return fixes


def export_optimum(work: Path, venv: Path, src: Path) -> tuple[Path, dict[str, Any]]:
    out = work / "optimum"
    info: dict[str, Any] = {}
    if not (out / "model.onnx").is_file():
        inp = work / "optimum-input"
        info["input_fixes"] = optimum_input(src, inp)
        cmd = [
            str(venv / "bin" / "optimum-cli"),
            *("export", "onnx", "-m", str(inp), "--task", "text-generation-with-past", "--dtype", "fp32"),
            str(out),
        ]
        print("exporting optimum:", " ".join(cmd), flush=True)
        start = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        (work / "optimum-export.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            sys.exit(f"optimum-cli failed ({proc.returncode}); see {work / 'optimum-export.log'}")
        info["export_s"] = round(time.perf_counter() - start, 1)
        info["command"] = " ".join(cmd[1:])
        (work / "optimum-info.json").write_text(json.dumps(info))
    elif (work / "optimum-info.json").is_file():
        info = json.loads((work / "optimum-info.json").read_text())
    cfg = json.loads((out / "config.json").read_text())
    info["config_rope_theta"] = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta"))
    return out, info


def graph_stats(path: Path) -> dict[str, Any]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    return {
        "nodes": len(proto.graph.node),
        "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "initializers": len(proto.graph.initializer),
        "top_ops": dict(ops.most_common(12)),
        "bytes": sum(p.stat().st_size for p in path.parent.glob("model.onnx*")),
    }


class Graph:
    def __init__(self, name: str, path: Path, so: Any) -> None:
        import onnxruntime as ort

        self.name = name
        self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        ins = self.session.get_inputs()
        self.past_names = [i.name for i in ins if i.name.startswith("past_key_values")]
        self.input_names = [i.name for i in ins]
        self.kv_heads, self.head_dim = int(ins[3].shape[1]), int(ins[3].shape[3])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, batch: int, seq: int, past: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        ids = rng.integers(100, 40000, size=(batch, seq), dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((batch, past + seq), dtype=np.int64),
            "position_ids": np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq)).copy(),
        }
        shape = (batch, self.kv_heads, past, self.head_dim)
        for n in self.past_names:
            feeds[n] = rng.standard_normal(shape, dtype=np.float32) * 0.5
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feeds)


def check_same_logits(graphs: list[Graph]) -> dict[str, float]:
    """Same weights, same prompt: the logits must agree (a wrong rope base in one would not)."""
    rng = np.random.default_rng(0)
    feeds = graphs[0].feeds(2, 24, 0, rng)
    ref = graphs[0].run(feeds)[0][:, -1]
    return {g.name: float(np.abs(g.run(feeds)[0][:, -1] - ref).max()) for g in graphs[1:] if g.name not in BOUNDS}


def write_bounds(ours: Path, work: Path) -> dict[str, Path]:
    """bound_core / bound_gemm graphs cut from our export (see graph_bounds.py)."""
    import onnx

    proto = onnx.load(str(ours))
    out = {}
    for name in BOUNDS:
        path = work / name / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(strip_glue(proto, keep_attention=name == "bound_core"), str(path))
        out[name] = path
    return out


def timed(graph: Graph, feeds: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    graph.run(feeds)
    return time.perf_counter() - start


def measure(graphs: list[Graph], shapes: list[tuple[str, int, int, int]], reps: int, warmup: int) -> list[dict]:
    rows = []
    for label, batch, seq, past in shapes:
        rng = np.random.default_rng(1)
        feeds = graphs[0].feeds(batch, seq, past, rng)
        per = {g.name: {k: v for k, v in feeds.items() if k in g.input_names} for g in graphs}
        times: dict[str, list[float]] = {g.name: [] for g in graphs}
        for _ in range(warmup):
            for g in graphs:
                g.run(per[g.name])
        n = reps if seq == 1 else max(8, reps // 2)
        for r in range(n):
            order = graphs if r % 2 == 0 else graphs[::-1]
            for g in order:
                times[g.name].append(timed(g, per[g.name]))
        row: dict[str, Any] = {"shape": label, "batch": batch, "seq": seq, "past": past, "reps": n}
        for g in graphs:
            t = np.array(times[g.name]) * 1e3
            row[g.name] = {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))}
        base = np.array(times["optimum"])
        for g in graphs:
            if g.name != "optimum":
                # Paired: each run over Optimum's run of the same round (adjacent in time), so drift in machine
                # speed cancels; the median of those, with its 25-75% range.
                paired = np.array(times[g.name]) / base
                row[g.name]["ratio_vs_optimum"] = float(np.median(paired))
                row[g.name]["ratio_iqr"] = [float(np.percentile(paired, 25)), float(np.percentile(paired, 75))]
        rows.append(row)
        print(
            f"{label:24s} "
            + "  ".join(f"{g.name} {row[g.name]['median_ms']:.2f} ms" for g in graphs)
            + "  ratio "
            + " ".join(f"{row[g.name]['ratio_vs_optimum']:.3f}" for g in graphs if g.name != "optimum"),
            flush=True,
        )
    return rows


def profile(graphs: list[Graph], paths: dict[str, Path], shape: tuple[str, int, int, int], out: Path) -> dict:
    """Per-op-type time (ms per run) of each graph at one shape, from ORT's profiler."""
    import onnxruntime as ort

    label, batch, seq, past = shape
    result = {}
    for g in graphs:
        so = ort.SessionOptions()
        so.use_per_session_threads = False
        so.enable_profiling = True
        so.profile_file_prefix = str(out / f"profile-{g.name}-{label}")
        sess = ort.InferenceSession(str(paths[g.name]), sess_options=so, providers=["CPUExecutionProvider"])
        feeds = g.feeds(batch, seq, past, np.random.default_rng(2))
        runs = 10
        for _ in range(runs):
            sess.run(None, feeds)
        trace = json.loads(Path(sess.end_profiling()).read_text())
        by_op: Counter = Counter()
        for ev in trace:
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                by_op[ev["args"]["op_name"]] += ev["dur"]
        result[g.name] = {op: round(us / runs / 1e3, 3) for op, us in by_op.most_common(12)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "ort-vs-optimum", help="exports go here")
    ap.add_argument("--optimum-venv", type=Path, default=ROOT / ".venv-optimum")
    ap.add_argument("--model-dir", type=Path, default=None, help="HF dir of the default model (default: cache)")
    ap.add_argument("--last-logits-only", action="store_true", help="also time our --last-logits-only export")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="global intra-op pool size (0: ORT's default)")
    ap.add_argument("--profile", action="store_true", help="ORT profile per op type at the worst shape")
    ap.add_argument("--no-bounds", action="store_true", help="skip the bound_core / bound_gemm graphs")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md and .png from the .json")
    args = ap.parse_args()
    if args.render:
        result = json.loads((RESULTS / "ort_vs_optimum.json").read_text())
        (RESULTS / "ort_vs_optimum.md").write_text(markdown(result))
        plot(result, RESULTS / "ort_vs_optimum.png")
        return

    import onnxruntime as ort

    from sleb_deploy.artifacts import environment
    from sleb_deploy.models.load import resolve_model

    if not (args.optimum_venv / "bin" / "optimum-cli").is_file():
        sys.exit(f"no Optimum environment at {args.optimum_venv}: run `bash bench/optimum_env.sh` first")
    env = environment()  # before anything is written: the commit (and -dirty) of the code that runs
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or Path(resolve_model("smollm2-135m").location)
    paths = {"ours": export_ours(args.work, False) / "model.onnx"}
    if args.last_logits_only:
        paths["ours_last_logits"] = export_ours(args.work, True) / "model.onnx"
    opt_dir, opt_info = export_optimum(args.work, args.optimum_venv, model_dir)
    paths["optimum"] = opt_dir / "model.onnx"
    if not args.no_bounds:
        paths.update(write_bounds(paths["ours"], args.work))

    # One global thread pool for every session: they never compete for cores with each other's pools.
    ort.set_global_thread_pool_sizes(args.threads, 1)
    so = ort.SessionOptions()
    so.use_per_session_threads = False
    graphs = [Graph(name, path, so) for name, path in paths.items()]
    graphs.sort(key=lambda g: g.name != "ours")  # ours first; "optimum" is the baseline
    diff = check_same_logits(graphs)
    print("max |logits diff| vs ours:", diff, flush=True)

    load_before = _load()
    shapes = [(f"decode b{b} past{PAST}", b, 1, PAST) for b in DECODE_BATCHES]
    shapes.append((f"prefill b1 S{PREFILL}", 1, PREFILL, 0))
    rows = measure(graphs, shapes, args.reps, args.warmup)
    load_after = _load()

    worst = max(rows, key=lambda r: r["ours"]["ratio_vs_optimum"])
    prof = None
    if args.profile:
        real = [g for g in graphs if g.name not in BOUNDS]
        prof = profile(
            real, paths, (worst["shape"].replace(" ", "_"), worst["batch"], worst["seq"], worst["past"]), args.work
        )
    env["optimum_env"] = _optimum_versions(args.optimum_venv)
    env["ort_threads"] = {"global_intra_op": args.threads or "default (cores)", "per_session_threads": False}
    env["load_avg_before"], env["load_avg_after"] = load_before, load_after
    result = {
        "model": "smollm2-135m (SmolLM2-135M-Instruct, dense, fp32)",
        "graphs": {g.name: {"path": str(paths[g.name]), **graph_stats(paths[g.name])} for g in graphs},
        "optimum_export": opt_info,
        "max_abs_logits_diff_vs_ours": diff,
        "target_ratio": TARGET,
        "rows": rows,
        "meets_target": {
            g.name: all(r[g.name]["ratio_vs_optimum"] <= TARGET for r in rows)
            for g in graphs
            if g.name.startswith("ours")
        },
        "profile_ms_per_run_by_op": prof,
        "environment": env,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ort_vs_optimum.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "ort_vs_optimum.md").write_text(markdown(result))
    plot(result, RESULTS / "ort_vs_optimum.png")
    print(f"wrote {RESULTS / 'ort_vs_optimum.md'}")


def _optimum_versions(venv: Path) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; print(json.dumps({d: m.version(d) for d in "
        "('optimum', 'optimum-onnx', 'transformers', 'torch', 'onnxruntime')}))"
    )
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-300:]}


def plot(r: dict, path: Path) -> None:
    """Bars of latency / Optimum's per shape and graph, the target as a line (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    names = [n for n in r["graphs"] if n != "optimum"]
    shapes = [row["shape"] for row in r["rows"]]
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, n in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(shapes))]
        vals = [row[n]["ratio_vs_optimum"] for row in r["rows"]]
        bars = ax.bar(xs, vals, width, label=n, hatch="//" if n in BOUNDS else None, alpha=0.6 if n in BOUNDS else 1)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(r["target_ratio"], color="crimson", linestyle="--", linewidth=1, label=f"target {r['target_ratio']}")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(shapes)), shapes)
    ax.set_ylabel("latency / Optimum's (paired median)")
    ax.set_ylim(0, 1.1)
    ax.set_title("ONNX Runtime CPU, SmolLM2-135M fp32: our export vs Optimum's (lower is better)")
    ax.legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(r: dict) -> str:
    names = list(r["graphs"])
    env = r["environment"]
    met = ", ".join(f"{n}: **{'met' if ok else 'not met'}**" for n, ok in r["meets_target"].items())
    out = [
        "# Our ONNX export vs Optimum's (ONNX Runtime, CPU)",
        "",
        f"Model: {r['model']}. Generated by `python bench/ort_vs_optimum.py`; figures, not assertions.",
        f"Target: at most {r['target_ratio']}x Optimum's median latency at every shape. {met}.",
        "",
        "![latency relative to Optimum](ort_vs_optimum.png)",
        "",
        "Median latency in ms (p90 in parentheses):",
        "",
        "| shape | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in r["rows"]:
        cells = [f"{row[n]['median_ms']:.2f} ({row[n]['p90_ms']:.2f})" for n in names]
        out.append(f"| {row['shape']} | " + " | ".join(cells) + " |")
    others = [n for n in names if n != "optimum"]
    out += [
        "",
        "Latency / Optimum's: median over rounds of each run divided by Optimum's run in the same round "
        "(25-75% range in parentheses):",
        "",
        "| shape | " + " | ".join(others) + " |",
    ]
    out.append("|---|" + "---|" * len(others))
    for row in r["rows"]:
        cells = [
            f"{row[n]['ratio_vs_optimum']:.3f} ({row[n]['ratio_iqr'][0]:.2f}-{row[n]['ratio_iqr'][1]:.2f})"
            for n in others
        ]
        out.append(f"| {row['shape']} | " + " | ".join(cells) + " |")
    if any(n in BOUNDS for n in names):
        out += [
            "",
            "`bound_core` is our graph with the norms, rotary, activation, gating and residual adds cut out: "
            "the weight GEMMs, the KV concats and ONNX Runtime's Attention op are left. `bound_gemm` also drops "
            "attention: the GEMMs and the `present = concat(past, new)` copies that Optimum's I/O forces on any "
            "graph. Both keep our graph's layout ops (reshape/transpose/split; a few percent of a prefill by "
            "ORT's profile, less at decode). Their outputs are meaningless; their times are lower bounds, "
            "`bound_gemm` for graphs laid out like ours on these weights, dtype and runtime, `bound_core` for "
            "those that also use the Attention op. Where a bound is above the target, no such graph meets it.",
        ]
    out += ["", "| graph | nodes | opset | size (MB) | most frequent ops |", "|---|---|---|---|---|"]
    for n, g in r["graphs"].items():
        ops = ", ".join(f"{k} {v}" for k, v in list(g["top_ops"].items())[:8])
        out.append(f"| {n} | {g['nodes']} | {g['opset']} | {g['bytes'] / 1e6:.0f} | {ops} |")
    oe = r["optimum_export"]
    out += [
        "",
        f"Optimum export: `optimum-cli {oe.get('command', '?')}`; input fixes for transformers < 4.58: "
        f"{oe.get('input_fixes')}; rope_theta in its config.json: {oe.get('config_rope_theta')}. "
        f"Max |last-position logits| difference vs ours on one prompt: {r['max_abs_logits_diff_vs_ours']} "
        "(same weights: a different rope base would show here).",
    ]
    if r.get("profile_ms_per_run_by_op"):
        out += ["", "ORT profile at the worst shape (ms per run, by op type):", ""]
        for n, ops in r["profile_ms_per_run_by_op"].items():
            out.append(f"- {n}: " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    out += [
        "",
        "## Environment",
        "",
        f"- CPU: {env.get('processor')}, {env.get('cpu_count')} cores; {env.get('platform')}",
        f"- ORT threads: {env['ort_threads']}; load average before/after: {env['load_avg_before']} / "
        f"{env['load_avg_after']}",
        f"- main env: {env.get('versions')}",
        f"- Optimum env: {env.get('optimum_env')}",
        f"- commit: {env.get('commit')}; {env.get('time_utc')}",
        "",
        "Method: one process, all sessions on ORT's global thread pool (`set_global_thread_pool_sizes` + "
        "`use_per_session_threads = False`), interleaved runs (order flipped each round) after warm-up; "
        "decode = one token with 128 past tokens (random KV), prefill = 128 tokens, past 0; `session.run` "
        "with numpy feeds, same for every graph.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
