"""The Triton repository writer, from a hand-made engine.json (no TensorRT needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sleb_deploy.engines.build import EngineManifest
from sleb_deploy.engines.profiles import BuildConfig, optimization_profiles, profiles_to_json
from sleb_deploy.engines.triton import write_triton_repository
from sleb_deploy.errors import ArtifactError


def _engine(tmp_path: Path, kv_dtype: str = "HALF") -> Path:
    io = [{"name": n, "mode": "input", "dtype": "INT64", "shape": [-1, -1]} for n in ("input_ids", "attention_mask")]
    io += [{"name": "past_key_values.0.key", "mode": "input", "dtype": kv_dtype, "shape": [-1, 2, -1, 8]}]
    io += [{"name": "logits", "mode": "output", "dtype": kv_dtype, "shape": [-1, -1, 128]}]
    profiles = profiles_to_json(optimization_profiles(BuildConfig(max_input_len=8, max_context_len=16), 1, 2, 8))
    out = tmp_path / "engine"
    out.mkdir()
    (out / "model.plan").write_bytes(b"plan")
    EngineManifest(
        backend={"module": "tensorrt", "version": "10.13"}, gpu=None, plan="model.plan", plan_bytes=4,
        timing_cache={}, build_options={}, precision="from the ONNX", num_layers=1, num_kv_heads=2, head_dim=8,
        int64_inputs=["input_ids", "attention_mask"], profiles=profiles, io=io, source={}, build_seconds=1.0,
    ).write(out)  # fmt: skip
    return out


def parse_config(text: str) -> Any:
    """``config.pbtxt`` parsed into Triton's own ``ModelConfig`` protobuf, as the server parses it."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


def model_config_pb2() -> Any:
    return pytest.importorskip("tritonclient.grpc.model_config_pb2")


def test_writes_repository(tmp_path: Path) -> None:
    repo = write_triton_repository(_engine(tmp_path), tmp_path / "repo", name="tiny")
    assert (repo / "1" / "model.plan").read_bytes() == b"plan"
    config = parse_config((repo / "config.pbtxt").read_text())
    assert config.name == "tiny" and config.platform == "tensorrt_plan" and config.max_batch_size == 0
    inputs = {t.name: t for t in config.input}
    assert list(inputs) == ["input_ids", "attention_mask", "past_key_values.0.key"]
    types = model_config_pb2().DataType
    assert inputs["input_ids"].data_type == types.Value("TYPE_INT64")
    assert list(inputs["past_key_values.0.key"].dims) == [-1, 2, -1, 8]
    assert inputs["past_key_values.0.key"].data_type == types.Value("TYPE_FP16")
    # One instance group with both profiles: any instance can take a prefill or a decode request.
    assert len(config.instance_group) == 1
    assert list(config.instance_group[0].profile) == ["0", "1"]
    with pytest.raises(ArtifactError, match="--force"):
        write_triton_repository(tmp_path / "engine", tmp_path / "repo", name="tiny")


def test_refuses_unknown_dtype_and_incomplete_engine(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no Triton type"):
        write_triton_repository(_engine(tmp_path, kv_dtype="FP8"), tmp_path / "repo")
    assert not (tmp_path / "repo" / "model").exists()
    with pytest.raises(ArtifactError, match=r"engine\.json"):
        write_triton_repository(tmp_path / "nothing", tmp_path / "repo")


def test_refuses_a_static_engine(tmp_path: Path) -> None:
    """A static-cache engine cannot be served by Triton's TensorRT backend: one line saying why and what instead."""
    from sleb_deploy.errors import UserInputError

    engine = _engine(tmp_path)
    manifest = EngineManifest.read(engine)
    manifest.build_options = {"kv_cache": "static", "max_cache_len": 16}
    manifest.write(engine)
    with pytest.raises(UserInputError, match=r"static KV-cache engine.*--kind generate") as err:
        write_triton_repository(engine, tmp_path / "repo")
    assert "\n" not in str(err.value) and not (tmp_path / "repo").exists()


@pytest.mark.slow
@pytest.mark.trt
def test_default_model_engine_repository(default_exports: dict[str, Path], tmp_path: Path) -> None:
    """The pruned default model's engine, built with TensorRT-RTX and the default build options (batch 16, prompts
    of 1K, context 2K: what `sleb-deploy export` builds), gives a config.pbtxt Triton parses: every binding,
    and both profiles in one GPU instance group."""
    pytest.importorskip("tensorrt_rtx")
    from defaults import DEFAULT_PRUNED_BLOCKS

    from sleb_deploy.contract import input_names, output_names
    from sleb_deploy.engines.build import build_engine
    from sleb_deploy.engines.limits import EngineLimits

    built = build_engine(default_exports["pruned"], tmp_path / "engine", BuildConfig(), backend="tensorrt_rtx")
    assert EngineLimits.from_manifest(built) == EngineLimits(max_batch=16, max_input_len=1024, max_context_len=2048)
    repo = write_triton_repository(tmp_path / "engine", tmp_path / "repo", name="pruned")
    config = parse_config((repo / "config.pbtxt").read_text())
    layers = 30 - len(DEFAULT_PRUNED_BLOCKS)
    assert [t.name for t in config.input] == input_names(layers)
    assert [t.name for t in config.output] == output_names(layers)
    assert list({t.name: t for t in config.input}["past_key_values.0.key"].dims) == [-1, 3, -1, 64]
    assert len(config.instance_group) == 1 and list(config.instance_group[0].profile) == ["0", "1"]
    assert config.instance_group[0].kind == model_config_pb2().ModelInstanceGroup.Kind.Value("KIND_GPU")
    print(f"\nTensorRT-RTX plan of the pruned default model: {(repo / '1' / 'model.plan').stat().st_size / 1e6:.0f} MB")
