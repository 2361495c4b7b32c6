"""The static KV-cache graph (``--kv-cache static``): numerics vs HF with a buffer longer than the sequence,
tokens identical to the concatenating graph and to transformers' greedy ``generate`` for every family (left
and right padding), the graph's I/O, the CLI, bad input, and a TensorRT-RTX build with its profiles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny import FAMILIES, VOCAB, ExportCache, tiny_model
from typer.testing import CliRunner

from sleb_deploy import contract
from sleb_deploy.errors import UserInputError

PROMPT, NEW = 6, 6


def _right_padded(ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same prompts with the padding moved to the end of each row."""
    rid, rmask = np.zeros_like(ids), np.zeros_like(mask)
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        rid[r, :n], rmask[r, :n] = ids[r, ids.shape[1] - n :], 1
    return rid, rmask


@pytest.mark.parametrize("family", FAMILIES)
def test_static_matches_hf_and_concat(exports: ExportCache, family: str) -> None:
    from sleb_deploy.export.ort_generate import OrtGenerator
    from sleb_deploy.export.validate import make_inputs
    from sleb_deploy.export.validate_static import validate_static_against_torch

    model, concat_path, _ = exports.get(family)
    _, path, spec = exports.get(family, kv_cache="static")
    assert spec.kv_cache == "static" and spec.opset == 24 and spec.max_cache_len is None
    assert spec.attention == contract.ATTENTION_MATMUL  # symbolic buffer length: the MatMul form

    res = validate_static_against_torch(model, path, batch=2, prompt_len=7, decode_steps=2, extra_slots=5)
    assert res["max_logits"] < 1e-4 and res["max_kv"] < 1e-4, res
    assert res["present_shapes_ok"] and res["cache_len"] == 14
    assert [s["present_len"] for s in res["steps"]] == [7, 8, 9]

    ids, mask = make_inputs(3, PROMPT, VOCAB, left_pad=True, seed=3)
    with torch.no_grad():
        ref = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None
        ).numpy()
    gen = OrtGenerator(path)
    assert gen.kv_cache == "static"
    left = gen.generate(ids.numpy(), mask.numpy(), max_new_tokens=NEW, max_cache_len=PROMPT + NEW + 7)
    concat = OrtGenerator(concat_path).generate(ids.numpy(), mask.numpy(), max_new_tokens=NEW)
    np.testing.assert_array_equal(left, ref)
    np.testing.assert_array_equal(concat, ref)
    rid, rmask = _right_padded(ids.numpy(), mask.numpy())
    right = gen.generate(rid, rmask, max_new_tokens=NEW)  # buffer: exactly prompt + new tokens
    np.testing.assert_array_equal(right[:, PROMPT:], ref[:, PROMPT:])


def test_static_graph_io_and_ops(exports: ExportCache) -> None:
    import onnx

    from sleb_deploy.export.onnx_graph import check_portable, io_signature

    _, path, spec = exports.get("llama", kv_cache="static")
    sig = io_signature(path)
    rows = {r["name"]: r for r in sig["inputs"] + sig["outputs"]}
    assert sig["opset"] == 24
    assert spec.input_names == contract.input_names(3, "static") == [r["name"] for r in sig["inputs"]]
    assert rows["write_indices"] == {"name": "write_indices", "elem_type": "int64", "dims": ["batch_size"]}
    assert rows["attention_mask"]["dims"] == ["batch_size", "max_cache_len"]
    for name in ("past_key_values.0.key", "present.2.value"):
        assert rows[name]["dims"] == ["batch_size", 2, "max_cache_len", 8]
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("TensorScatter") == 6 and ops.count("Attention") == 0 and ops.count("Softmax") == 3
    caches = set(contract.past_names(3))
    assert not [n for n in proto.graph.node if n.op_type == "Concat" and caches & set(n.input)]
    scatter = [n for n in proto.graph.node if n.op_type == "TensorScatter"]
    assert all(not n.attribute or n.attribute[0].s in (b"", b"linear") for n in scatter)  # TensorRT: linear only
    assert check_portable(proto) == []


