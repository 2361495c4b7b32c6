"""Peak memory and wall time of `sleb-deploy onnx` on real model shapes, against today's code and the
onnxruntime-genai model builder on the same checkpoint (issue 10).

Random-weight checkpoints are written from the published configs (no hub here) as sharded safetensors, tensor
by tensor, with the default model's tokenizer copied in. Each tool runs in its own process; a sampler polls the
RSS of the whole process tree every 50 ms. For `sleb-deploy onnx` the peak is also split at the moment
`model.onnx` appears (export step, then validation). Runs are one at a time, each after enough memory is free
and after the checkpoint has been read once (each tool starts with it in the page cache).

    PYTHONPATH=. python bench/export_memory.py --models qwen2.5-0.5b qwen3-4b \
        [--baseline /work/main] [--builder /work/venvs/genai/bin/python] [--root /work/venvs/ckpts]

Writes bench/results/export_memory.{json,md}. Not CI (minutes, and up to ~10 GB of disk per model).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# Published configs (config.json on the Hub), the fields that shape the graph.
MODELS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(
        dtype="fp32",
        config=dict(
            model_type="qwen2", architectures=["Qwen2ForCausalLM"], vocab_size=151936, hidden_size=896,
            intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
            max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
            hidden_act="silu", use_sliding_window=False, bos_token_id=151643, eos_token_id=151643,
        ),
    ),
    "qwen3-4b": dict(
        dtype="fp16",
        config=dict(
            model_type="qwen3", architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=2560,
            intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
            head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=True, hidden_act="silu", attention_bias=False, bos_token_id=151643,
            eos_token_id=151645,
        ),
    ),
}  # fmt: skip
SHARD_BYTES = 2 << 30
NOTES = "<!-- notes: kept when the table is regenerated -->"
REPO = Path(__file__).resolve().parents[1]


def make_checkpoint(name: str, directory: Path) -> int:
    """Random weights (std 0.02, norms 1) in the model's dtype, written shard by shard; returns weight bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from sleb_deploy.export.streamed import empty_model
    from sleb_deploy.models.load import resolve_model

    spec = MODELS[name]
    tdtype = {"fp32": torch.float32, "fp16": torch.float16}[spec["dtype"]]
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(spec["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    config.dtype = tdtype
    config.save_pretrained(directory)
    tokenizer_src = Path(resolve_model("smollm2-135m").location)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_src / f, directory / f)
    model = empty_model(config)
    gen = torch.Generator().manual_seed(0)
    shard: dict[str, Any] = {}
    size, total, n, weight_map = 0, 0, 1, {}

    def flush() -> None:
        save_file(shard, str(directory / f"shard-{n}.safetensors"), metadata={"format": "pt"})
        shard.clear()

    for key, p in model.named_parameters():  # tied duplicates once (lm_head is the embedding)
        t = (torch.ones(p.shape) if p.dim() == 1 else torch.randn(p.shape, generator=gen) * 0.02).to(tdtype)
        nbytes = t.numel() * t.element_size()
        if shard and size + nbytes > SHARD_BYTES:
            flush()
            n, size = n + 1, 0
        shard[key] = t
        size, total = size + nbytes, total + nbytes
        weight_map[key] = n
    flush()
    index = {
        "metadata": {"total_size": total},
        "weight_map": {k: f"model-{i:05d}-of-{n:05d}.safetensors" for k, i in weight_map.items()},
    }
    for i in range(1, n + 1):
        os.rename(directory / f"shard-{i}.safetensors", directory / f"model-{i:05d}-of-{n:05d}.safetensors")
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return total


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], env: dict[str, str], watch: Path | None) -> dict[str, Any]:
    """Run ``cmd``; peak tree RSS overall and before/after a ``model.onnx`` first appears under ``watch``."""
    start = time.perf_counter()
    load_before = os.getloadavg()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peaks = {"export": 0, "after": 0}
    split: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = tree_rss(ps)
            if watch is not None and not split and any(watch.parent.glob(f".{watch.name}.*/model.onnx")):
                split.append(time.perf_counter() - start)
            key = "after" if split else "export"
            peaks[key] = max(peaks[key], rss)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    wall = time.perf_counter() - start
    return {
        "cmd": " ".join(cmd),
        "rc": proc.returncode,
        "wall_s": round(wall, 1),
        "peak_rss": max(peaks.values()),
        "peak_rss_until_model_onnx": peaks["export"],
        "peak_rss_after_model_onnx": peaks["after"] if split else None,
        "model_onnx_at_s": round(split[0], 1) if split else None,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "stdout_tail": out[-600:],
        "stderr_tail": err[-1500:],
    }


def wait_for_memory(need: int, timeout_s: float = 1800) -> int:
    """Wait until ``need`` bytes are available (the machine is shared); returns what is available."""
    deadline = time.time() + timeout_s
    while (avail := psutil.virtual_memory().available) < need and time.time() < deadline:
        print(f"  waiting: {avail / 1e9:.1f} GB available, need {need / 1e9:.1f} GB", flush=True)
        time.sleep(30)
    return int(avail)


