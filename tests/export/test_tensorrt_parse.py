"""The exported graphs parse (and build with prefill + decode profiles) in TensorRT-RTX, when installed.

TensorRT-RTX (PyPI ``tensorrt-rtx-cu13``/``-cu12``) parses ONNX and builds engines on a CPU-only machine.
"""

from __future__ import annotations

from typing import Any

import pytest
from tiny import ExportCache


def _parse_and_build(path: str, build: bool) -> None:
    trt: Any = pytest.importorskip("tensorrt_rtx")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    parser = trt.OnnxParser(net, logger)
    ok = parser.parse_from_file(path)
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not build:
        return
    cfg = builder.create_builder_config()
    max_len = 32
    for kind in ("prefill", "decode"):
        prof = builder.create_optimization_profile()
        seq, past = ((1, 8, max_len), (0, 0, 0)) if kind == "prefill" else ((1, 1, 1), (1, 16, max_len - 1))
        bs = (1, 2, 4)
        for i in range(net.num_inputs):
            inp = net.get_input(i)
            shape = list(inp.shape)
            if inp.name in ("input_ids", "position_ids"):
                dims = [(bs[k], seq[k]) for k in range(3)]
            elif inp.name == "attention_mask":
                dims = [(bs[k], seq[k] + past[k]) for k in range(3)]
            else:
                dims = [(bs[k], shape[1], past[k], shape[3]) for k in range(3)]
            prof.set_shape(inp.name, *dims)
        cfg.add_optimization_profile(prof)
    # fp32 ONNX Attention has no dedicated TensorRT kernel: allow decomposition (fp16 builds as is).
    for i in range(net.num_layers):
        layer = net.get_layer(i)
        if layer.type in (trt.LayerType.ATTENTION_INPUT, trt.LayerType.ATTENTION_OUTPUT):
            layer.__class__ = trt.IAttentionBoundaryLayer
            layer.attention.decomposable = True
    plan = builder.build_serialized_network(net, cfg)
    assert plan is not None and plan.nbytes > 0


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_trt_rtx_parses_and_builds(exports: ExportCache, dtype: str) -> None:
    pytest.importorskip("tensorrt_rtx")
    _, path, _ = exports.get("llama", dtype=dtype)
    _parse_and_build(str(path), build=True)


@pytest.mark.parametrize("family", ["qwen3", "gemma3_text", "opt", "phi3"])
def test_trt_rtx_parses_families(exports: ExportCache, family: str) -> None:
    pytest.importorskip("tensorrt_rtx")
    _, path, _ = exports.get(family)
    _parse_and_build(str(path), build=False)
