"""Load checks and limits read from ``engine.json`` alone: no TensorRT, no GPU (``engines/limits.py``).

The manifests are the ones the builder writes (profiles from ``optimization_profiles``); the last test loads a
real TensorRT-RTX build and shows the runner refuses it here, before any CUDA call, with the reason.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tiny import ExportCache

from sleb_deploy.engines.build import EngineManifest
from sleb_deploy.engines.limits import EngineLimits, check_loadable
from sleb_deploy.engines.profiles import BuildConfig, optimization_profiles, profiles_to_json
from sleb_deploy.errors import ArtifactError, MissingDependencyError, UserInputError

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0"}
L40S = {"name": "NVIDIA L40S", "compute_capability": "8.9"}
RTX = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}


def manifest(
    cfg: BuildConfig, module: str = "tensorrt", version: str = "10.13.0.35", gpu: Any = H200
) -> EngineManifest:
    profiles = profiles_to_json(optimization_profiles(cfg, num_layers=2, num_kv_heads=2, head_dim=8))
    m = EngineManifest(
        backend={"module": module, "version": version}, gpu=gpu, plan="model.plan", plan_bytes=1, timing_cache={},
        build_options=cfg.resolved().to_json(), precision="fp16", num_layers=2, num_kv_heads=2, head_dim=8,
        int64_inputs=[], profiles=profiles, io=[], source={"onnx": "/models/export/x/dense/model.onnx"},
        build_seconds=1.0,
    )  # fmt: skip
    m.directory = Path("/models/engines/x/dense")
    return m


@pytest.mark.parametrize(
    "cfg",
    [
        BuildConfig(),
        BuildConfig(max_batch=3, max_input_len=9, max_context_len=20),
        BuildConfig(max_batch=1, max_input_len=2, max_context_len=2),
    ],
)
def test_limits_are_the_profiles(cfg: BuildConfig) -> None:
    limits = EngineLimits.from_manifest(manifest(cfg))
    assert (limits.max_batch, limits.max_input_len, limits.max_context_len) == (
        cfg.max_batch, cfg.max_input_len, cfg.max_context_len,
    )  # fmt: skip


def test_defaults_serve_a_realistic_sweep() -> None:
    """The default engine takes batch 1..16 and a 2K-token context (prompts up to 1K)."""
    limits = EngineLimits.from_manifest(manifest(BuildConfig()))
    assert limits.max_batch >= 16 and limits.max_context_len >= 2048 and limits.max_input_len >= 1024
    limits.check_request(16, 1024, 1024)


def test_requests_over_the_limits() -> None:
    limits = EngineLimits(max_batch=4, max_input_len=64, max_context_len=128)
    limits.check_request(4, 64, 64)  # exactly at every limit
    for args, words in [
        ((5, 8, 8), ["batch 5", "max batch of 4", "--max-batch"]),
        ((1, 65, 8), ["65 tokens", "max input length of 64", "--max-input-len"]),
        ((1, 64, 65), ["= 129", "max context of 128", "--max-context-len"]),
    ]:
        with pytest.raises(UserInputError) as err:
            limits.check_request(*args)
        assert all(w in str(err.value) for w in words) and "\n" not in str(err.value)


def test_static_engine_limits_are_its_buffer() -> None:
    """A static-cache engine (engine.json records kv_cache "static" and max_cache_len): a request fits when it
    writes no more slots than the buffer holds (prompt + new tokens - 1), and the refusal names --max-cache-len."""
    cfg = BuildConfig(max_batch=2, max_input_len=16, max_context_len=64)
    m = manifest(cfg)
    m.profiles = profiles_to_json(optimization_profiles(cfg, 2, 2, 8, max_cache_len=32))
    m.build_options = {**m.build_options, "kv_cache": "static", "max_cache_len": 32}
    limits = EngineLimits.from_manifest(m)
    assert limits == EngineLimits(max_batch=2, max_input_len=16, max_context_len=32, max_cache_len=32)
    limits.check_request(2, 16, 17)  # 16 + 17 - 1 = 32 slots: exactly the buffer
    with pytest.raises(UserInputError) as err:
        limits.check_request(1, 16, 18)
    assert "33 slots" in str(err.value) and "32-slot KV cache buffer" in str(err.value)
    assert "--max-cache-len" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="max input length of 16"):
        limits.check_request(1, 17, 1)


def test_a_missing_profile_is_refused() -> None:
    m = manifest(BuildConfig())
    m.profiles = m.profiles[:1]
    with pytest.raises(ArtifactError, match="prefill and decode"):
        EngineLimits.from_manifest(m)


def test_load_checks() -> None:
    m = manifest(BuildConfig())
    check_loadable(m, "tensorrt", "10.13.0.35", H200)  # the machine it was built on
    rebuild = "sleb-deploy build --onnx /models/export/x/dense --out /models/engines/x/dense --force"
    cases = [
        (("tensorrt", "10.14.1.48", H200), ArtifactError, ["10.13.0.35", "10.14.1.48", rebuild]),
        (("tensorrt_rtx", "10.13.0.35", H200), ArtifactError, ["built with tensorrt", rebuild]),
        (("tensorrt", "10.13.0.35", L40S), ArtifactError, ["NVIDIA H200", "NVIDIA L40S", "8.9", rebuild]),
        (("tensorrt", "10.13.0.35", {**H200, "name": "NVIDIA H100 80GB HBM3"}), ArtifactError, ["H100", rebuild]),
        (("tensorrt", "10.13.0.35", None), MissingDependencyError, ["no CUDA GPU"]),
    ]
    for args, error, words in cases:
        with pytest.raises(error) as err:
            check_loadable(m, *args)
        assert all(w in str(err.value) for w in words), str(err.value)
        assert "\n" not in str(err.value)
    untuned = replace(m, gpu=None)
    with pytest.raises(ArtifactError, match="which GPU"):
        check_loadable(untuned, "tensorrt", "10.13.0.35", H200)


def test_rtx_plans_load_on_rtx_gpus_only() -> None:
    m = manifest(BuildConfig(), module="tensorrt_rtx", version="1.7.1.116", gpu=None)  # built on a CPU
    check_loadable(m, "tensorrt_rtx", "1.7.1.116", RTX)
    with pytest.raises(ArtifactError, match=r"RTX GPUs only.*--backend tensorrt"):
        check_loadable(m, "tensorrt_rtx", "1.7.1.116", H200)
    with pytest.raises(ArtifactError, match=r"1\.8\.0"):
        check_loadable(m, "tensorrt_rtx", "1.8.0", RTX)


@pytest.mark.trt
def test_runner_refuses_before_cuda(exports: ExportCache, tmp_path: Path) -> None:
    """A real TensorRT-RTX build: the runner reads its limits, then refuses it on a machine without a GPU
    (and an engine from another TensorRT version, whatever the machine), with one line."""
    pytest.importorskip("tensorrt_rtx")
    import torch

    from sleb_deploy.engines import build_engine
    from sleb_deploy.engines.trt_runner import TrtGenerator

    _, path, _ = exports.get("llama", num_layers=2)
    built = build_engine(path.parent, tmp_path / "e", BuildConfig(max_batch=2, max_input_len=8, max_context_len=16))
    assert built.directory is not None
    assert EngineLimits.from_manifest(built) == EngineLimits(2, 8, 16)
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="no CUDA GPU"):
            TrtGenerator(built.directory)
    stale = EngineManifest.read(built.directory)
    stale.backend = {**stale.backend, "version": "0.0.1"}
    stale.write(built.directory)
    with pytest.raises(ArtifactError, match=r"built with tensorrt_rtx 0\.0\.1 and this machine has"):
        TrtGenerator(built.directory)
    with pytest.raises(ArtifactError, match=r"engine\.json not found"):
        TrtGenerator(tmp_path / "nothing")


def test_runner_reads_a_static_engine_before_cuda(tmp_path: Path) -> None:
    """A real TensorRT-RTX build of a static-cache graph: the runner takes it (no longer refused for its
    contract) and stops only where a GPU is needed; an engine.json naming an unknown contract is refused."""
    pytest.importorskip("tensorrt_rtx")
    import torch
    from tiny import tiny_model

    from sleb_deploy.engines import build_engine
    from sleb_deploy.engines.trt_runner import TrtGenerator
    from sleb_deploy.export.onnx_graph import export_decoder_onnx

    export_decoder_onnx(tiny_model("llama", 2, scaled=False), tmp_path / "onnx", kv_cache="static", max_cache_len=24)
    built = build_engine(tmp_path / "onnx", tmp_path / "e", BuildConfig(max_batch=2, max_input_len=8))
    assert built.directory is not None
    assert EngineLimits.from_manifest(built) == EngineLimits(2, 8, 24, max_cache_len=24)
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="no CUDA GPU"):
            TrtGenerator(built.directory)
    odd = EngineManifest.read(built.directory)
    odd.build_options = {**odd.build_options, "kv_cache": "paged"}
    odd.write(built.directory)
    with pytest.raises(ArtifactError, match="unknown KV-cache contract 'paged'"):
        TrtGenerator(built.directory)