def warm_page_cache(directory: Path) -> None:
    """Read the checkpoint once so every tool starts with it in the page cache (the first reader would
    otherwise pay the disk for all)."""
    for p in sorted(directory.iterdir()):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def run_tool(tool: str, name: str, ckpt: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    dtype = MODELS[name]["dtype"]
    env = dict(os.environ)
    if tool == "builder":
        cmd = [args.builder, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out)]
        cmd += ["-p", dtype, "-e", "cpu", "-c", str(out.parent / "builder-cache")]
        env.pop("PYTHONPATH", None)
        watch = None
    else:
        env["PYTHONPATH"] = str(args.baseline if tool == "today" else REPO)
        cmd = [args.sleb_deploy, "onnx", "--model", str(ckpt), "--out", str(out), "--dtype", dtype, "--force"]
        cmd += ["--no-validate"] if tool == "ours-novalidate" else []
        watch = out
    for stale in [out, *out.parent.glob(f".{out.name}.*")]:  # a killed run leaves its staging directory
        shutil.rmtree(stale, ignore_errors=True)
    result = measure(cmd, env, watch)
    result["output_bytes"] = dir_bytes(out)
    if (out / "export.json").is_file():
        manifest = json.loads((out / "export.json").read_text())
        result["graph_weight_bytes"] = manifest["graph"]["initializer_bytes"]
        result["validation"] = {k: manifest["validation"].get(k) for k in ("status", "max_logits", "max_kv")}
        result["validation"]["reference"] = manifest["validation"].get("reference", "in_memory")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.parent / "builder-cache", ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--tools", nargs="+", default=["ours", "ours-novalidate", "builder", "today"])
    ap.add_argument("--today-models", nargs="*", default=["qwen2.5-0.5b"], help="where today's code fits in RAM")
    ap.add_argument("--root", type=Path, default=Path("/work/venvs/ckpts"))
    ap.add_argument("--baseline", type=Path, default=Path("/work/main"), help="checkout of today's code")
    ap.add_argument("--builder", default="/work/venvs/genai/bin/python")
    ap.add_argument("--sleb-deploy", default=str(Path(sys.executable).parent / "sleb-deploy"))
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the random checkpoints")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "export_memory")
    args = ap.parse_args()
    results: dict[str, Any] = {"runs": [], "machine": machine()}
    if args.out.with_suffix(".json").is_file():
        results["runs"] = json.loads(args.out.with_suffix(".json").read_text())["runs"]
    for name in args.models:
        ckpt = args.root / name
        t0 = time.perf_counter()
        if args.keep and (ckpt / "model.safetensors.index.json").is_file():
            weight_bytes = json.loads((ckpt / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        else:
            shutil.rmtree(ckpt, ignore_errors=True)
            weight_bytes = make_checkpoint(name, ckpt)
        print(f"{name}: checkpoint {weight_bytes / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
        for tool in args.tools:
            if tool == "today" and name not in args.today_models:
                continue
            avail = wait_for_memory(int(min(3.6 * weight_bytes, 20e9)) if tool == "today" else int(1.6 * weight_bytes))
            warm_page_cache(ckpt)
            print(f"  {tool} ({avail / 1e9:.1f} GB available) ...", flush=True)
            r = run_tool(tool, name, ckpt, args.root / f"out-{name}-{tool}", args)
            r.update(model=name, tool=tool, dtype=MODELS[name]["dtype"], checkpoint_bytes=weight_bytes)
            r["available_before"] = avail
            print(f"    rc {r['rc']} peak {r['peak_rss'] / 1e9:.2f} GB wall {r['wall_s']} s", flush=True)
            results["runs"] = [x for x in results["runs"] if (x["model"], x["tool"]) != (name, tool)] + [r]
            write(results, args.out)
        if not args.keep:
            shutil.rmtree(ckpt, ignore_errors=True)


def machine() -> dict[str, Any]:
    import platform

    return {"cpus": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total, "platform": platform.platform()}


def write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "# Export memory: `sleb-deploy onnx` (streamed), today's code, onnxruntime-genai builder",
        "",
        "Random-weight checkpoints from the published configs; peak RSS of the whole process tree (50 ms polling);",
        "ratio = peak / the graph's weight bytes (`export.json` initializer_bytes; for the builder, ours for the",
        "same model). Export step = until `model.onnx` is written; validation after. Generated by",
        "`bench/export_memory.py`; machine shared with other jobs (load average per run).",
        "",
        "| model | dtype | tool | rc | wall s | wall / builder | export step s | export step / builder"
        " | peak RSS GB | ratio | export-step peak GB | validation peak GB | load avg (1 min) before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    graph = {r["model"]: r["graph_weight_bytes"] for r in results["runs"] if r.get("graph_weight_bytes")}
    builder = {r["model"]: r["wall_s"] for r in results["runs"] if r["tool"] == "builder" and r["rc"] == 0}
    for r in results["runs"]:
        g = graph.get(r["model"])
        ratio = f"{r['peak_rss'] / g:.2f}" if g else "-"
        b = builder.get(r["model"])
        # Without validation (and for the builder) the whole run is the export step.
        step = r.get("model_onnx_at_s") or (r["wall_s"] if r["tool"] in ("builder", "ours-novalidate") else None)
        wall_x = f"{r['wall_s'] / b:.2f}" if b else "-"
        step_x = f"{step / b:.2f}" if b and step else "-"
        exp = f"{r['peak_rss_until_model_onnx'] / 1e9:.2f}" if r["tool"] != "builder" else "-"
        val = r.get("peak_rss_after_model_onnx")
        val_s = f"{val / 1e9:.2f}" if val else "-"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['tool']} | {r['rc']} | {r['wall_s']} | {wall_x} | {step or '-'} "
            f"| {step_x} | {r['peak_rss'] / 1e9:.2f} "
            f"| {ratio} | {exp} | {val_s} | {r['loadavg_before'][0]} / {r['loadavg_after'][0]} |"
        )
    lines += ["", "Graph weight bytes: " + ", ".join(f"{m} {b / 1e9:.2f} GB" for m, b in graph.items()), ""]
    md = out.with_suffix(".md")
    notes = md.read_text().partition(NOTES)[2] if md.is_file() else ""  # hand-written reading, kept on rewrite
    md.write_text("\n".join(lines) + "\n" + NOTES + notes)


if __name__ == "__main__":
    main()
