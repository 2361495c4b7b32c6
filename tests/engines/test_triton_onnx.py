"""Triton repositories for an ONNX export (onnxruntime_onnx + the python-backend generate model), without a server:
configs parsed into Triton's ModelConfig, checked against the graph ONNX Runtime loads, the generate model's
loop against OrtGenerator, the CLI and its refusals. The real server: test_triton_server.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_engine_triton import model_config_pb2, parse_config
from typer.testing import CliRunner

from sleb_deploy.engines.triton_generate import GenerateRequestError, GenerateSettings, Generation, left_pad
from sleb_deploy.engines.triton_onnx import InstanceKind, TritonConfig, TritonKind, write_onnx_triton_repository
from sleb_deploy.errors import ArtifactError


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A tiny llama through `export_checkpoint`, weights in external data (they must travel with the graph)."""
    pytest.importorskip("onnxruntime")
    from tiny import save_checkpoint, tiny_model

    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    base = tmp_path_factory.mktemp("triton-onnx")
    ckpt = save_checkpoint(tiny_model("llama", num_layers=2), tokenizer, base / "hf")
    export_checkpoint(str(ckpt), base / "onnx", ExportConfig(external_data=True))
    return base / "onnx"


def _dims(shape: list[Any]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def test_onnxruntime_model_matches_the_graph(tiny_export: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    (model,) = write_onnx_triton_repository(tiny_export, tmp_path / "repo", TritonConfig(kind=TritonKind.ONNXRUNTIME))
    config = parse_config((model / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    assert config.instance_group[0].kind == model_config_pb2().ModelInstanceGroup.Kind.Value("KIND_CPU")
    # The external data file came along: ONNX Runtime loads the repository's copy of the graph.
    assert (model / "1" / "model.onnx_data").is_file()
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    types = model_config_pb2().DataType
    ort_type = {"tensor(int64)": "TYPE_INT64", "tensor(float)": "TYPE_FP32"}
    for listed, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in listed] == [a.name for a in actual]
        for t, a in zip(listed, actual, strict=True):
            assert list(t.dims) == _dims(a.shape), t.name
            assert types.Name(t.data_type) == ort_type[a.type], t.name
    assert not (tmp_path / "repo" / "generate").exists()


def test_gpu_instances_and_generate_config(tiny_export: Path, tmp_path: Path) -> None:
    cfg = TritonConfig(
        instance_kind=InstanceKind.GPU, instances=2, name="tiny", generate_name="tiny_generate",
        generate=GenerateSettings(device="cuda", max_batch=4, max_new_tokens=8),
    )  # fmt: skip
    model, generate = write_onnx_triton_repository(tiny_export, tmp_path / "repo", cfg)
    gpu = model_config_pb2().ModelInstanceGroup.Kind.Value("KIND_GPU")
    onnx_config = parse_config((model / "config.pbtxt").read_text())
    assert onnx_config.name == "tiny" and onnx_config.instance_group[0].kind == gpu
    assert onnx_config.instance_group[0].count == 2
    config = parse_config((generate / "config.pbtxt").read_text())
    assert config.name == "tiny_generate" and config.backend == "python" and config.max_batch_size == 0
    assert {t.name: t.optional for t in config.input} == {
        "text": True, "input_ids": True, "attention_mask": True, "max_new_tokens": True
    }  # fmt: skip
    assert [t.name for t in config.output] == ["output_ids", "output_lengths", "text_output"]
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["device"] == "cuda" and params["max_batch"] == "4" and params["max_new_tokens"] == "8"
    assert GenerateSettings.from_parameters(json.loads(json.dumps({k: {"string_value": v} for k, v in params.items()})))
    version = generate / "1"
    assert "TritonPythonModel" in (version / "model.py").read_text()
    for f in ("model.onnx", "model.onnx_data", "tokenizer.json", "generation_config.json", "export.json"):
        assert (version / f).is_file(), f


def test_existing_target_is_refused_and_nothing_touched(tiny_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_onnx_triton_repository(tiny_export, repo, TritonConfig(kind=TritonKind.GENERATE))
    before = (repo / "generate" / "config.pbtxt").read_text()
    with pytest.raises(ArtifactError, match="generate already exists: pass --force"):
        write_onnx_triton_repository(tiny_export, repo, TritonConfig(generate=GenerateSettings(max_batch=2)))
    assert not (repo / "model").exists()  # checked before anything was written
    assert (repo / "generate" / "config.pbtxt").read_text() == before
    write_onnx_triton_repository(tiny_export, repo, TritonConfig(generate=GenerateSettings(max_batch=2), force=True))
    assert 'string_value: "2"' in (repo / "generate" / "config.pbtxt").read_text()
    assert (repo / "model" / "1" / "model.onnx").is_file()


def test_cli(tiny_export: Path, tmp_path: Path) -> None:
    from sleb_deploy.cli import app

    runner = CliRunner()
    args = ["triton", str(tiny_export), "--out", str(tmp_path / "repo"), "--kind", "onnxruntime", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"] == [str((tmp_path / "repo" / "model").absolute())]
    again = runner.invoke(app, args)
    assert again.exit_code == 3
    assert again.output.strip().count("\n") == 0 and "already exists: pass --force" in again.output
    bad = runner.invoke(app, ["triton", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")])
    assert bad.exit_code != 0 and "export.json" in bad.output and not (tmp_path / "r2").exists()


def test_left_pad_repacks_rows() -> None:
    ids = np.array([[5, 6, 7], [8, 9, 0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])  # second row right-padded
    out_ids, out_mask = left_pad(ids, mask, pad_id=2)
    assert out_ids.tolist() == [[5, 6, 7], [2, 8, 9]] and out_mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    with pytest.raises(GenerateRequestError, match="at least one token"):
        left_pad(ids, np.zeros_like(mask), pad_id=2)
    with pytest.raises(GenerateRequestError, match="differs"):
        left_pad(ids, mask[:, :2], pad_id=2)


def test_generation_equals_ort_generator(tiny_export: Path) -> None:
    """The generate model's loop (text in, new ids out) is OrtGenerator's, row for row, and enforces its limits."""
    from transformers import AutoTokenizer

    from sleb_deploy.export.ort_generate import OrtGenerator

    prompts = ["the quick brown fox", "a", "over the lazy dog and far away"]
    gen = Generation(tiny_export, GenerateSettings(device="cpu", max_batch=3, max_new_tokens=6))
    ids, mask = gen.encode(prompts)
    assert mask[1, 0] == 0  # left padding
    new, lengths = gen.generate(ids, mask)
    tok = AutoTokenizer.from_pretrained(tiny_export)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="np", padding=True)
    ref = OrtGenerator(tiny_export / "model.onnx").generate(
        enc.input_ids, enc.attention_mask, 6, eos_token_id=gen.eos, pad_token_id=gen.pad
    )
    assert new.tolist() == ref[:, enc.input_ids.shape[1] :].tolist()
    assert lengths.shape == (3,) and (lengths >= 1).all() and (lengths <= new.shape[1]).all()
    assert len(gen.decode(new, lengths)) == 3
    with pytest.raises(GenerateRequestError, match="over this model's max_batch 3"):
        gen.generate(np.ones((4, 2), dtype=np.int64), None)
    with pytest.raises(GenerateRequestError, match=r"max_new_tokens must be 1\.\.1024"):
        gen.generate(ids, mask, 0)


@pytest.fixture(scope="module")
def static_exports(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> dict[str, Path]:
    """The tiny llama exported with both contracts and a fixed-length static graph (``--max-cache-len 12``)."""
    pytest.importorskip("onnxruntime")
    from tiny import save_checkpoint, tiny_model

    from sleb_deploy.export.stage import ExportConfig, export_checkpoint

    base = tmp_path_factory.mktemp("triton-static")
    ckpt = save_checkpoint(tiny_model("llama", num_layers=2), tokenizer, base / "hf")
    configs = {"concat": ExportConfig(), "static": ExportConfig(kv_cache="static"),
               "fixed": ExportConfig(kv_cache="static", max_cache_len=12)}  # fmt: skip
    for name, cfg in configs.items():
        export_checkpoint(str(ckpt), base / name, cfg)
    return {name: base / name for name in configs}


def test_static_graph_gets_the_generate_model_only(static_exports: dict[str, Path], tmp_path: Path) -> None:
    """A static graph: the onnxruntime_onnx model is refused with the reason (and nothing written), the generate
    model is written and gives the concatenating graph's tokens; its fixed buffer's limit is an error response."""
    from sleb_deploy.cli import app
    from sleb_deploy.errors import UserInputError

    static = static_exports["static"]
    for kind in (TritonKind.ONNXRUNTIME, TritonKind.BOTH):
        with pytest.raises(UserInputError, match=r"onnxruntime backend cannot serve.*--kind generate"):
            write_onnx_triton_repository(static, tmp_path / "repo", TritonConfig(kind=kind))
    assert not (tmp_path / "repo").exists()
    result = CliRunner().invoke(app, ["triton", str(static), "--out", str(tmp_path / "repo")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--kind generate" in result.stderr

    (model,) = write_onnx_triton_repository(static, tmp_path / "repo", TritonConfig(kind=TritonKind.GENERATE))
    assert parse_config((model / "config.pbtxt").read_text()).backend == "python"
    prompts = ["the quick brown fox", "a", "over the lazy dog and far away"]
    settings = GenerateSettings(device="cpu", max_new_tokens=6)
    served = Generation(model / "1", settings)  # the repository's copy, as the server loads it
    assert served.generator.kv_cache == "static"
    reference = Generation(static_exports["concat"], settings)
    ids, mask = served.encode(prompts)
    new, lengths = served.generate(ids, mask)
    ref_new, ref_lengths = reference.generate(ids, mask)
    assert new.tolist() == ref_new.tolist() and lengths.tolist() == ref_lengths.tolist()

    fixed = Generation(static_exports["fixed"], settings)
    short = np.ones((1, 4), dtype=np.int64)
    assert fixed.generate(short, None, 9)[0].shape == (1, 9)  # 4 + 9 - 1 = 12 slots: fits exactly
    with pytest.raises(GenerateRequestError, match="12 slots, fewer than the 13"):
        fixed.generate(short, None, 10)
