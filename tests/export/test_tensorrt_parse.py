"""Every family's exported graph parses in TensorRT-RTX (CPU-only machines), through the builder's own code.

Building is tested in tests/engines/test_engine_build.py (llama, fp32 and fp16, both profiles); here every
other family's graph goes through ``engines.build.parse_network`` and ``graph_dims``, the first steps of
``build_engine``.
"""

from __future__ import annotations

from typing import Any

import pytest
from tiny import FAMILIES, ExportCache

pytestmark = pytest.mark.trt


@pytest.mark.parametrize("family", FAMILIES)
def test_trt_rtx_parses_every_family(exports: ExportCache, family: str) -> None:
    trt: Any = pytest.importorskip("tensorrt_rtx")
    from sleb_deploy.engines.build import graph_dims, parse_network, recording_logger

    _, path, spec = exports.get(family)
    _, net, _parser = parse_network(trt, recording_logger(trt), path)
    assert graph_dims(net, path) == (spec.num_layers, spec.num_kv_heads, spec.head_dim)
    assert [net.get_output(i).name for i in range(net.num_outputs)] == spec.output_names