def test_matmul_form_runs_matrix_vector_gemms(exports: ExportCache, tmp_path: Path) -> None:
    """The MatMul form's point (static_cache docstring): ONNX Runtime fuses Kᵀ into ``FusedMatMul`` (no
    transposed copy of the buffer) with alpha 1 (the query is pre-scaled), so a decode step's one-row GEMMs
    take MLAS's matrix-vector kernels; and the query heads of a KV head broadcast (no K/V repeat)."""
    import onnx
    import onnxruntime as ort

    _, path, _ = exports.get("llama", kv_cache="static")
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    fused = [n for n in nodes if n.op_type == "FusedMatMul"]
    assert len(fused) == 3  # Q·Kᵀ of each layer
    for n in fused:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["transB"] == 1 and attrs["alpha"] == 1.0 and not attrs.get("transA"), attrs
    assert not [n for n in nodes if n.op_type in ("Expand", "Tile")]


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_attention_scale_folded_into_query_rotary(exports: ExportCache, family: str) -> None:
    """Every graph whose attention runs at scale 1 gets its query pre-scaled: with a rotary over the whole head
    (llama) through the query's own tables (cos/sin times the scale, ``decoder_module.RopeTables``), no ``Mul``
    after its ``RotaryEmbedding``; with a partial rotary (Phi-3) the tables are shared and a ``Mul`` scales the
    rotated query. The ``Attention`` op (concatenating graph, static ``op`` form) then has ``scale`` 1. The
    numerics are the families' HF comparisons above and in test_onnx_export.py."""
    import onnx

    for options in ({}, {"kv_cache": "static"}, {"kv_cache": "static", "static_attention": contract.ATTENTION_OP}):
        _, path, _ = exports.get(family, **options)
        nodes = onnx.load(str(path)).graph.node
        ropes = [n for n in nodes if n.op_type == "RotaryEmbedding"]
        assert len(ropes) == 6, options  # q and k of 3 layers
        mul_inputs = {i for n in nodes if n.op_type == "Mul" for i in n.input}
        scaled_after = [r for r in ropes if r.output[0] in mul_inputs]
        tables = {tuple(r.input[1:3]) for r in ropes}
        if family == "llama":
            assert len(tables) == 2 and not scaled_after, options
        else:
            assert len(tables) == 1 and len(scaled_after) == 3, options
        for n in nodes:
            if n.op_type == "Attention":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                assert attrs["scale"] == 1.0, (options, attrs)


@pytest.mark.parametrize("family", ["opt", "phi3", "gemma2", "gemma3_text"])
def test_attention_op_form_matches(exports: ExportCache, family: str) -> None:
    """The ``op`` form (what a fixed ``--max-cache-len`` gets): the same numerics, and the same tokens as the
    MatMul form (checked against transformers above), left and right padding. The families cover the
    query's pre-scaling (OPT), partial rotary (Phi-3), softcap and sliding windows (Gemma-2/3)."""
    import onnx

    from sleb_deploy.export.ort_generate import OrtGenerator
    from sleb_deploy.export.validate import make_inputs
    from sleb_deploy.export.validate_static import validate_static_against_torch

    model, path, spec = exports.get(family, kv_cache="static", static_attention=contract.ATTENTION_OP)
    assert spec.attention == contract.ATTENTION_OP
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Attention") == 3
    res = validate_static_against_torch(model, path, batch=2, prompt_len=7, decode_steps=2, extra_slots=5)
    assert res["max_logits"] < 1e-4 and res["max_kv"] < 1e-4, res
    ids, mask = (t.numpy() for t in make_inputs(3, PROMPT, VOCAB, left_pad=True, seed=3))
    op, mm = OrtGenerator(path), OrtGenerator(exports.get(family, kv_cache="static")[1])
    np.testing.assert_array_equal(op.generate(ids, mask, NEW, max_cache_len=20), mm.generate(ids, mask, NEW))
    rid, rmask = _right_padded(ids, mask)
    np.testing.assert_array_equal(op.generate(rid, rmask, NEW), mm.generate(rid, rmask, NEW))


def test_bad_input_is_refused_before_running(exports: ExportCache) -> None:
    from sleb_deploy.export.ort_generate import OrtGenerator

    _, path, _ = exports.get("llama", kv_cache="static")
    gen = OrtGenerator(path)
    ids, mask = np.ones((2, PROMPT), np.int64), np.ones((2, PROMPT), np.int64)
    with pytest.raises(UserInputError, match="fewer than the 11"):
        gen.generate(ids, mask, max_new_tokens=NEW, max_cache_len=PROMPT + NEW - 2)
    cache = gen.cache(2, 8)
    buf = np.ones((2, 8), np.int64)
    with pytest.raises(UserInputError, match="slot 7, outside the 8-slot"):
        gen.run_static(ids[:, :2], buf, np.zeros((2, 2), np.int64), np.array([0, 7]), cache)
    with pytest.raises(UserInputError, match="cover the cache buffer"):
        gen.run_static(ids[:, :1], buf[:, :4], np.zeros((2, 1), np.int64), np.array([0, 0]), cache)
    with pytest.raises(UserInputError, match="concatenating"):
        OrtGenerator(exports.get("llama")[1]).cache(2, 8)


def test_last_logits_only_static(exports: ExportCache) -> None:
    from sleb_deploy.export.ort_generate import OrtGenerator
    from sleb_deploy.export.validate import make_inputs
    from sleb_deploy.export.validate_static import validate_static_against_torch

    model, path, _ = exports.get("llama", last=True, kv_cache="static")
    res = validate_static_against_torch(model, path)
    assert res["max_logits"] < 1e-4 and res["max_kv"] < 1e-4 and res["present_shapes_ok"], res
    ids, mask = make_inputs(2, PROMPT, VOCAB, left_pad=True, seed=4)
    gen = OrtGenerator(path)
    full = OrtGenerator(exports.get("llama", kv_cache="static")[1])
    np.testing.assert_array_equal(
        gen.generate(ids.numpy(), mask.numpy(), NEW), full.generate(ids.numpy(), mask.numpy(), NEW)
    )
    with pytest.raises(UserInputError, match="pad prompts left"):
        gen.generate(*_right_padded(ids.numpy(), mask.numpy()), max_new_tokens=NEW)


