"""Interop: Optimum's ORTModelForCausalLM loads our exported directory and generates our tokens.

Optimum needs transformers < 4.58 and we need transformers 5, so Optimum lives in its own environment
(`bash bench/optimum_env.sh` makes `.venv-optimum`; CI runs it first). This test exports here, generates with
our OrtGenerator (batch 2, left padding, greedy) and runs `optimum_check.py` in that environment on the same
directory: config.json, the tokenizer files and model.onnx must all load with old transformers, and the
tokens must be identical: for the default model (slow: its exports take minutes on 2 cores) and for a tiny
random model of every family the exporter supports.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from tiny import FAMILIES

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[2]
OPTIMUM_PYTHON = Path(os.environ.get("SLEB_OPTIMUM_VENV", ROOT / ".venv-optimum")) / "bin" / "python"
CHECK = Path(__file__).with_name("optimum_check.py")
PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived"]
MAX_NEW_TOKENS = 16

needs_optimum = pytest.mark.skipif(
    not OPTIMUM_PYTHON.is_file(),
    reason=f"no Optimum environment at {OPTIMUM_PYTHON.parent.parent}: run `bash bench/optimum_env.sh` "
    "(or point SLEB_OPTIMUM_VENV at one) to run the Optimum interop test",
)


def _case(export_dir: Path, case_path: Path) -> dict:
    """Our tokens for PROMPTS (batch 2, left padding), written where optimum_check.py reads them."""
    from transformers import AutoTokenizer

    from sleb_deploy.export.ort_generate import OrtGenerator

    tok = AutoTokenizer.from_pretrained(export_dir)
    tok.padding_side = "left"
    enc = tok(PROMPTS, return_tensors="np", padding=True)
    assert enc.attention_mask[0, 0] == 0, "the prompts should need left padding"
    gen = json.loads((export_dir / "generation_config.json").read_text())
    eos, pad = gen.get("eos_token_id"), gen.get("pad_token_id", gen.get("eos_token_id"))
    out = OrtGenerator(export_dir / "model.onnx").generate(
        enc.input_ids, enc.attention_mask, MAX_NEW_TOKENS, eos_token_id=eos, pad_token_id=pad
    )
    case = {
        "prompts": PROMPTS,
        "input_ids": enc.input_ids.tolist(),
        "attention_mask": enc.attention_mask.tolist(),
        "max_new_tokens": MAX_NEW_TOKENS,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "expected": out.tolist(),
    }
    case_path.write_text(json.dumps(case))
    return case


def _optimum_check(export_dir: Path, case_path: Path) -> subprocess.CompletedProcess[str]:
    """optimum_check.py in the Optimum environment, on our directory and case."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(OPTIMUM_PYTHON), str(CHECK), str(export_dir), str(case_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def _run_check(export_dir: Path, tmp_path: Path) -> dict:
    case = _case(export_dir, tmp_path / "case.json")
    proc = _optimum_check(export_dir, tmp_path / "case.json")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    assert proc.returncode == 0, (
        f"optimum_check.py failed (exit {proc.returncode}): {report.get('error') or proc.stderr[-3000:]}"
    )
    assert report["ok"] and report["tokens"] == case["expected"]
    return report


@pytest.mark.slow
@needs_optimum
def test_optimum_generates_our_tokens_dense(default_exports: dict[str, Path], tmp_path: Path) -> None:
    report = _run_check(default_exports["dense"], tmp_path)
    assert report["rope_theta"] == 100000.0  # what old transformers reads from our config.json
    assert report["batch"] == 2 and report["max_new_tokens"] == MAX_NEW_TOKENS


@pytest.mark.slow
@needs_optimum
def test_optimum_generates_our_tokens_pruned(default_exports: dict[str, Path], tmp_path: Path) -> None:
    from defaults import DEFAULT_PRUNED_BLOCKS

    config = json.loads((default_exports["pruned"] / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 - len(DEFAULT_PRUNED_BLOCKS)
    _run_check(default_exports["pruned"], tmp_path)


# optimum-onnx 0.1.0 (onnxruntime/modeling_decoder.py) builds the first step's empty past from
# num_key_value_heads only for model types on its list; Phi-3 and Gemma-2 are not on it, so it feeds them
# num_attention_heads heads and ONNX Runtime rejects any GQA graph of theirs (its own exports included).
OPTIMUM_MHA_ONLY = ("phi3", "gemma2")


def _tiny_export(family: str, tokenizer: object, tmp_path: Path, **overrides: object) -> Path:
    from tiny import save_checkpoint, tiny_model

    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    ckpt = save_checkpoint(tiny_model(family, num_layers=3, **overrides), tokenizer, tmp_path / "hf")
    export_checkpoint(str(ckpt), tmp_path / "onnx", ExportConfig())
    return tmp_path / "onnx"


@needs_optimum
@pytest.mark.parametrize("family", FAMILIES)
def test_optimum_generates_our_tokens_every_family(family: str, tokenizer: object, tmp_path: Path) -> None:
    """A tiny random checkpoint of each family (3 blocks, GQA, the test tokenizer) through `export_checkpoint`:
    Optimum's ORTModelForCausalLM in transformers 4.x loads the directory and generates our tokens. For the
    families Optimum drives as multi-head only, the tiny model has as many KV heads as query heads."""
    overrides = {"num_key_value_heads": 4} if family in OPTIMUM_MHA_ONLY else {}
    report = _run_check(_tiny_export(family, tokenizer, tmp_path, **overrides), tmp_path)
    assert report["batch"] == 2


@needs_optimum
def test_optimum_cannot_drive_gqa_gemma2(tokenizer: object, tmp_path: Path) -> None:
    """Documents the limitation above (fails once Optimum sizes Gemma-2's cache from its KV heads)."""
    export_dir = _tiny_export("gemma2", tokenizer, tmp_path)
    _case(export_dir, tmp_path / "case.json")
    proc = _optimum_check(export_dir, tmp_path / "case.json")
    assert proc.returncode != 0
    assert re.search(r"invalid dimensions for input: past_key_values\.\d+\.(key|value)", proc.stderr)
    assert "index: 1 Got: 4 Expected: 2" in proc.stderr  # 4 query heads fed where the graph has 2 KV heads


def test_check_script_imports_nothing_of_ours() -> None:
    """optimum_check.py runs where sleb_deploy is not installed: it must stay standalone."""
    tree = ast.parse(CHECK.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] == "sleb_deploy" for m in modules), modules
