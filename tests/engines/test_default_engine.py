"""The default model's pruned export built into an engine with the default build options (TensorRT-RTX, CPU),
and its Triton ``tensorrt_plan`` repository parsed into Triton's ``ModelConfig``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleb_deploy.contract import input_names, output_names


@pytest.mark.slow
@pytest.mark.trt
def test_default_model_engine_serves_the_default_sweep(default_exports: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    from test_engine_triton import parse_config

    from sleb_deploy.engines import BuildConfig, build_engine
    from sleb_deploy.engines.limits import EngineLimits
    from sleb_deploy.engines.triton import write_triton_repository

    built = build_engine(default_exports["pruned"], tmp_path / "engine", BuildConfig())
    assert built.directory is not None
    limits = EngineLimits.from_manifest(built)
    assert (limits.max_batch, limits.max_input_len, limits.max_context_len) == (16, 1024, 2048)
    assert built.num_layers == 24 and built.int64_inputs == ["input_ids", "attention_mask", "position_ids"]

    repo = write_triton_repository(built.directory, tmp_path / "triton")
    config = parse_config((repo / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan"
    assert [t.name for t in config.input] == input_names(24) and [t.name for t in config.output] == output_names(24)
    assert [list(g.profile) for g in config.instance_group] == [["0", "1"]]  # one group, both profiles
