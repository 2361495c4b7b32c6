"""Tiny llama exports (built from configs, no downloads) shared by the engine tests, made once per session."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest


class OnnxDirs:
    """Exports a tiny llama per (dtype, layers) on first use; fp16 ones get an export.json like the stage's."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.done: dict[tuple[str, int], Path] = {}

    def get(self, dtype: str = "fp32", num_layers: int = 3) -> Path:
        from tiny import tiny_model

        from sleb_deploy.export.onnx_graph import export_decoder_onnx

        key = (dtype, num_layers)
        if key not in self.done:
            out = self.root / f"llama-{dtype}-{num_layers}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                spec = export_decoder_onnx(tiny_model("llama", num_layers=num_layers), out, dtype=dtype)
            if dtype != "fp32":  # the fp32 ones stand for an ONNX made elsewhere (no manifest)
                (out / "export.json").write_text(json.dumps({"schema": "test", "graph": spec.to_dict()}))
            self.done[key] = out
        return self.done[key]


@pytest.fixture(scope="session")
def onnx_dirs(tmp_path_factory: pytest.TempPathFactory) -> OnnxDirs:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    return OnnxDirs(tmp_path_factory.mktemp("engine-onnx"))
