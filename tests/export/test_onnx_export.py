"""ONNX export: numerics vs HF (prefill + chained decode, left padding), portability, I/O golden files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import FAMILIES, VOCAB, ExportCache, tiny_model

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("family", FAMILIES)
def test_ort_matches_torch_fp32(exports: ExportCache, family: str) -> None:
    from sleb_deploy.export.validate import validate_against_torch

    model, path, spec = exports.get(family)
    res = validate_against_torch(model, path, batch=2, prompt_len=7, decode_steps=2, left_pad=True)
    assert res["max_logits"] < 1e-4, res
    assert res["max_kv"] < 1e-4, res
    assert res["present_shapes_ok"]
    assert [s["present_len"] for s in res["steps"]] == [7, 8, 9]
    assert spec.num_layers == 3 and spec.model_type == family


def test_opset18_variant_matches(exports: ExportCache) -> None:
    from sleb_deploy.export.validate import validate_against_torch

    model, path, spec = exports.get("llama", "opset18")
    assert spec.opset == 18
    res = validate_against_torch(model, path)
    assert res["max_logits"] < 1e-4 and res["max_kv"] < 1e-4, res


def test_fp16_llama(exports: ExportCache) -> None:
    from sleb_deploy.export.validate import validate_against_torch

    _, path, _ = exports.get("llama", dtype="fp16")
    res = validate_against_torch(tiny_model("llama", 3, scaled=False).half(), path)
    assert res["max_logits"] < 2e-2 and res["max_kv"] < 2e-2, res


@pytest.mark.parametrize(
    ("family", "variant"), [("llama", "opset23"), ("llama", "opset18"), ("gemma2", "opset23"), ("opt", "opset23")]
)
def test_last_logits_only(exports: ExportCache, family: str, variant: str) -> None:
    """The last block runs its queries, MLP and residual for the last position only (Attention op, the
    MatMul path Gemma-2's softcap takes, OPT's wiring); its presents still hold every position."""
    from sleb_deploy.export.onnx_graph import io_signature
    from sleb_deploy.export.validate import validate_against_torch

    model, path, _ = exports.get(family, variant, last=True)
    sig = io_signature(path)
    assert sig["outputs"][0]["dims"] == ["batch_size", 1, VOCAB]
    res = validate_against_torch(model, path, batch=2, prompt_len=7, decode_steps=2, left_pad=True)
    assert res["max_logits"] < 1e-4 and res["max_kv"] < 1e-4, res
    assert [s["present_len"] for s in res["steps"]] == [7, 8, 9]


@pytest.mark.parametrize("family", FAMILIES)
def test_portable_graph(exports: ExportCache, family: str) -> None:
    import onnx

    from sleb_deploy.export.onnx_graph import check_portable

    _, path, _ = exports.get(family)
    proto = onnx.load(str(path))
    assert check_portable(proto) == []
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"If", "Loop", "Scan"}
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert all(len(n.output) == 1 for n in proto.graph.node if n.op_type == "Attention")


@pytest.mark.parametrize("family", FAMILIES)
def test_io_signature_golden(exports: ExportCache, family: str, request: pytest.FixtureRequest) -> None:
    """The graph's I/O against a committed golden file. A missing golden is a failure; rewrite the goldens
    only on purpose, with ``pytest --regen-goldens`` (and review the diff)."""
    from sleb_deploy.export.onnx_graph import io_signature

    _, path, spec = exports.get(family)
    sig = io_signature(path)
    golden = GOLDEN / f"{family}.json"
    if request.config.getoption("--regen-goldens"):
        golden.write_text(json.dumps(sig, indent=1) + "\n")
    assert golden.is_file(), f"{golden} is missing: run pytest --regen-goldens once and commit it"
    assert sig == json.loads(golden.read_text())
    names = [i["name"] for i in sig["inputs"]]
    assert names == spec.input_names
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert sig["inputs"][1]["dims"] == ["batch_size", "past_sequence_length + sequence_length"]
    assert sig["inputs"][3]["dims"][2] == "past_sequence_length"
    assert sig["outputs"][1]["dims"][2] == "past_sequence_length + sequence_length"


def test_external_data(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from sleb_deploy.export.onnx_graph import export_decoder_onnx
    from sleb_deploy.export.validate import validate_against_torch

    model = tiny_model("llama", 3, scaled=False)
    spec = export_decoder_onnx(model, tmp_path, external_data=True)
    assert spec.external_data and (tmp_path / "model.onnx_data").exists()
    res = validate_against_torch(model, tmp_path / "model.onnx", decode_steps=1)
    assert res["max_logits"] < 1e-4


def test_unsupported_model_type(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from sleb_deploy.errors import UnsupportedModelError
    from sleb_deploy.export.onnx_graph import export_decoder_onnx

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    out = tmp_path / "never"
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        export_decoder_onnx(model, out)
    assert not out.exists()


@pytest.mark.parametrize("family", ["mistral", "phi3"])
def test_sliding_window_on_every_layer(tmp_path: Path, family: str) -> None:
    """Mistral and Phi-3 apply ``sliding_window`` to every layer (no ``layer_types``). A window of 4 is shorter
    than the 7-token prompt + 2 decode steps, so a graph that ignored it would differ from HF."""
    from sleb_deploy.export.onnx_graph import export_decoder_onnx
    from sleb_deploy.export.validate import validate_against_torch

    model = tiny_model(family, 3, scaled=False, sliding_window=4)
    export_decoder_onnx(model, tmp_path)
    res = validate_against_torch(model, tmp_path / "model.onnx", batch=2, prompt_len=7, decode_steps=2)
    assert res["max_logits"] < 1e-4 and res["max_kv"] < 1e-4, res
    without = tiny_model(family, 3, scaled=False)  # the same weights, no window: other logits
    ids = torch.randint(3, VOCAB, (1, 9))
    assert not np.allclose(model(input_ids=ids).logits.detach(), without(input_ids=ids).logits.detach(), atol=1e-4)


def test_ort_generator_matches_hf_generate(exports: ExportCache) -> None:
    from sleb_deploy.export.ort_generate import OrtGenerator
    from sleb_deploy.export.validate import make_inputs

    model, path, _ = exports.get("llama")
    ids, mask = make_inputs(2, 6, VOCAB, left_pad=True, seed=3)
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    got = OrtGenerator(path).generate(ids.numpy(), mask.numpy(), max_new_tokens=5)
    np.testing.assert_array_equal(got, ref.numpy())
