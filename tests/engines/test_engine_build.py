"""``build_engine`` for real with TensorRT-RTX (CPU-buildable), plus the failure paths that need no backend.

The ``tensorrt`` path (users' GPUs, Dockerfile.trt) shares this code but cannot be installed here, and no
engine is run: without a GPU a plan cannot be deserialized.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tiny import ExportCache, write_export_manifest

from sleb_deploy.contract import input_names, output_names
from sleb_deploy.engines import BuildConfig, build_engine
from sleb_deploy.errors import ArtifactError, MissingDependencyError, UserInputError
from sleb_deploy.export.manifest import ExportManifest

CFG = BuildConfig(max_batch=2, max_input_len=16, max_context_len=32)


class OnnxDirs:
    """Tiny llama export dirs; fp16 ones get an export.json like the export stage's, the fp32 ones stand for
    an ONNX made elsewhere (no manifest)."""

    def __init__(self, exports: ExportCache) -> None:
        self.exports = exports

    def get(self, dtype: str = "fp32", num_layers: int = 3) -> Path:
        _, path, spec = self.exports.get("llama", dtype=dtype, num_layers=num_layers)
        if dtype != "fp32" and not ExportManifest.exists(path.parent):
            write_export_manifest(path.parent, spec)
        return path.parent


@pytest.fixture
def onnx_dirs(exports: ExportCache) -> OnnxDirs:
    pytest.importorskip("onnx")
    return OnnxDirs(exports)


def _check_engine(out: Path, num_layers: int, kv_dtype: str) -> dict[str, Any]:
    assert (out / "model.plan").stat().st_size > 0
    assert (out / "timing.cache").is_file()
    manifest: dict[str, Any] = json.loads((out / "engine.json").read_text())
    assert manifest["backend"]["module"] == "tensorrt_rtx"
    assert [p["name"] for p in manifest["profiles"]] == ["prefill", "decode"]
    for prof in manifest["profiles"]:
        assert list(prof["shapes"]) == input_names(num_layers)
    io = {row["name"]: row for row in manifest["io"]}
    assert [r["name"] for r in manifest["io"] if r["mode"] == "input"] == input_names(num_layers)
    assert [r["name"] for r in manifest["io"] if r["mode"] == "output"] == output_names(num_layers)
    assert manifest["int64_inputs"] == ["input_ids", "attention_mask", "position_ids"]
    assert io["past_key_values.0.key"]["dtype"] == io["present.0.value"]["dtype"] == kv_dtype
    assert io["past_key_values.0.key"]["dims"] == ["batch_size", 2, "past_sequence_length", 8]
    assert manifest["num_layers"] == num_layers
    assert manifest["build_seconds"] > 0
    assert not list(out.parent.glob(f".{out.name}.*"))  # no staging leftovers
    return manifest


@pytest.mark.trt
def test_builds_fp32_opset23(onnx_dirs: OnnxDirs, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    result = build_engine(onnx_dirs.get("fp32"), tmp_path / "e", CFG)
    assert result.directory is not None
    manifest = _check_engine(result.directory, 3, "FLOAT")
    assert result.backend["module"] == "tensorrt_rtx" and result.num_layers == 3
    assert manifest["build_options"]["attention_layers_marked_decomposable"] > 0  # fp32 needs it
    assert manifest["source"]["export"] is None


@pytest.mark.trt
def test_builds_fp16_with_export_manifest(onnx_dirs: OnnxDirs, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    result = build_engine(onnx_dirs.get("fp16"), tmp_path / "e", CFG, backend="tensorrt_rtx")
    assert result.directory is not None
    manifest = _check_engine(result.directory, 3, "HALF")
    assert manifest["source"]["export"]["graph"]["dtype"] == "fp16"
    # Its Triton repository: config.pbtxt parses into Triton's ModelConfig with every binding and both profiles.
    from test_engine_triton import parse_config

    from sleb_deploy.engines.triton import write_triton_repository

    repo = write_triton_repository(result.directory, tmp_path / "triton")
    config = parse_config((repo / "config.pbtxt").read_text())
    assert [t.name for t in config.input] == input_names(3) and [t.name for t in config.output] == output_names(3)
    assert [list(g.profile) for g in config.instance_group] == [["0", "1"]]


@pytest.mark.trt
def test_pruned_build_reuses_dense_timing_cache(onnx_dirs: OnnxDirs, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    dense = build_engine(onnx_dirs.get("fp16", num_layers=4), tmp_path / "dense", CFG)
    seed = tmp_path / "dense" / "timing.cache"
    pruned = build_engine(onnx_dirs.get("fp16", num_layers=3), tmp_path / "pruned", CFG, timing_cache=seed)
    manifest = _check_engine(tmp_path / "pruned", 3, "HALF")
    cache = manifest["timing_cache"]
    assert cache["seeded_from"] == str(seed) and cache["file"] == "timing.cache"
    # TensorRT-RTX ignores timing caches (and says so); full TensorRT honours them.
    assert cache["honoured_by_backend"] is False and pruned.timing_cache["seed_accepted"] is False
    assert dense.timing_cache["seeded_from"] is None


@pytest.mark.trt
def test_unusable_timing_cache_falls_back(onnx_dirs: OnnxDirs, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    junk = tmp_path / "junk.cache"
    junk.write_bytes(b"not a timing cache")
    result = build_engine(onnx_dirs.get("fp16"), tmp_path / "e", CFG, timing_cache=junk)
    assert (tmp_path / "e" / result.plan).is_file() and not result.timing_cache["seed_accepted"]
    with pytest.raises(UserInputError, match="not found"):
        build_engine(onnx_dirs.get("fp16"), tmp_path / "e2", CFG, timing_cache=tmp_path / "missing.cache")


@pytest.mark.trt
def test_existing_output_needs_force(onnx_dirs: OnnxDirs, tmp_path: Path) -> None:
    out = tmp_path / "e"
    out.mkdir()
    (out / "engine.json").write_text("old")
    with pytest.raises(ArtifactError, match="--force"):
        build_engine(onnx_dirs.get("fp16"), out, CFG)
    assert [p.name for p in out.iterdir()] == ["engine.json"] and (out / "engine.json").read_text() == "old"
    pytest.importorskip("tensorrt_rtx")
    build_engine(onnx_dirs.get("fp16"), out, CFG, force=True)
    _check_engine(out, 3, "HALF")


@pytest.mark.trt
def test_export_manifest_disagreeing_with_graph(onnx_dirs: OnnxDirs, tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_rtx")
    src = onnx_dirs.get("fp32")
    bad = tmp_path / "onnx"
    bad.mkdir()
    (bad / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
    _, _, spec = onnx_dirs.exports.get("llama")
    write_export_manifest(bad, replace(spec, num_layers=7))
    with pytest.raises(ArtifactError, match="7 layers"):
        build_engine(bad, tmp_path / "e", CFG)
    assert not (tmp_path / "e").exists()


def test_export_manifest_of_another_schema(onnx_dirs: OnnxDirs, tmp_path: Path) -> None:
    """An export.json without our schema (hand-made, or another version's) is named, field and file."""
    bad = tmp_path / "onnx"
    bad.mkdir()
    (bad / "model.onnx").write_bytes((onnx_dirs.get("fp32") / "model.onnx").read_bytes())
    (bad / "export.json").write_text(json.dumps({"graph": {"num_layers": 7}}))
    with pytest.raises(ArtifactError, match=r"export\.json: schema is None.*re-run"):
        build_engine(bad, tmp_path / "e", CFG)
    _, _, spec = onnx_dirs.exports.get("llama")
    write_export_manifest(bad, spec)
    data = json.loads((bad / "export.json").read_text())
    data["graph"]["num_layers"] = "three"
    (bad / "export.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"export\.json: field 'graph'.*field 'num_layers': expected int"):
        build_engine(bad, tmp_path / "e", CFG)
    assert not (tmp_path / "e").exists()


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"model\.onnx"):
        build_engine(tmp_path, tmp_path / "e", CFG)
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(UserInputError, match="exceeds"):
        build_engine(tmp_path, tmp_path / "e", BuildConfig(max_input_len=64, max_context_len=32))
    with pytest.raises(UserInputError, match="unknown engine backend"):
        build_engine(tmp_path, tmp_path / "e", CFG, backend="onnxruntime")


def test_missing_backend_names_the_extras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import` of a None entry raises ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(MissingDependencyError) as err:
        build_engine(tmp_path, tmp_path / "e", CFG)
    assert "sleb-deploy[trt]" in str(err.value) and "sleb-deploy[trt-rtx]" in str(err.value)
    assert "Dockerfile.trt" in str(err.value)
    with pytest.raises(MissingDependencyError, match=r"sleb-deploy\[trt\]"):
        build_engine(tmp_path, tmp_path / "e", CFG, backend="tensorrt")
    assert not (tmp_path / "e").exists()
