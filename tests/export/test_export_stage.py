"""The export stage and `sleb-deploy onnx`/`export` on tiny checkpoints: layout, manifest, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from sleb_deploy.cli import app
from sleb_deploy.errors import ValidationError
from sleb_deploy.export.manifest import ExportManifest
from sleb_deploy.export.stage import ExportConfig, export_checkpoint
from sleb_deploy.models.load import resolve_model
from sleb_deploy.prune.manifest import SlebManifest

runner = CliRunner()


def test_export_layout_manifest_and_generation(llama_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from sleb_deploy.export.ort_generate import OrtGenerator

    out = tmp_path / "onnx"
    result = runner.invoke(app, ["onnx", "--model", str(llama_dir), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["validation"]["status"] == "passed"
    assert data["validation"]["max_logits"] <= data["validation"]["tolerance"]
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "generation_config.json", "tokenizer.json", "export.json"} <= names
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["graph"]["num_layers"] == 6 and manifest["pruning"] == {"pruned": False}
    # The checksum is computed beside the export (a thread) and is the one resolve_model gives.
    checksum = resolve_model(str(llama_dir)).checksum
    assert checksum and manifest["model"]["checksum"] == checksum
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]  # spelled for old transformers too

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    ids = torch.randint(4, 300, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    got = OrtGenerator(out / "model.onnx").generate(ids.numpy(), mask.numpy(), max_new_tokens=8)
    np.testing.assert_array_equal(got, ref.numpy())


def test_pruned_export_records_pruning(llama_dir: Path, text_file: Path, tmp_path: Path) -> None:
    pruned = tmp_path / "hf"
    args = ["prune", "--model", str(llama_dir), "--blocks", "1,3", "--out", str(pruned), "--eval-text",
            str(text_file), "--seq-len", "32", "--eval-windows", "2", "--quiet"]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    result = export_checkpoint(str(pruned), tmp_path / "onnx", ExportConfig())
    assert result.graph.num_layers == 4
    assert result.pruning["pruned"] and result.pruning["removal_order"] == [1, 3]
    assert len(result.graph.input_names) == 3 + 2 * 4
    assert ExportManifest.read(tmp_path / "onnx") == result  # the stage's result is its manifest, field for field


def test_validation_failure_writes_nothing(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    with pytest.raises(ValidationError, match="nothing written"):
        export_checkpoint(str(llama_dir), out, ExportConfig(tolerance=-1.0))  # no difference can pass
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_no_validate_skips_the_check_and_says_so(llama_dir: Path, tmp_path: Path) -> None:
    """``--no-validate`` (big models on small machines): the graph is written and works, export.json and the
    printed line say the comparison with PyTorch was skipped (the tolerance that fails every check is unused)."""
    out = tmp_path / "onnx"
    result = runner.invoke(app, ["onnx", "--model", str(llama_dir), "--out", str(out), "--no-validate"])
    assert result.exit_code == 0, result.output
    assert "validation skipped: --no-validate" in result.output
    manifest = ExportManifest.read(out)
    assert manifest.validation["status"] == "skipped" and manifest.options["validate"] is False
    ids = np.array([[5, 6, 7]])
    from sleb_deploy.export.ort_generate import OrtGenerator

    got = OrtGenerator(out / "model.onnx").generate(ids, np.ones_like(ids), max_new_tokens=3)
    assert got.shape == (1, 6)
    with pytest.raises(ValidationError):  # the same checkpoint with the check on and an impossible tolerance
        export_checkpoint(str(llama_dir), tmp_path / "v", ExportConfig(tolerance=-1.0, validate=True))


def test_bad_input(tmp_path: Path, llama_dir: Path) -> None:
    (tmp_path / "noconf").mkdir()
    result = runner.invoke(app, ["onnx", "--model", str(tmp_path / "noconf"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no config.json" in result.stderr
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    result = runner.invoke(app, ["onnx", "--model", str(tmp_path / "gpt"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'gpt2' is not supported" in result.stderr
    existing = tmp_path / "o"
    existing.mkdir()
    (existing / "model.onnx").write_text("good one")
    result = runner.invoke(app, ["onnx", "--model", str(llama_dir), "--out", str(existing)])
    assert result.exit_code == 3 and "already exists" in result.stderr
    assert (existing / "model.onnx").read_text() == "good one"
    for r in (result,):
        assert r.stderr.count("\n") == 1


def test_pipeline_reuses_and_refuses(
    llama_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    common = ["export", "--model", str(llama_dir), "--calib", str(text_file), "--windows", "2", "--seq-len", "32",
              "--eval-text", str(text_file), "--eval-windows", "2", "--engines", "none"]  # fmt: skip
    args = [*common, "--remove", "1"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    ws = tmp_path / "export" / "tiny-llama"
    assert {p.name for p in ws.iterdir()} == {"hf-pruned", "dense", "pruned"}
    assert data["dense"]["graph"]["num_layers"] == 6 and data["pruned"]["graph"]["num_layers"] == 5
    assert data["engines"]["backend"] is None and "Dockerfile.trt" in data["engines"]["note"]
    assert data["dense"]["model"]["spec"] == str(llama_dir.resolve())  # a local checkpoint: its directory
    again = runner.invoke(app, args)
    assert again.exit_code == 3 and "already exists" in again.stderr  # dense/pruned exist: nothing redone

    # The same settings with the exports gone: the pruned checkpoint is reused, not pruned again.
    sleb_before = (ws / "hf-pruned" / "sleb.json").read_bytes()
    shutil.rmtree(ws / "dense")
    shutil.rmtree(ws / "pruned")
    reused = runner.invoke(app, args)
    assert reused.exit_code == 0, reused.stderr
    lines = reused.stderr.splitlines()
    assert any(x.startswith("reusing ") for x in lines) and not any(x.startswith("pruning ") for x in lines)
    assert (ws / "hf-pruned" / "sleb.json").read_bytes() == sleb_before

    # Other block-choosing settings: refused without --force, nothing touched; with --force pruned again.
    shutil.rmtree(ws / "dense")
    shutil.rmtree(ws / "pruned")
    other = runner.invoke(app, [*common, "--remove", "2", "--quiet"])
    assert other.exit_code == 3 and "pruned with other settings" in other.stderr, other.stderr
    assert (ws / "hf-pruned" / "sleb.json").read_bytes() == sleb_before and not (ws / "dense").exists()
    forced = runner.invoke(app, [*common, "--remove", "2", "--force", "--quiet"])
    assert forced.exit_code == 0, forced.stderr
    assert SlebManifest.read(ws / "hf-pruned").num_blocks_after == 4


@pytest.mark.trt
def test_pipeline_builds_engines_with_its_options(
    llama_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export --engines tensorrt_rtx` with build options: both engines, the options in their engine.json, the
    pruned build seeded with the dense build's timing cache."""
    pytest.importorskip("tensorrt_rtx")
    from sleb_deploy.engines.build import EngineManifest

    monkeypatch.chdir(tmp_path)
    args = ["export", "--model", str(llama_dir), "--blocks", "2", "--eval-text", str(text_file), "--seq-len", "32",
            "--eval-windows", "2", "--engines", "tensorrt_rtx", "--max-batch", "16", "--max-input-len", "16",
            "--max-context-len", "64", "--quiet", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["engines"]["backend"] == "tensorrt_rtx"
    dense = EngineManifest.read(tmp_path / "engines" / "tiny-llama" / "dense")
    pruned = EngineManifest.read(tmp_path / "engines" / "tiny-llama" / "pruned")
    assert (dense.num_layers, pruned.num_layers) == (6, 5)
    for engine in (dense, pruned):
        assert engine.build_options["max_batch"] == 16 and engine.build_options["max_context_len"] == 64
        for profile in engine.profiles:
            assert profile["shapes"]["input_ids"]["max"][0] == 16
    assert pruned.timing_cache["seeded_from"] == str(tmp_path / "engines" / "tiny-llama" / "dense" / "timing.cache")


def test_pipeline_static_exports_both_and_checks_first(
    llama_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export --kv-cache static`: dense and pruned both static (symbolic buffer without engines), generating the
    concatenating graphs' tokens; a combination that cannot be exported fails before the pruning."""
    from sleb_deploy.export.ort_generate import OrtGenerator

    monkeypatch.chdir(tmp_path)
    common = ["export", "--model", str(llama_dir), "--blocks", "2", "--eval-text", str(text_file), "--seq-len", "32",
              "--eval-windows", "2", "--engines", "none", "--quiet"]  # fmt: skip
    bad = runner.invoke(app, [*common, "--kv-cache", "static", "--variant", "opset18"])
    assert bad.exit_code == 2 and "needs --variant opset23" in bad.stderr
    assert not (tmp_path / "export").exists()  # refused before pruning
    bad = runner.invoke(app, [*common, "--max-cache-len", "64"])
    assert bad.exit_code == 2 and "static only" in bad.stderr

    result = runner.invoke(app, [*common, "--kv-cache", "static", "--json"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["engines"]["kv_cache"] == "static"
    ws = tmp_path / "export" / "tiny-llama"
    ids = np.random.default_rng(0).integers(3, 300, size=(2, 5))
    for variant in ("dense", "pruned"):
        graph = data[variant]["graph"]
        assert (graph["kv_cache"], graph["max_cache_len"]) == ("static", None)
        assert data[variant]["validation"]["status"] == "passed"
        gen = OrtGenerator(ws / variant / "model.onnx")
        assert gen.kv_cache == "static"
        concat_out = tmp_path / f"concat-{variant}"
        source = str(llama_dir) if variant == "dense" else str(ws / "hf-pruned")
        export_checkpoint(source, concat_out, ExportConfig())
        expected = OrtGenerator(concat_out / "model.onnx").generate(ids, np.ones_like(ids), 6)
        np.testing.assert_array_equal(gen.generate(ids, np.ones_like(ids), 6), expected)


@pytest.mark.trt
def test_pipeline_builds_static_engines(
    llama_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`export --kv-cache static --engines tensorrt_rtx` without --max-cache-len: the graphs are fixed at
    --max-context-len (said on stderr) and both static engines build; a prompt limit over the buffer is refused
    before any work."""
    pytest.importorskip("tensorrt_rtx")
    from sleb_deploy.engines.build import EngineManifest
    from sleb_deploy.engines.limits import EngineLimits

    monkeypatch.chdir(tmp_path)
    common = ["export", "--model", str(llama_dir), "--blocks", "2", "--eval-text", str(text_file), "--seq-len", "32",
              "--eval-windows", "2", "--engines", "tensorrt_rtx", "--kv-cache", "static",
              "--max-batch", "2"]  # fmt: skip
    bad = runner.invoke(app, [*common, "--max-cache-len", "32", "--max-input-len", "48", "--quiet"])
    assert bad.exit_code == 2 and "exceeds the 32-slot static KV cache buffer" in bad.stderr, bad.stderr
    assert not (tmp_path / "export").exists()

    result = runner.invoke(app, [*common, "--max-input-len", "16", "--max-context-len", "48"])
    assert result.exit_code == 0, result.stderr
    assert "buffers fixed at 48 slots (--max-context-len)" in result.stderr
    for variant, layers in (("dense", 6), ("pruned", 5)):
        assert ExportManifest.read(tmp_path / "export" / "tiny-llama" / variant).graph.max_cache_len == 48
        engine = EngineManifest.read(tmp_path / "engines" / "tiny-llama" / variant)
        assert engine.num_layers == layers
        assert (engine.build_options["kv_cache"], engine.build_options["max_cache_len"]) == ("static", 48)
        limits = EngineLimits.from_manifest(engine)
        assert (limits.max_batch, limits.max_input_len, limits.max_cache_len) == (2, 16, 48)
