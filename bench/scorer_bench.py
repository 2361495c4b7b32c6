"""Naive vs cached SLEB scorer on the default model: block forwards and wall time, interleaved per phase.

    .venv/bin/python bench/scorer_bench.py [--windows 8 --seq-len 256 --phases 6]

Both scorers score the same alive set in every phase on the same calibration windows; the order alternates
between phases (naive first, then cached first, ...) so drift in machine speed hits both. The phase goes on
with the block both chose (they must agree). Writes bench/results/scorer.json and scorer.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sleb_deploy.artifacts import environment
from sleb_deploy.data import draw_windows
from sleb_deploy.models.adapters import adapter_for
from sleb_deploy.models.load import load_model, load_tokenizer, resolve_model
from sleb_deploy.prune.scoring import BlockCounter, CachedScorer, NaiveScorer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--phases", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="cpu", help="result file suffix, e.g. cpu or h200")
    args = ap.parse_args()
    env = environment()  # before anything is written: the commit (and -dirty) of the code that runs

    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_model(source, device=args.device)
    windows, spec = draw_windows(tokenizer, "wiki-articles", args.windows, args.seq_len, seed=0)
    blocks = list(adapter_for(model).blocks(model))
    scorers = {"naive": NaiveScorer(model, windows), "cached": CachedScorer(model, windows)}
    alive = list(range(len(blocks)))
    rows = []
    totals = {name: {"seconds": 0.0, "block_forwards": 0} for name in scorers}
    for phase in range(args.phases):
        candidates = alive[1:-1]
        order = ["naive", "cached"] if phase % 2 == 0 else ["cached", "naive"]
        scores = {}
        row: dict[str, object] = {"phase": phase, "alive": len(alive), "candidates": len(candidates)}
        for name in order:
            counter = BlockCounter(blocks)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            scores[name] = scorers[name](alive, candidates)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            counter.close()
            row[f"{name}_seconds"] = round(seconds, 3)
            row[f"{name}_block_forwards"] = counter.count
            totals[name]["seconds"] += seconds
            totals[name]["block_forwards"] += counter.count
        worst = max(abs(scores["cached"][b] - scores["naive"][b]) / abs(scores["naive"][b]) for b in candidates)
        chosen = {name: min(candidates, key=lambda b, s=s: (s[b], b)) for name, s in scores.items()}
        if chosen["naive"] != chosen["cached"]:
            raise SystemExit(f"phase {phase}: scorers disagree {chosen}")
        row.update(removed=chosen["naive"], max_rel_diff=worst)
        rows.append(row)
        alive.remove(chosen["naive"])
        print(json.dumps(row), flush=True)

    summary = {
        "naive_seconds": round(totals["naive"]["seconds"], 2),
        "cached_seconds": round(totals["cached"]["seconds"], 2),
        "speedup": round(totals["naive"]["seconds"] / totals["cached"]["seconds"], 3),
        "naive_block_forwards": totals["naive"]["block_forwards"],
        "cached_block_forwards": totals["cached"]["block_forwards"],
        "block_forward_ratio": round(totals["cached"]["block_forwards"] / totals["naive"]["block_forwards"], 4),
        "removal_order": [r["removed"] for r in rows],
        "max_rel_diff": max(float(str(r["max_rel_diff"])) for r in rows),
    }
    record = {
        "benchmark": "SLEB scorer: naive (whole model per candidate) vs cached (from the candidate's successor on)",
        "command": f"python bench/scorer_bench.py --windows {args.windows} --seq-len {args.seq_len} "
        f"--phases {args.phases} --device {args.device} --tag {args.tag}",
        "model": source.to_json(),
        "dtype": str(next(model.parameters()).dtype),
        "torch_threads": torch.get_num_threads(),
        "calibration": spec.to_json(),
        "phases": rows,
        "summary": summary,
        "environment": env,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"scorer_{args.tag}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# SLEB scorer benchmark ({args.tag})",
        "",
        f"`{record['command']}` on {source.spec} ({record['dtype']}, {record['torch_threads']} threads), "
        f"calibration {spec.windows} x {spec.seq_len} = {spec.tokens} tokens of {spec.source}.",
        "",
        "| phase | alive | candidates | naive s | cached s | naive block fwd | cached block fwd | removed |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['phase']} | {r['alive']} | {r['candidates']} | {r['naive_seconds']} | {r['cached_seconds']} | "
            f"{r['naive_block_forwards']} | {r['cached_block_forwards']} | {r['removed']} |"
            for r in rows
        ],
        f"| **total** | | | **{summary['naive_seconds']}** | **{summary['cached_seconds']}** | "
        f"**{summary['naive_block_forwards']}** | **{summary['cached_block_forwards']}** | |",
        "",
        f"Cached needs **{summary['block_forward_ratio']}x** the block forwards and is **{summary['speedup']}x** "
        f"faster; same removal order {summary['removal_order']}, per-candidate losses equal within "
        f"{summary['max_rel_diff']:.1e} relative.",
        "",
    ]
    (RESULTS / f"scorer_{args.tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
