"""Tracing one block per kind and replicating it (export/replicate.py) gives the graph the full trace gives."""

from __future__ import annotations

import collections
import re
import warnings
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny import tiny_model

from sleb_deploy import contract
from sleb_deploy.export import onnx_graph, replicate
from sleb_deploy.export.decoder_module import ExportDecoder
from sleb_deploy.export.static_cache import StaticExportDecoder
from sleb_deploy.export.static_cache import example_inputs as static_example_inputs


def _trace(wrapper: ExportDecoder, kv_cache: str, rep: bool) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program, axes = onnx_graph.trace_decoder(wrapper, torch.float32, kv_cache, replicate=rep)
    proto = program.model_proto
    onnx_graph.finish_proto(proto, axes)
    return proto, axes


def _run(proto: Any, feeds: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), feeds, strict=True)}))


_FOLDED = re.compile(r"(^|/)[a-z_]+_\d+$")  # a constant the optimizer folded, named after a value (l3/add_12)


def _weights(proto: Any) -> tuple[dict[str, bytes], list[bytes]]:
    """The model's initializers by name (module paths), and the folded constants' bytes, sorted."""
    named = {i.name: bytes(i.raw_data) for i in proto.graph.initializer if not _FOLDED.search(i.name)}
    folded = sorted(bytes(i.raw_data) for i in proto.graph.initializer if _FOLDED.search(i.name))
    return named, folded


@pytest.mark.parametrize(
    ("family", "kv_cache", "last_only"),
    [("llama", "concat", True), ("gemma3_text", "concat", False), ("opt", "concat", False), ("qwen3", "static", False)],
)
def test_replicated_graph_is_the_full_trace(family: str, kv_cache: str, last_only: bool) -> None:
    """Same operators, same weights under the same names, same I/O, and bit-identical outputs on inputs with
    padding and a past; Gemma-3 has two block kinds (sliding, full), a last-logits graph a third (its last block)."""
    model = tiny_model(family, 5).eval()
    cls = StaticExportDecoder if kv_cache == contract.STATIC else ExportDecoder
    wrapper = cls(model, variant="opset23", last_logits_only=last_only).eval()
    found = replicate.short_decoder(wrapper)
    assert found is not None and found[0].num_layers < wrapper.num_layers
    rep, _ = _trace(wrapper, kv_cache, True)
    full, axes = _trace(wrapper, kv_cache, False)
    assert [n.name.split("/")[0].startswith("l") for n in rep.graph.node].count(True) > 0  # cloned blocks
    assert collections.Counter(n.op_type for n in rep.graph.node) == collections.Counter(
        n.op_type for n in full.graph.node
    )
    assert _weights(rep) == _weights(full)
    assert [i.name for i in rep.graph.input] == [i.name for i in full.graph.input]
    assert [o.name for o in rep.graph.output] == [o.name for o in full.graph.output]
    if kv_cache == contract.STATIC:
        example, _ = static_example_inputs(wrapper, torch.float32, axes, None)
    else:
        example, _ = onnx_graph._example_inputs(wrapper, torch.float32, axes)
    gen = torch.Generator().manual_seed(0)
    feeds = [t.numpy() if not t.is_floating_point() else torch.randn(t.shape, generator=gen).numpy() for t in example]
    feeds[1] = feeds[1].copy()
    feeds[1][0, :2] = 0  # left padding in row 0
    for a, b in zip(_run(rep, feeds), _run(full, feeds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_block_its_own_kind_is_traced_whole() -> None:
    """One block per kind already (a 2-block Gemma-3: sliding, full): nothing to replicate."""
    wrapper = ExportDecoder(tiny_model("gemma3_text", 2).eval()).eval()
    assert replicate.kinds(wrapper) == [0, 1]
    assert replicate.short_decoder(wrapper) is None


def test_a_block_without_its_scope_is_not_replicated() -> None:
    """The boundary is checked, not assumed: a block node whose module scope is missing (here: erased) leaves
    values crossing the boundary, and replication refuses (the export then traces every block)."""
    wrapper = ExportDecoder(tiny_model("llama", 3).eval()).eval()
    found = replicate.short_decoder(wrapper)
    assert found is not None
    short, kind, _ = found
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = onnx_graph._trace(short, torch.float32, contract.CONCAT, None, optimize=False)
    block = [n for n in program.model.graph if replicate._scope_layer(n) == 0]
    middle = block[len(block) // 2]
    del middle.metadata_props[replicate.SCOPES]
    with pytest.raises(replicate.NotReplicable):
        replicate.replicate(program.model, wrapper, kind, len(contract.TOKEN_INPUTS))
