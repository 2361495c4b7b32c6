"""The streamed export (``export/streamed.py``) writes the same graph as the in-memory export of the same
checkpoint: same nodes, same initializers byte for byte, same I/O, across the families' quirks (fused q|k|v
and gate|up copies, Transposes the optimizer folds into views of large weights, Gemma's folded ``1 + w``
norms, fp16 casts, OPT's learned positions and biases, tied heads, external data)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from tiny import save_checkpoint, tiny_model

from sleb_deploy.export.decoder_module import ExportDecoder
from sleb_deploy.export.onnx_graph import export_decoder_onnx
from sleb_deploy.export.stage import ExportConfig, export_checkpoint
from sleb_deploy.export.streamed import empty_model, export_streamed, streamable

pytest.importorskip("onnxscript")


def graph_of(onnx_path: Path) -> dict[str, Any]:
    """Nodes (serialized, in order), initializers (dtype, dims, raw bytes) and I/O of a saved graph."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    header = onnx.load(str(onnx_path), load_external_data=False)
    return {
        "nodes": [n.SerializeToString() for n in m.graph.node],
        "inits": {
            t.name: (t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in m.graph.initializer
        },
        "io": [vi.SerializeToString() for vi in [*m.graph.input, *m.graph.output]],
        "opset": [(o.domain, o.version) for o in m.opset_import],
        "external": any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer),
    }


CASES = [
    # family, dtype, external data, config overrides (qwen2: MLP weights over the fold limit, folded Transposes)
    ("qwen2", "fp32", True, {"hidden_size": 64, "intermediate_size": 4200}),
    ("gemma3_text", "fp16", None, {"tie_word_embeddings": True}),
    ("opt", "fp32", None, {}),
    ("phi3", "fp16", True, {}),
]


@pytest.mark.parametrize(("family", "dtype", "external", "overrides"), CASES, ids=[c[0] for c in CASES])
def test_streamed_graph_equals_in_memory_export(
    family: str, dtype: str, external: bool | None, overrides: dict[str, Any], tokenizer: Any, tmp_path: Path
) -> None:
    model = tiny_model(family, 2, scaled=False, **overrides)
    ckpt = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert streamable(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec_mem = export_decoder_onnx(model, tmp_path / "mem", dtype=dtype, external_data=external)
        spec_str = export_streamed(ckpt, tmp_path / "str", dtype=dtype, external_data=external)
    assert spec_str == spec_mem
    mem, got = graph_of(tmp_path / "mem" / "model.onnx"), graph_of(tmp_path / "str" / "model.onnx")
    assert got["external"] is bool(external) and (tmp_path / "str" / "model.onnx_data").is_file() is bool(external)
    assert got["nodes"] == mem["nodes"] and got["io"] == mem["io"] and got["opset"] == mem["opset"]
    assert got["inits"].keys() == mem["inits"].keys()
    assert all(got["inits"][k] == mem["inits"][k] for k in mem["inits"])
    if family == "qwen2":  # a large weight Transposed by the optimizer (a numpy view of the placeholder) streamed
        folded = [k for k in got["inits"] if k.split("/")[-1].startswith("val_")]  # l{j}/val_N: a replicated block's
        big_folded = [k for k in folded if got["inits"][k][1] == (4200, 64)]
        assert len(big_folded) == 2


def test_streamed_model_counts_the_same_graph_bytes() -> None:
    """The streamed path decides external data on the same bytes: its weightless model (accelerate's empty
    weights, re-tied) wraps into the graph the in-memory model does (tied head copy included)."""
    from test_external_data import QWEN25_05B, meta_qwen2
    from transformers import Qwen2Config

    for tied in (True, False):
        ours = ExportDecoder(empty_model(Qwen2Config(**{**QWEN25_05B, "tie_word_embeddings": tied})))
        assert ours.initializer_bytes() == ExportDecoder(meta_qwen2(tie_word_embeddings=tied)).initializer_bytes()
    tied_model = empty_model(Qwen2Config(**QWEN25_05B))
    assert tied_model.lm_head.weight is tied_model.model.embed_tokens.weight


def test_stage_streams_local_safetensors(tokenizer: Any, tmp_path: Path) -> None:
    """The stage takes the streamed path for a local safetensors checkpoint: offloaded reference, validated."""
    ckpt = save_checkpoint(tiny_model("llama", 2, scaled=False), tokenizer, tmp_path / "ckpt")
    manifest = export_checkpoint(str(ckpt), tmp_path / "onnx", ExportConfig(dtype="fp16"))
    assert manifest.validation["reference"] == "offloaded" and manifest.validation["status"] == "passed"
    assert manifest.validation["max_logits"] <= manifest.validation["tolerance"]
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["dtype"] == "float16" and config["num_hidden_layers"] == 2
    assert (tmp_path / "onnx" / "generation_config.json").is_file()


def test_not_streamable_without_safetensors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not streamable(tmp_path) and not streamable(tmp_path / "missing")


@pytest.mark.slow
def test_default_model_streamed_equals_in_memory(default_exports: dict[str, Path], tmp_path: Path) -> None:
    """The default model (as the CLI exports it: streamed) against the in-memory export of the same checkpoint."""
    from sleb_deploy.models.load import load_model, resolve_model

    dense = default_exports["dense"]
    assert json.loads((dense / "export.json").read_text())["validation"]["reference"] == "offloaded"
    model = load_model(resolve_model(str(default_exports["dense_hf"])), dtype="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_decoder_onnx(model, tmp_path / "mem")
    mem, got = graph_of(tmp_path / "mem" / "model.onnx"), graph_of(dense / "model.onnx")
    assert got["nodes"] == mem["nodes"] and got["io"] == mem["io"]
    assert got["inits"].keys() == mem["inits"].keys()
    assert all(got["inits"][k] == mem["inits"][k] for k in mem["inits"])
