from __future__ import annotations

from pathlib import Path

import pytest
from defaults import DEFAULT_PRUNED_BLOCKS
from tiny import TEXT, ExportCache, save_checkpoint, tiny_model, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer()


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> ExportCache:
    """Tiny-model ONNX exports, each made once per session."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    return ExportCache(tmp_path_factory.mktemp("onnx"))


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A tiny llama checkpoint on disk whose block 3 is an exact identity."""
    from tiny import make_identity

    model = tiny_model("llama", num_layers=6)
    make_identity(model, 3)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny-llama")


# --- the real default model (slow tests): one pruned checkpoint and one export each, shared by all tests ---


@pytest.fixture(scope="session")
def default_pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M with six given blocks removed (no search), as `sleb-deploy prune --blocks` writes it."""
    from sleb_deploy.prune.stage import PruneConfig, prune

    out = tmp_path_factory.mktemp("default") / "hf-pruned"
    prune(PruneConfig(blocks=DEFAULT_PRUNED_BLOCKS, out=out, eval_windows=2, seq_len=64))
    return out


@pytest.fixture(scope="session")
def default_exports(tmp_path_factory: pytest.TempPathFactory, default_pruned: Path) -> dict[str, Path]:
    """Dense and pruned default model exported as the CLI does by default (fp32, opset23, full logits)."""
    from sleb_deploy.export.stage import ExportConfig, export_checkpoint
    from sleb_deploy.models.load import resolve_model

    base = tmp_path_factory.mktemp("default-onnx")
    dense = resolve_model("smollm2-135m").location
    export_checkpoint(dense, base / "dense", ExportConfig())
    export_checkpoint(str(default_pruned), base / "pruned", ExportConfig())
    return {"dense": base / "dense", "pruned": base / "pruned", "dense_hf": Path(dense), "pruned_hf": default_pruned}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-goldens", action="store_true", help="rewrite tests/export/golden/*.json from the current exporter"
    )
