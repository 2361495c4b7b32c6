"""The C++ host (`sleb-host`, ONNX Runtime backend) vs the Python reference generator (`OrtGenerator`) vs the
graph alone, on the default model's dense export, per KV-cache contract (concatenating and static); plus the
host's build time (not a test).

    python bench/cpp_host.py [--work bench/cpp-host] [--threads 1] [--rounds 7] [--new 48] [--contracts concat,static]

1. Exports the default model (SmolLM2-135M, dense, fp32, default variant) into --work once per contract (the
   static one with a symbolic buffer: both generators size it prompt + new tokens), and builds the host there from
   nothing, timing the header fetch (cold cache) and the CMake + Ninja build (-j2) apart.
2. Per contract and round, interleaved, order flipped every round, same intra-op thread count everywhere:
   - `sleb-host --json` (a fresh process; its own in-process timings: prefill, decode ms per token);
   - `OrtGenerator.generate` in this process, N new tokens and 1 new token: decode per token =
     (T(N) - T(1)) / (N - 1), the same quantity the host reports;
   - the graph alone: `run_with_iobinding` on the same sequence of decode shapes (past = prompt .. prompt + N - 2;
     static: writes at those slots of one buffer bound as input and output) with inputs made before the clock
     starts: what any host must pay per token.
   At batch 1 and at batch 4 with left padding (prompts of 32, 28, 24, 20 tokens). Both generators must
   produce the same tokens (checked).
3. Writes bench/results/cpp_host_smollm2.{json,md}: medians and per-round paired ratios. Timings are
   figures, not assertions; on a shared machine absolute times are inflated (the load is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BATCHES = {1: (32,), 4: (32, 28, 24, 20)}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def export_dense(work: Path, kv_cache: str) -> Path:
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    out = work / ("dense" if kv_cache == "concat" else f"dense-{kv_cache}")
    if not (out / "export.json").is_file():
        print(f"exporting smollm2-135m ({kv_cache} KV cache) -> {out}", flush=True)
        export_checkpoint("smollm2-135m", out, ExportConfig(kv_cache=kv_cache))
    return out


def build_host(work: Path) -> tuple[Path, dict[str, float]]:
    """A fresh build: the header fetch into an empty cache, then CMake + Ninja into an empty build dir."""
    build = work / "build"
    shutil.rmtree(build, ignore_errors=True)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        include = subprocess.run(
            [str(ROOT / "scripts" / "fetch_ort_headers.sh"), cache], check=True, capture_output=True, text=True
        ).stdout.strip()
        fetch = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(
            ["cmake", "-S", str(ROOT / "engines" / "cpp"), "-B", str(build), "-G", "Ninja",
             f"-DORT_INCLUDE_DIR={include}", f"-DPython3_EXECUTABLE={sys.executable}"],
            check=True, capture_output=True,
        )  # fmt: skip
        configure = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run(["ninja", "-C", str(build), "-j", "2"], check=True, capture_output=True)
        compile_s = time.perf_counter() - t0
    return build / "sleb-host", {
        "header_fetch_s": round(fetch, 2),
        "cmake_configure_s": round(configure, 2),
        "ninja_build_s": round(compile_s, 2),
    }


def prompts_for(tok: Any, lengths: tuple[int, ...]) -> list[list[int]]:
    text = (
        "The river runs past the old mill and under the stone bridge, where children count the boats. "
        "In spring the water rises, the meadows flood, and the miller waits for the wheel to turn again."
    )
    ids: list[int] = tok(text)["input_ids"]
    return [ids[:n] for n in lengths]


def padded(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(p) for p in prompts)
    ids = np.zeros((len(prompts), length), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, length - len(p) :] = p
        mask[row, length - len(p) :] = 1
    return ids, mask


def run_cpp(host: Path, directory: Path, prompts: list[list[int]], new: int, threads: int) -> dict[str, Any]:
    proc = subprocess.run(
        [str(host), str(directory), "--json", "--max-new-tokens", str(new), "--threads", str(threads)],
        input=json.dumps(prompts), capture_output=True, text=True, check=True,
    )  # fmt: skip
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def run_python(gen: Any, ids: np.ndarray, mask: np.ndarray, new: int) -> tuple[float, list[list[int]]]:
    """(decode ms per token, new tokens): (T(new) - T(1)) / (new - 1)."""
    t0 = time.perf_counter()
    gen.generate(ids, mask, 1)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = gen.generate(ids, mask, new)
    full = time.perf_counter() - t0
    return (full - one) * 1000 / (new - 1), out[:, ids.shape[1] :].tolist()


def run_graph(gen: Any, batch: int, prompt_len: int, new: int) -> float:
    """The graph alone: decode steps at past = prompt_len .. prompt_len + new - 2, inputs made off the clock."""
    from sleb_deploy import contract

    if gen.kv_cache == contract.STATIC:
        return run_graph_static(gen, batch, prompt_len, new)
    rng = np.random.default_rng(0)
    total = 0.0
    for past in range(prompt_len, prompt_len + new - 1):
        feeds: dict[str, np.ndarray] = {
            contract.INPUT_IDS: np.full((batch, 1), 42, dtype=np.int64),
            contract.ATTENTION_MASK: np.ones((batch, past + 1), dtype=np.int64),
            contract.POSITION_IDS: np.full((batch, 1), past, dtype=np.int64),
        }
        shape = (batch, gen.num_kv_heads, past, gen.head_dim)
        for name in gen.past_names:
            feeds[name] = rng.standard_normal(shape, dtype=np.float32)
        binding = gen.session.io_binding()  # outputs stay ORT-owned, as in OrtGenerator: no numpy copies timed
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in gen.output_names:
            binding.bind_output(name, "cpu")
        t0 = time.perf_counter()
        gen.session.run_with_iobinding(binding)
        total += time.perf_counter() - t0
    return total * 1000 / (new - 1)


def run_graph_static(gen: Any, batch: int, prompt_len: int, new: int) -> float:
    """The static graph alone: the same decode steps, each writing at slot ``past`` of one buffer of
    prompt_len + new slots (the generators' default) bound as input and output, as OrtGenerator binds it."""
    from sleb_deploy import contract

    length = prompt_len + new
    cache = gen.cache(batch, length)
    total = 0.0
    for past in range(prompt_len, prompt_len + new - 1):
        mask = np.zeros((batch, length), dtype=np.int64)
        mask[:, : past + 1] = 1
        binding = gen.session.io_binding()
        binding.bind_cpu_input(contract.INPUT_IDS, np.full((batch, 1), 42, dtype=np.int64))
        binding.bind_cpu_input(contract.ATTENTION_MASK, mask)
        binding.bind_cpu_input(contract.POSITION_IDS, np.full((batch, 1), past, dtype=np.int64))
        binding.bind_cpu_input(contract.WRITE_INDICES, np.full((batch,), past, dtype=np.int64))
        binding.bind_output(contract.LOGITS, "cpu")
        for name, present, value in zip(gen.past_names, gen.output_names[1:], cache.values, strict=True):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(present, value)
        t0 = time.perf_counter()
        gen.session.run_with_iobinding(binding)
        total += time.perf_counter() - t0
    return total * 1000 / (new - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "cpp-host")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--contracts", default="concat,static", help="KV-cache contracts to compare, comma-separated")
    ap.add_argument("--render", action="store_true", help="rewrite the .md from the committed .json only")
    args = ap.parse_args()
    if args.render:
        rec = json.loads((RESULTS / "cpp_host_smollm2.json").read_text())
        (RESULTS / "cpp_host_smollm2.md").write_text(render(rec))
        return

    import onnxruntime as ort
    from transformers import AutoTokenizer

    from sleb_deploy.artifacts import environment
    from sleb_deploy.export.ort_generate import OrtGenerator

    args.work.mkdir(parents=True, exist_ok=True)
    contracts = args.contracts.split(",")
    directories = {kv: export_dense(args.work, kv) for kv in contracts}
    load_before = _load()
    host, build = build_host(args.work)
    print(f"built {host}: {build} (load {load_before})", flush=True)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    tok = AutoTokenizer.from_pretrained(directories[contracts[0]])
    cases: dict[str, Any] = {}
    for kv, batch, lengths in [(kv, b, n) for kv in contracts for b, n in BATCHES.items()]:
        directory = directories[kv]
        gen = OrtGenerator(directory / "model.onnx", session_options=so)
        prompts = prompts_for(tok, lengths)
        ids, mask = padded(prompts)
        run_python(gen, ids, mask, 4)  # warm-up
        run_graph(gen, batch, ids.shape[1], 4)
        rows: dict[str, list[float]] = {"cpp": [], "python": [], "graph": [], "cpp_prefill": []}
        same = True
        for r in range(args.rounds):
            order = ["cpp", "python", "graph"] if r % 2 == 0 else ["graph", "python", "cpp"]
            for which in order:
                if which == "cpp":
                    res = run_cpp(host, directory, prompts, args.new, args.threads)
                    rows["cpp"].append(res["decode_ms_per_token"])
                    rows["cpp_prefill"].append(res["prefill_ms"])
                    cpp_tokens = res["tokens"]
                elif which == "python":
                    ms, py_tokens = run_python(gen, ids, mask, args.new)
                    rows["python"].append(ms)
                else:
                    rows["graph"].append(run_graph(gen, batch, ids.shape[1], args.new))
            same = same and cpp_tokens == py_tokens
            last = ", ".join(f"{k} {v[-1]:.2f}" for k, v in rows.items())
            print(f"{kv} batch {batch} round {r}: {last}", flush=True)
        ratios = {
            "cpp_over_graph": [c / g for c, g in zip(rows["cpp"], rows["graph"], strict=True)],
            "python_over_graph": [p / g for p, g in zip(rows["python"], rows["graph"], strict=True)],
            "cpp_over_python": [c / p for c, p in zip(rows["cpp"], rows["python"], strict=True)],
        }
        cases[f"batch{batch}" if kv == "concat" else f"{kv}-batch{batch}"] = {
            "kv_cache": kv,
            "batch": batch,
            "prompt_lengths": list(lengths),
            "new_tokens": args.new,
            "same_tokens": same,
            "decode_ms_per_token": {k: [round(x, 3) for x in v] for k, v in rows.items()},
            "median_ms": {k: round(statistics.median(v), 3) for k, v in rows.items()},
            "median_ratio": {k: round(statistics.median(v), 4) for k, v in ratios.items()},
            "ratios": {k: [round(x, 4) for x in v] for k, v in ratios.items()},
        }
    record = {
        "what": "C++ host (ONNX Runtime backend) vs OrtGenerator vs the graph alone, decode ms per token, per KV "
        "contract (the three paired within a contract; the contracts run one after the other)",
        "command": f"python bench/cpp_host.py --threads {args.threads} --rounds {args.rounds} --new {args.new} "
        f"--contracts {args.contracts}",
        "model": "smollm2-135m dense, fp32, default variant; static: --kv-cache static, buffer prompt + new tokens",
        "threads": args.threads,
        "build": build,
        "load_before": load_before,
        "load_after": _load(),
        "cases": cases,
        "environment": environment(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpp_host_smollm2.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "cpp_host_smollm2.md").write_text(render(record))
    print(render(record))


def render(rec: dict[str, Any]) -> str:
    b = rec["build"]
    lines = [
        "# C++ host vs Python generator vs the graph alone (decode, ms per token)",
        "",
        f"`{rec['command']}`; {rec['model']}; {rec['threads']} intra-op thread(s) everywhere; "
        f"load average before/after {rec['load_before']} / {rec['load_after']} (a shared 2-core machine: absolute "
        "times are inflated, the paired ratios are the result).",
        "",
        f"Build from nothing: header fetch {b['header_fetch_s']} s, CMake configure {b['cmake_configure_s']} s, "
        f"Ninja (-j2) {b['ninja_build_s']} s.",
        "",
        "| case | KV cache | C++ host | OrtGenerator | graph alone | C++ / graph | Python / graph | C++ / Python "
        "| same tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(c: dict[str, Any], key: str) -> str:
        q1, med, q3 = statistics.quantiles(c["ratios"][key], n=4)
        return f"{med:.3f} ({q1:.2f}-{q3:.2f})"

    for name, c in rec["cases"].items():
        m = c["median_ms"]
        lines.append(
            f"| {name} (prompts {c['prompt_lengths']}, {c['new_tokens']} new) | {c.get('kv_cache', 'concat')} "
            f"| {m['cpp']:.2f} | {m['python']:.2f} "
            f"| {m['graph']:.2f} | {ratio(c, 'cpp_over_graph')} | {ratio(c, 'python_over_graph')} "
            f"| {ratio(c, 'cpp_over_python')} | {c['same_tokens']} |"
        )
    lines += [
        "",
        "Times: medians over rounds. Ratios: median (interquartile range) of the per-round paired ratios (variants",
        "interleaved, order flipped each round). The graph alone is `run_with_iobinding` on the same decode shapes",
        "with inputs made off the clock. The C++ host's prefill (its own timing line) is in the JSON. The KV-cache",
        "contracts run one after the other (not interleaved with each other): compare within a row, not times",
        "across contracts (bench/static_cache_bench.py compares the contracts' graphs).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
