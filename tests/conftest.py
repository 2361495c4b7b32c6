from __future__ import annotations

from pathlib import Path

import pytest
from tiny import TEXT, save_checkpoint, tiny_model, train_tokenizer


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer()


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A tiny llama checkpoint on disk whose block 3 is an exact identity."""
    from tiny import make_identity

    model = tiny_model("llama", num_layers=6)
    make_identity(model, 3)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny-llama")
