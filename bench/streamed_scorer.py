"""Streamed vs cached SLEB scorer through `sleb-deploy prune`: peak RSS under a `--max-memory` below the weights.

    .venv/bin/python bench/streamed_scorer.py [--config llama-3.2-1b --budget 3GiB --windows 2 --seq-len 64]

Builds a random-weight checkpoint (fp32, safetensors, written tensor by tensor) from a real model's config under
``--ckpt-dir`` (outside the repository; deleted at the end unless ``--keep``), with the default model's tokenizer
(its ids fit the vocabulary). Then runs the whole prune stage twice, each in its own process, order alternating
over ``--rounds``: ``--max-memory <budget>`` (``auto`` must pick the streamed scorer: blocks read from disk,
perplexity streamed, the pruned checkpoint written tensor by tensor) and ``--scorer cached`` (the whole model
loaded). Peak RSS is the child's ``ru_maxrss``. Checks that the streamed run stays within the budget and that
both remove the same blocks with the same per-candidate losses. Writes bench/results/streamed_scorer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sleb_deploy.artifacts import environment
from sleb_deploy.prune.plan import format_bytes, parse_memory

RESULTS = Path(__file__).parent / "results"

# Published config.json fields (architecture only) of the models this bench can imitate.
CONFIGS: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": {  # meta-llama/Llama-3.2-1B
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
    },
    "qwen2.5-0.5b": {  # Qwen/Qwen2.5-0.5B
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "rope_theta": 1000000.0, "bos_token_id": 151643,
        "eos_token_id": 151643,
    },
}  # fmt: skip

CHILD = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); "
    "print('CHILD', r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "
    "time.perf_counter() - t, file=sys.stderr)"
)


def build_checkpoint(name: str, directory: Path, shard_bytes: int = 1 << 30) -> int:
    """Random N(0, 0.02) fp32 weights (norms 1) for the config ``name``, written shard by shard; bytes written."""
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from sleb_deploy.models.load import resolve_model

    fields = dict(CONFIGS[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    zoo = Path(resolve_model("smollm2-135m").location)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(zoo / f, directory / f)
    tied = config.tie_word_embeddings
    names = [(n, p.shape) for n, p in model.state_dict().items() if not (tied and n == "lm_head.weight")]
    gen = torch.Generator().manual_seed(0)
    shard: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for i, (n, shape) in enumerate(names):
        t = torch.ones(shape) if len(shape) == 1 else torch.empty(shape).normal_(0.0, 0.02, generator=gen)
        shard[n] = t
        total += t.numel() * 4
        if sum(v.numel() * 4 for v in shard.values()) >= shard_bytes or i == len(names) - 1:
            fname = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(directory / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
            shard = {}
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return total


def run_prune(ckpt: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-c", "from sleb_deploy.cli import main; main()", "prune", "--model", str(ckpt),
           "--out", str(out), "--force",
           "--windows", str(args.windows), "--seq-len", str(args.seq_len), "--eval-windows", str(args.eval_windows),
           "--remove", str(args.remove), "--json", *extra]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", CHILD, *cmd], capture_output=True, text=True)
    child = [line for line in proc.stderr.splitlines() if line.startswith("CHILD ")]
    if not child or child[-1].split()[1] != "0":
        raise SystemExit(f"prune failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    _, _, rss, seconds = child[-1].split()
    manifest = json.loads(proc.stdout)
    return {"command": " ".join(["sleb-deploy", *cmd[3:]]), "peak_rss_bytes": int(rss),
            "wall_seconds": round(float(seconds), 1), "manifest": manifest}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="llama-3.2-1b", choices=sorted(CONFIGS))
    ap.add_argument("--budget", default="3GiB")
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--eval-windows", type=int, default=2)
    ap.add_argument("--remove", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--ckpt-dir", type=Path, default=Path("/work/venvs/ckpts-stream"))
    ap.add_argument("--keep", action="store_true", help="keep the random checkpoint and the pruned outputs")
    args = ap.parse_args()
    env = environment()
    budget = parse_memory(args.budget)
    ckpt = args.ckpt_dir / f"{args.config}-random-fp32"
    started = time.perf_counter()
    weights = build_checkpoint(args.config, ckpt)
    print(f"checkpoint {ckpt}: {format_bytes(weights)} of weights in {time.perf_counter() - started:.0f} s", flush=True)
    if weights <= budget:
        raise SystemExit(f"--budget {args.budget} is not below the weights ({format_bytes(weights)})")
    variants = {"streamed": ["--max-memory", args.budget], "cached": ["--scorer", "cached"]}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        for r in range(args.rounds):
            for name in list(variants) if r % 2 == 0 else list(variants)[::-1]:
                run = run_prune(ckpt, args.ckpt_dir / f"out-{name}", args, variants[name])
                runs[name].append(run)
                print(f"{name}: peak RSS {format_bytes(run['peak_rss_bytes'])}, {run['wall_seconds']} s", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.ckpt_dir, ignore_errors=True)

    s, c = runs["streamed"][0]["manifest"], runs["cached"][0]["manifest"]
    if s["method"]["scorer"] != "streamed" or c["method"]["scorer"] != "cached":
        raise SystemExit(f"scorers used: {s['method']['scorer']}, {c['method']['scorer']}")
    same_order = s["removal_order"] == c["removal_order"]
    rel = max(
        abs(ps["scores"][b] - pc["scores"][b]) / abs(pc["scores"][b])
        for ps, pc in zip(s["phases"], c["phases"], strict=True)
        for b in pc["scores"]
    )
    peak = {name: max(r["peak_rss_bytes"] for r in rs) for name, rs in runs.items()}
    wall = {name: min(r["wall_seconds"] for r in rs) for name, rs in runs.items()}
    summary = {
        "weights_bytes": weights,
        "budget_bytes": budget,
        "streamed_peak_rss_bytes": peak["streamed"],
        "cached_peak_rss_bytes": peak["cached"],
        "streamed_within_budget": peak["streamed"] <= budget,
        "streamed_rss_over_weights": round(peak["streamed"] / weights, 3),
        "plan_peak_bytes": s["memory_plan"]["peak_bytes"],
        "streamed_wall_seconds": wall["streamed"],
        "cached_wall_seconds": wall["cached"],
        "streamed_over_cached_wall": round(wall["streamed"] / wall["cached"], 3),
        "same_removal_order": same_order,
        "removal_order": s["removal_order"],
        "max_rel_score_diff": rel,
        "block_loads": s["cost"]["block_loads"],
        "block_forwards": {"streamed": s["cost"]["block_forwards"], "cached": c["cost"]["block_forwards"]},
        "perplexity_pruned": {"streamed": s["perplexity"]["pruned"]["ppl"], "cached": c["perplexity"]["pruned"]["ppl"]},
    }
    for rs in runs.values():
        for r in rs:
            r["manifest"] = {k: r["manifest"][k] for k in ("method", "memory_plan", "cost", "removal_order")}
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = (float("nan"),) * 3
    record = {
        "benchmark": "SLEB search under --max-memory below the weights: streamed (auto) vs cached, whole prune stage",
        "command": f"python bench/streamed_scorer.py --config {args.config} --budget {args.budget} "
        f"--windows {args.windows} --seq-len {args.seq_len} --eval-windows {args.eval_windows} "
        f"--remove {args.remove} --rounds {args.rounds}",
        "model": {"config": args.config, **CONFIGS[args.config], "weights": "random N(0, 0.02), fp32, safetensors"},
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": [round(x, 2) for x in load],
        "runs": runs,
        "summary": summary,
        "environment": env,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "streamed_scorer.json").write_text(json.dumps(record, indent=2) + "\n")
    plan = s["memory_plan"]
    lines = [
        "# Streamed SLEB scorer under a memory budget below the weights",
        "",
        f"`{record['command']}`: a random-weight fp32 checkpoint of **{args.config}**'s config "
        f"({format_bytes(weights)} of weights), the whole `sleb-deploy prune` stage (calibration {args.windows} x "
        f"{args.seq_len} tokens, {args.remove} phases, perplexity on {args.eval_windows} windows, the pruned "
        f"checkpoint written), each run in its own process; peak RSS = the process's `ru_maxrss`. "
        f"{record['torch_threads']} torch threads, load average {record['load_average_at_end']} at the end "
        "(a shared machine: wall times are inflated, RSS is not).",
        "",
        "| run | scorer | peak RSS | wall s | block loads | block forwards |",
        "|---|---|---|---|---|---|",
        *[
            f"| `--max-memory {args.budget}` | {r['manifest']['method']['scorer']} | "
            f"{format_bytes(r['peak_rss_bytes'])} | {r['wall_seconds']} | "
            f"{r['manifest']['cost'].get('block_loads', 0)} | "
            f"{r['manifest']['cost']['block_forwards']} |"
            for r in runs["streamed"]
        ],
        *[
            f"| `--scorer cached` | cached | {format_bytes(r['peak_rss_bytes'])} | {r['wall_seconds']} | 0 | "
            f"{r['manifest']['cost']['block_forwards']} |"
            for r in runs["cached"]
        ],
        "",
        f"- Streamed peak RSS **{format_bytes(peak['streamed'])}** within the **{args.budget}** budget: "
        f"**{summary['streamed_within_budget']}** ({summary['streamed_rss_over_weights']}x the weights; the plan "
        f"said ~{format_bytes(plan['peak_bytes'])}). Cached: {format_bytes(peak['cached'])}.",
        f"- Same removal order: **{same_order}** ({summary['removal_order']}); per-candidate losses equal within "
        f"{rel:.1e} relative.",
        f"- Wall time streamed / cached: **{summary['streamed_over_cached_wall']}** "
        f"({wall['streamed']} s vs {wall['cached']} s).",
        "",
        "The printed plan (`memory_plan` in sleb.json):",
        "",
        "```",
        *[f"{k}: {v}" for k, v in plan.items()],
        "```",
        "",
    ]
    (RESULTS / "streamed_scorer.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if not (summary["streamed_within_budget"] and same_order):
        raise SystemExit("the streamed run exceeded the budget or disagreed with the cached one")


if __name__ == "__main__":
    main()