def test_export_options_are_checked(tmp_path: Path) -> None:
    from sleb_deploy.export.onnx_graph import export_decoder_onnx

    model = tiny_model("llama", 2, scaled=False)
    with pytest.raises(UserInputError, match="needs --variant opset23"):
        export_decoder_onnx(model, tmp_path / "a", variant="opset18", kv_cache="static")
    with pytest.raises(UserInputError, match="static only"):
        export_decoder_onnx(model, tmp_path / "b", max_cache_len=64)
    with pytest.raises(UserInputError, match="static only"):
        export_decoder_onnx(model, tmp_path / "c", static_attention="op")
    with pytest.raises(UserInputError, match="unknown static attention"):
        export_decoder_onnx(model, tmp_path / "d", kv_cache="static", static_attention="flash")
    assert not [p for p in "abcd" if (tmp_path / p).exists()]
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    with pytest.raises(UserInputError, match="static only"):  # refused before any model is loaded
        export_checkpoint("no-such-model", tmp_path / "e", ExportConfig(static_attention="matmul"))


def test_cli_fixed_length_static_export(llama_dir: Path, tmp_path: Path) -> None:
    """``onnx --kv-cache static --max-cache-len``: validated, export.json carries the contract, and the
    generator refuses a request that does not fit the fixed buffer."""
    from sleb_deploy.cli import app
    from sleb_deploy.export.ort_generate import OrtGenerator

    out = tmp_path / "onnx"
    args = ["onnx", "--model", str(llama_dir), "--out", str(out), "--kv-cache", "static", "--max-cache-len", "24"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    graph = json.loads((out / "export.json").read_text())["graph"]
    assert (graph["kv_cache"], graph["max_cache_len"], graph["opset"]) == ("static", 24, 24)
    assert graph["attention"] == "op"  # a fixed length is for TensorRT: the Attention op
    assert graph["runtimes"] == ["onnxruntime", "tensorrt"]
    validation = json.loads(result.stdout)["validation"]
    assert validation["status"] == "passed" and validation["cache_len"] == 24
    gen = OrtGenerator(out / "model.onnx")
    assert gen.max_cache_len == 24
    with pytest.raises(UserInputError, match="24 slots"):
        gen.generate(np.ones((1, 20), np.int64), np.ones((1, 20), np.int64), max_new_tokens=8)


@pytest.mark.trt
def test_trt_rtx_builds_static_variant(tmp_path: Path) -> None:
    trt: Any = pytest.importorskip("tensorrt_rtx")
    from sleb_deploy.engines import BuildConfig, build_engine
    from sleb_deploy.engines.build import parse_network, recording_logger
    from sleb_deploy.export.onnx_graph import export_decoder_onnx

    model = tiny_model("llama", 2, scaled=False)
    export_decoder_onnx(model, tmp_path / "sym", kv_cache="static")
    cfg = BuildConfig(max_batch=2, max_input_len=16, max_context_len=32)
    with pytest.raises(UserInputError, match="--max-cache-len"):
        build_engine(tmp_path / "sym", tmp_path / "e0", cfg, backend="tensorrt_rtx")
    spec = export_decoder_onnx(model, tmp_path / "fixed", kv_cache="static", max_cache_len=32)
    assert spec.attention == contract.ATTENTION_OP  # a fixed length: the Attention op, TensorRT's fused layer
    _, net, _parser = parse_network(trt, recording_logger(trt), tmp_path / "fixed" / "model.onnx")
    kinds = {net.get_layer(i).type.name for i in range(net.num_layers)}
    assert "KV_CACHE_UPDATE" in kinds  # TensorScatter becomes TensorRT's in-place cache update layer
    assert "ATTENTION_INPUT" in kinds and "SOFTMAX" not in kinds
    manifest = build_engine(tmp_path / "fixed", tmp_path / "engine", cfg, backend="tensorrt_rtx")
    assert manifest.plan_bytes > 0 and manifest.build_options["kv_cache"] == "static"
    assert manifest.build_options["max_cache_len"] == 32
    prefill, decode = (p["shapes"] for p in manifest.profiles)
    assert prefill["input_ids"]["max"] == [2, 16] and decode["input_ids"]["max"] == [2, 1]
    assert prefill["past_key_values.0.key"]["min"] == [1, 2, 32, 8] == decode["past_key_values.0.key"]["min"]
    assert decode["write_indices"]["max"] == [2] and decode["attention_mask"]["max"] == [2, 32]
    io = {r["name"]: r["dims"] for r in manifest.io}
    assert io["present.1.value"] == ["batch_size", 2, 32, 8] and io["write_indices"] == ["batch_size"]
    with pytest.raises(UserInputError, match="exceeds the graph's 32-slot"):
        build_engine(tmp_path / "fixed", tmp_path / "e1", BuildConfig(max_input_len=48, max_context_len=64))
