"""A local safetensors checkpoint read lazily: headers at open, each tensor when asked for (one file, a sharded
index, or the ``*.safetensors`` files of a directory). Used by the streamed export and the streamed scorer."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sleb_deploy.errors import UserInputError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointTensors:
    """A safetensors checkpoint's tensors by name: headers read at open, each tensor read when asked for.

    ``safe_open`` maps the file and a tensor it returns is backed by the mapping, so the memory a read costs
    is the tensors still referenced, not the file.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index = self.directory / INDEX
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.directory / SINGLE).is_file():
            files = [SINGLE]
        else:
            files = sorted(p.name for p in self.directory.glob("*.safetensors"))
        if not files:
            raise UserInputError(
                f"{self.directory} has no .safetensors weights: the streamed scorer reads blocks from them; "
                "use --scorer cached (or convert the checkpoint with save_pretrained)"
            )
        self.file: dict[str, Path] = {}
        self.header: dict[str, dict[str, Any]] = {}
        for name in files:
            path = self.directory / name
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            for key, info in header.items():
                self.file[key] = path
                self.header[key] = info

    def keys(self) -> list[str]:
        return list(self.file)

    def nbytes(self, key: str, dtype: torch.dtype | None = None) -> int:
        """Bytes of ``key`` as stored, or at ``dtype`` when it is a floating tensor."""
        info = self.header[key]
        stored = int(info["data_offsets"][1]) - int(info["data_offsets"][0])
        source = SAFETENSORS_DTYPES[info["dtype"]]
        if dtype is None or not source.is_floating_point:
            return stored
        return stored // source.itemsize * dtype.itemsize

    def float_dtype(self) -> torch.dtype:
        """The dtype of the largest floating tensor (the checkpoint's precision)."""
        floats = [k for k, v in self.header.items() if SAFETENSORS_DTYPES[v["dtype"]].is_floating_point]
        return SAFETENSORS_DTYPES[self.header[max(floats, key=self.nbytes)]["dtype"]]

    def get(self, key: str) -> torch.Tensor:
        """One tensor as stored (backed by the file's mapping)."""
        from safetensors import safe_open

        with safe_open(str(self.file[key]), framework="pt") as f:
            tensor: torch.Tensor = f.get_tensor(key)
        return tensor

    def read(self, keys: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The tensors ``keys`` on ``device``; floating ones cast to ``dtype``."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.file[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for path, names in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for key in names:
                    t = f.get_tensor(key)
                    out[key] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        return out


def has_safetensors(directory: Path) -> bool:
    return (Path(directory) / INDEX).is_file() or (Path(directory) / SINGLE).is_file()
