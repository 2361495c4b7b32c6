"""What the Triton `generate` model costs per token next to the same Python loop called directly (not a test).

    bash scripts/triton_env.sh                     # the server's environment (.venv-triton)
    python bench/triton_generate.py --export export/smollm2-135m/dense [--new-tokens 32] [--rounds 5]

1. Writes a `generate` repository for the export (as `sleb-deploy triton --kind generate` does, CPU, the
   given --threads) and starts tritonserver on 127.0.0.1 (sleb_deploy/engines/triton_server.py).
2. Per batch size, interleaved rounds (direct, server, direct, server, ...) after a warm-up round: the
   `Generation` class the server runs, called in this process, and the server over gRPC and HTTP
   (tests/engines/triton_client.py in the Triton environment, timing each request on the client), each with
   max_new_tokens 1 and N on the same prompts (text in, the same tokens out: checked).
   Per-token decode time = (t(N) - t(1)) / (generated - 1); per-request overhead = t(1) server - t(1) direct.
   The direct loop's time inside ONNX Runtime's run is recorded too: the remainder per token is Python glue,
   the most a C++ host running the same graph could save per step.
3. Writes bench/results/triton_generate.{json,md}. Timings are figures, not assertions; the machine is shared
   (the report records `uptime`'s load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLIENT = ROOT / "tests" / "engines" / "triton_client.py"
PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):",
    "The three laws of thermodynamics are",
]


def _client(layout: Any, server: Any, model: str, requests: list[dict[str, Any]], work: Path) -> dict[str, Any]:
    case = work / "case.json"
    case.write_text(json.dumps({"http": server.http_url, "grpc": server.grpc_url, "model": model,
                                "requests": requests}))  # fmt: skip
    proc = subprocess.run([str(layout.bin / "python"), str(CLIENT), str(case)], capture_output=True, text=True,
                          env=layout.environment(), timeout=600, check=True)  # fmt: skip
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def main() -> None:
    from sleb_deploy.engines.triton_generate import GenerateSettings, Generation
    from sleb_deploy.engines.triton_onnx import TritonConfig, TritonKind, write_onnx_triton_repository
    from sleb_deploy.engines.triton_server import ServerLayout, TritonServer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", type=Path, required=True, help="an exported ONNX directory")
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-triton")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads, both sides")
    args = ap.parse_args()

    settings = GenerateSettings(device="cpu", threads=args.threads)
    work = Path(tempfile.mkdtemp(prefix="triton-bench-"))
    write_onnx_triton_repository(args.export, work / "repo", TritonConfig(kind=TritonKind.GENERATE, generate=settings))
    direct = Generation(args.export, settings)
    # Time spent inside ONNX Runtime (run_with_iobinding) during the direct loop: the rest of a step is the
    # Python glue (binding, argmax, mask/position bookkeeping) that a C++ host would write in C++.
    in_ort = [0.0]
    run = direct.generator.session.run_with_iobinding

    def timed_run(*a: Any, **k: Any) -> Any:
        started = time.perf_counter()
        try:
            return run(*a, **k)
        finally:
            in_ort[0] += time.perf_counter() - started

    direct.generator.session.run_with_iobinding = timed_run  # type: ignore[method-assign]
    layout = ServerLayout.of_venv(args.venv)
    rows = []
    with TritonServer(layout, work / "repo", log=work / "server.log") as server:
        version = server.metadata()["version"]
        load_s = server.load("generate", timeout=300)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            prompts = (PROMPTS * batch)[:batch]
            requests = [{"text": prompts, "max_new_tokens": 1}, {"text": prompts, "max_new_tokens": args.new_tokens}]
            times: dict[str, list[list[float]]] = {"direct": [], "grpc": [], "http": [], "ort": []}
            for r in range(args.rounds + 1):  # round 0 warms up both sides
                d, o = [], []
                for req in requests:
                    in_ort[0] = 0.0
                    started = time.perf_counter()
                    ids, mask = direct.encode(req["text"])
                    new, _ = direct.generate(ids, mask, req["max_new_tokens"])
                    d.append(time.perf_counter() - started)
                    o.append(in_ort[0])
                report = _client(layout, server, "generate", requests, work)
                if report["grpc"][1]["output_ids"] != new.tolist():
                    raise SystemExit("the server's tokens differ from the direct loop's")
                generated = new.shape[1]
                if r:
                    times["direct"].append(d)
                    times["ort"].append(o)
                    times["grpc"].append(report["seconds"]["grpc"])
                    times["http"].append(report["seconds"]["http"])
            row: dict[str, Any] = {"batch": batch, "generated": generated}
            for side, rounds in times.items():
                per_token = [(t[1] - t[0]) / max(generated - 1, 1) for t in rounds]
                row[side] = {"first_token_s": statistics.median(t[0] for t in rounds),
                             "end_to_end_s": statistics.median(t[1] for t in rounds),
                             "per_token_ms": 1e3 * statistics.median(per_token)}  # fmt: skip
            row["python_glue_per_token_ms"] = row["direct"]["per_token_ms"] - row["ort"]["per_token_ms"]
            for side in ("grpc", "http"):
                row[side]["per_token_ratio"] = row[side]["per_token_ms"] / row["direct"]["per_token_ms"]
                row[side]["request_overhead_ms"] = 1e3 * (row[side]["first_token_s"] - row["direct"]["first_token_s"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "export": str(args.export), "server_version": version, "model_load_s": load_s, "threads": args.threads,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "rows": rows,
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "triton_generate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Triton `generate` model vs the same loop called directly (ORT CPU)",
        "",
        f"tritonserver {version} (nvidia-pytriton), model load {load_s:.2f} s; export {args.export.name} of "
        f"`{args.export}`; {args.threads} ORT threads both sides; {args.rounds} interleaved rounds, medians; "
        f"load at the time: `{result['uptime']}` (shared 2-core machine: compare ratios, not absolutes).",
        "",
        "| batch | new tokens | direct ms/token | gRPC ms/token | HTTP ms/token | gRPC / direct | HTTP / direct "
        "| gRPC request overhead ms | HTTP request overhead ms | direct in ORT ms/token | Python glue ms/token |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        d, g, h = row["direct"], row["grpc"], row["http"]
        lines.append(
            f"| {row['batch']} | {row['generated']} | {d['per_token_ms']:.1f} | {g['per_token_ms']:.1f} | "
            f"{h['per_token_ms']:.1f} | {g['per_token_ratio']:.3f} | {h['per_token_ratio']:.3f} | "
            f"{g['request_overhead_ms']:.1f} | {h['request_overhead_ms']:.1f} | {row['ort']['per_token_ms']:.1f} | "
            f"{row['python_glue_per_token_ms']:.2f} |"
        )
    (RESULTS / "triton_generate.md").write_text("\n".join(lines) + "\n")
    print(RESULTS / "triton_generate.md")


if __name__ == "__main__":
    main()
