"""Interop check, run INSIDE the Optimum environment (bench/optimum_env.sh), never in the main one.

    .venv-optimum/bin/python tests/interop/optimum_check.py EXPORT_DIR CASE.json [--report OUT.json]

Loads an exported directory the way a user of Optimum would (`ORTModelForCausalLM.from_pretrained(dir)`,
`AutoTokenizer.from_pretrained(dir)`, transformers < 4.58), greedy-generates from the prompts in CASE.json
and compares the tokens with the ones our generator (sleb_deploy.export.ort_generate.OrtGenerator) produced.

CASE.json: {"prompts": [str, ...], "input_ids": [[int]], "attention_mask": [[int]], "max_new_tokens": int,
            "expected": [[int]]}  (expected = prompt + continuation, as OrtGenerator.generate returns it;
            input_ids are left-padded).

Exit status: 0 identical tokens; 1 the tokens (or the tokenizer's ids) differ; 2 the directory does not load
(config, tokenizer or graph). One JSON line on stdout says what was compared. Imports nothing from sleb_deploy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _fail(code: int, message: str, report: dict, path: Path | None) -> int:
    report.update(ok=False, error=message)
    print(f"optimum_check: FAIL: {message}", file=sys.stderr)
    _emit(report, path)
    return code


def _emit(report: dict, path: Path | None) -> None:
    text = json.dumps(report)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


def _first_diff(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir", type=Path)
    ap.add_argument("case", type=Path)
    ap.add_argument("--report", type=Path, default=None, help="also write the JSON report here")
    args = ap.parse_args(argv)

    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoConfig, AutoTokenizer

    case = json.loads(args.case.read_text())
    report: dict = {"export_dir": str(args.export_dir), "transformers": transformers.__version__}
    try:
        import optimum.version

        report["optimum"] = optimum.version.__version__
    except ImportError:
        pass

    # 1. The config as old transformers reads it: the values the graph was exported with must survive.
    try:
        config = AutoConfig.from_pretrained(args.export_dir)
    except Exception as exc:
        return _fail(2, f"AutoConfig cannot read config.json: {type(exc).__name__}: {exc}", report, args.report)
    raw = json.loads((args.export_dir / "config.json").read_text())
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and hasattr(config, "rope_theta"):
        report["rope_theta"] = config.rope_theta
        if float(config.rope_theta) != float(rope["rope_theta"]):
            return _fail(
                2,
                f"transformers {transformers.__version__} reads rope_theta={config.rope_theta}, the export used "
                f"rope_parameters.rope_theta={rope['rope_theta']}: config.json needs a flat rope_theta",
                report,
                args.report,
            )

    # 2. The tokenizer saved next to the graph, and the prompts' ids it gives (left padding, as ours).
    try:
        tok = AutoTokenizer.from_pretrained(args.export_dir)
    except Exception as exc:
        return _fail(2, f"AutoTokenizer cannot load the directory: {type(exc).__name__}: {exc}", report, args.report)
    report["tokenizer"] = type(tok).__name__
    if case.get("prompts"):
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        enc = tok(case["prompts"], return_tensors="pt", padding=True)
        if enc.input_ids.tolist() != case["input_ids"] or enc.attention_mask.tolist() != case["attention_mask"]:
            return _fail(
                1,
                f"the directory's tokenizer gives other ids: {enc.input_ids.tolist()} vs {case['input_ids']}",
                report,
                args.report,
            )

    # 3. The graph through Optimum's ORTModelForCausalLM, greedy.
    try:
        model = ORTModelForCausalLM.from_pretrained(args.export_dir, use_cache=True, use_io_binding=False)
    except Exception as exc:
        return _fail(2, f"ORTModelForCausalLM cannot load it: {type(exc).__name__}: {exc}", report, args.report)
    input_ids = torch.tensor(case["input_ids"], dtype=torch.long)
    attention_mask = torch.tensor(case["attention_mask"], dtype=torch.long)
    start = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=int(case["max_new_tokens"]),
        do_sample=False,
        num_beams=1,
        pad_token_id=case.get("pad_token_id", tok.pad_token_id),
        eos_token_id=case.get("eos_token_id"),
    )
    report["generate_s"] = round(time.perf_counter() - start, 3)
    got = out.tolist()
    expected = case["expected"]
    report.update(tokens=got, max_new_tokens=int(case["max_new_tokens"]), batch=len(expected))
    if got != expected:
        lines = []
        for row, (g, e) in enumerate(zip(got, expected, strict=False)):
            if g != e:
                i = _first_diff(g, e)
                lines.append(
                    f"row {row}: first difference at position {i}: optimum {g[i : i + 8]} vs ours {e[i : i + 8]}"
                )
        if len(got) != len(expected):
            lines.append(f"batch {len(got)} vs {len(expected)}")
        return _fail(1, "Optimum generated other tokens than our generator; " + "; ".join(lines), report, args.report)
    report["ok"] = True
    print(
        f"optimum_check: OK: {len(got)} rows x {int(case['max_new_tokens'])} new tokens identical "
        f"(transformers {transformers.__version__})",
        file=sys.stderr,
    )
    _emit(report, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
