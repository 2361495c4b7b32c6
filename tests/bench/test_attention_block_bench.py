"""bench/attention_block_bench.py models our static graph's attention block: its hand-built middles must keep
the op types of the exported graphs' (both static forms), and agree in numbers with onnxruntime's
GroupQueryAttention on the same weights, positions and caches. Timings are never asserted."""

from __future__ import annotations

import pytest
from tiny import ExportCache

from bench import attention_block_bench as bench
from sleb_deploy import contract

ort = pytest.importorskip("onnxruntime")


def test_middles_match_the_exported_static_graphs(exports: ExportCache) -> None:
    graphs = {
        "op": exports.get("llama", kv_cache="static", static_attention=contract.ATTENTION_OP)[1],
        "matmul": exports.get("llama", kv_cache="static")[1],
    }
    found = bench.check_structure(graphs)
    assert found["op"]["Attention"] == 1 and found["matmul"]["Softmax"] == 1
    assert found["op"]["TensorScatter"] == found["matmul"]["TensorScatter"] == 2


def test_a_changed_graph_is_refused(exports: ExportCache) -> None:
    # the op-form middle against a MatMul-form graph: the bench must say its model is stale
    with pytest.raises(SystemExit, match="update _middle"):
        bench.check_structure({"op": exports.get("llama", kv_cache="static")[1]})


def test_forms_agree_with_group_query_attention() -> None:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    chains = {f: bench.Chain(f, 3, so, max_positions=16) for f in ("gqa", "op", "matmul")}
    diffs = bench.check_agreement(chains)  # raises above 1e-3
    assert set(diffs) == {"op", "matmul"} and max(diffs.values()) < 1e-5, diffs
