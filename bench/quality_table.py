"""SLEB vs labelled baselines on one model at 10% and 20% of its blocks removed: perplexity (not a test).

    .venv/bin/python bench/quality_table.py [--model smollm2-135m] [--tag smollm2] [--work DIR]
        [--sleb-checkpoint export/smollm2-135m/hf-pruned]     # reuse a SLEB 20% run made with the same settings
    .venv/bin/python bench/quality_table.py --render        # rewrite the .md from the .json

Methods, each run through the prune stage exactly as `sleb-deploy prune` runs it (default calibration: 8
windows of 256 tokens of wiki-articles, seed 0; perplexity: 16 consecutive windows of 256 tokens of
wiki-summaries, the text never used for calibration):

- `sleb`: SLEB (`--metric sleb`): greedy, iterative, calibration NLL with the candidate block skipped.
- `block-influence`: ShortGPT's block influence (`--metric block-influence`), one-shot, 1 - cos(in, out).
- `last-blocks`: the k blocks just before the final one (`--blocks N-1-k,...,N-2`), the "drop the top of the
  stack" heuristic, no calibration.

k = ceil(ratio x N) (3 and 6 of the default model's 30 blocks), as `--ratio` computes it. Each run writes a
pruned checkpoint into --work (git-ignored scratch) and its sleb.json; the table takes the perplexities from
those manifests. Dense perplexity is measured by every run on the same windows; the script checks they agree.
Writes bench/results/quality_<tag>.{json,md}.

SLEB is searched once, at the largest ratio (resumable: an interrupted search continues from its last phase).
Its phases do not depend on how many blocks will go in the end (each phase removes the block whose removal
costs least, given the blocks already removed), so the smaller ratio's SLEB result is the first phases of that
run; its row is evaluated from them (`--blocks` with SLEB's first k removals). `sleb-deploy export` runs the
same 20% search with the same defaults, so its `hf-pruned` can be passed as --sleb-checkpoint (the settings
are checked against its sleb.json) instead of searching again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RATIOS = (0.1, 0.2)
METHODS = ("sleb", "block-influence", "last-blocks")
LABELS = {
    "sleb": "SLEB (greedy, iterative, calibration NLL)",
    "block-influence": "baseline: ShortGPT block influence (one-shot, 1 - cos)",
    "last-blocks": "baseline: the last k blocks before the final one",
}


# The settings a reused SLEB checkpoint must share with this script's own runs (PruneConfig defaults).
_SAME = ("calib", "windows", "seq_len", "seed", "early_barrier", "latter_barrier", "eval_text", "eval_windows")


def _prune(cfg: Any, label: str) -> None:
    from sleb_deploy.prune.stage import prune

    start = time.perf_counter()
    print(f"{label} -> {cfg.out}", flush=True)
    prune(cfg)
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)


def _row(method: str, ratio: float, out: Path, note: str = "") -> dict[str, Any]:
    from sleb_deploy.prune.manifest import SlebManifest

    sleb = SlebManifest.read(out)
    ppl = sleb.perplexity
    return {
        "method": method,
        "ratio": ratio,
        "removed": sleb.removal_order,
        "blocks_after": sleb.num_blocks_after,
        "dense_ppl": ppl["dense"]["ppl"],
        "pruned_ppl": ppl["pruned"]["ppl"],
        "eval": ppl["eval"],
        "calibration": sleb.calibration,
        "source": str(out),
        "note": note,
    }


def sleb_rows(model: str, n: int, work: Path, reuse: Path | None) -> list[dict[str, Any]]:
    """SLEB at the largest ratio (searched or reused), the smaller ratios from its first phases."""
    import math

    from sleb_deploy.prune.manifest import SlebManifest
    from sleb_deploy.prune.stage import PruneConfig

    top = max(RATIOS)
    k_top = max(1, math.ceil(top * n - 1e-9))
    defaults = PruneConfig()
    if reuse is not None:
        sleb = SlebManifest.read(reuse)
        wanted = {key: getattr(defaults, key) for key in _SAME} | {"metric": "sleb"}
        got = {key: sleb.config.get(key) for key in wanted}
        if got != wanted or len(sleb.removal_order) != k_top:
            raise SystemExit(f"{reuse} was pruned with other settings ({got}, {len(sleb.removal_order)} blocks)")
        full, note = reuse, f"reused {reuse}"
    else:
        full, note = work / f"sleb-{int(top * 100)}", ""
        if not SlebManifest.exists(full):
            cfg = PruneConfig(model=model, out=full, metric="sleb", ratio=top, resume=True)
            _prune(cfg, f"sleb {top:.0%}: searching {k_top} of {n} blocks")
    order = SlebManifest.read(full).removal_order
    rows = [_row("sleb", top, full, note)]
    for ratio in sorted(r for r in RATIOS if r != top):
        k = max(1, math.ceil(ratio * n - 1e-9))
        out = work / f"sleb-{int(ratio * 100)}"
        if not SlebManifest.exists(out):
            _prune(PruneConfig(model=model, out=out, blocks=order[:k], force=True), f"sleb {ratio:.0%}: first {k}")
        rows.append(_row("sleb", ratio, out, f"the first {k} phases of the {top:.0%} search"))
    return rows


def baseline_row(model: str, n: int, method: str, ratio: float, work: Path) -> dict[str, Any]:
    import math

    from sleb_deploy.prune.manifest import SlebManifest
    from sleb_deploy.prune.stage import PruneConfig

    k = max(1, math.ceil(ratio * n - 1e-9))
    out = work / f"{method}-{int(ratio * 100)}"
    if not SlebManifest.exists(out):
        if method == "last-blocks":
            cfg = PruneConfig(model=model, out=out, blocks=list(range(n - 1 - k, n - 1)), force=True)
        else:
            cfg = PruneConfig(model=model, out=out, metric=method, ratio=ratio, force=True)
        _prune(cfg, f"{method} {ratio:.0%}: {k} of {n} blocks")
    return _row(method, ratio, out)


def markdown(r: dict[str, Any]) -> str:
    rows = r["rows"]
    ev = rows[0]["eval"]
    out = [
        f"# Block removal on {r['model']}: SLEB vs labelled baselines",
        "",
        "Generated by `python bench/quality_table.py`; figures, not assertions. Perplexity on "
        f"{ev['source']} ({ev['windows']} x {ev['seq_len']} = {ev['tokens']} tokens, consecutive windows from the "
        "start); calibration for SLEB and block influence: "
        f"{_calib(rows)}. Lower is better.",
        "",
        f"Dense ({r['num_blocks']} blocks): perplexity **{r['dense_ppl']:.3f}**.",
        "",
        "| removed | method | blocks removed (in order) | perplexity | x dense |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        k = r["num_blocks"] - row["blocks_after"]
        label = LABELS[row["method"]] + (f" ({row['note']})" if row.get("note", "").startswith("the first") else "")
        out.append(
            f"| {row['ratio']:.0%} ({k}) | {label} | {row['removed']} | "
            f"**{_num(row['pruned_ppl'])}** | {_num(row['pruned_ppl'] / r['dense_ppl'], 2)} |"
        )
    env = r["environment"]
    reused = [row["note"] for row in rows if row.get("note", "").startswith("reused")]
    if reused:
        out += ["", f"SLEB {max(RATIOS):.0%}: {reused[0]} (the same settings, checked against its sleb.json)."]
    out += [
        "",
        "SLEB removes one block per phase, re-scoring the pruned model each time; a phase does not depend on how "
        "many blocks go in the end, so its 10% result is the first phases of its 20% search (evaluated from "
        "them, as `--blocks`). Block influence ranks all blocks once from one calibration pass; the last-blocks "
        "heuristic uses no data at all.",
        "",
        f"Environment: {env.get('processor')}, {env.get('cpu_count')} cores; {env.get('versions')}; "
        f"commit {env.get('commit')}; {env.get('time_utc')}.",
        "",
    ]
    return "\n".join(out)


def _calib(rows: list[dict[str, Any]]) -> str:
    c = next((row["calibration"] for row in rows if row["calibration"]), None)
    if not c:
        return "none"
    return f"{c['windows']} x {c['seq_len']} tokens of {c['source']} (seed {c['seed']})"


def _num(value: float, digits: int = 3) -> str:
    """Fixed point for ordinary figures, 3 significant digits in scientific notation for huge ones."""
    return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.2e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tag", default="smollm2")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "quality-work", help="pruned checkpoints go here")
    ap.add_argument("--sleb-checkpoint", type=Path, default=None, help="a SLEB 20%% run to reuse (its sleb.json)")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json")
    args = ap.parse_args()
    json_path, md_path = RESULTS / f"quality_{args.tag}.json", RESULTS / f"quality_{args.tag}.md"
    if args.render:
        md_path.write_text(markdown(json.loads(json_path.read_text())))
        return

    from sleb_deploy.artifacts import environment
    from sleb_deploy.models.load import read_num_blocks, resolve_model

    env = environment()  # before anything is written: the commit (and -dirty) of the code that runs
    n = read_num_blocks(resolve_model(args.model))
    rows = [baseline_row(args.model, n, m, r, args.work) for r in RATIOS for m in METHODS if m != "sleb"]
    rows = sorted([*sleb_rows(args.model, n, args.work, args.sleb_checkpoint), *rows],
                  key=lambda row: (row["ratio"], METHODS.index(row["method"])))  # fmt: skip
    dense = {round(row["dense_ppl"], 6) for row in rows}
    if len(dense) != 1:
        raise SystemExit(f"dense perplexity differs between runs: {sorted(dense)}; the evaluation is not fixed")
    result = {
        "model": args.model,
        "num_blocks": n,
        "dense_ppl": rows[0]["dense_ppl"],
        "rows": rows,
        "environment": env,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown(result))
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
