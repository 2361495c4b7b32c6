"""One small adapter per `config.model_type`: where the decoder blocks live and which config lists are per block.

Chosen by `model_type`, never by a substring of the model name (the official SLEB code does the latter and
silently does nothing for families it does not know). Everything else SLEB needs, running a subset of the
blocks, is generic: `blocks_view` swaps the `ModuleList` and slices the per-block config the same way the
final removal does, so the model's own forward (masks, rotary, norms, head) runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from sleb_deploy.errors import UnsupportedModelError


@dataclass(frozen=True)
class Adapter:
    """Where a family keeps its blocks; `per_block_keys` are config lists with one entry per block."""

    model_type: str
    blocks_path: str
    final_norm_path: str
    per_block_keys: tuple[str, ...] = ("layer_types",)

    def _resolve(self, model: nn.Module, path: str) -> Any:
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part)
        return obj

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        blocks = self._resolve(model, self.blocks_path)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{self.blocks_path} of {type(model).__name__} is not a ModuleList")
        return blocks

    def set_blocks(self, model: nn.Module, blocks: nn.ModuleList) -> None:
        parent_path, _, name = self.blocks_path.rpartition(".")
        setattr(self._resolve(model, parent_path), name, blocks)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        norm = self._resolve(model, self.final_norm_path)
        return norm if isinstance(norm, nn.Module) else None


_ADAPTERS: dict[str, Adapter] = {
    a.model_type: a
    for a in (
        Adapter("llama", "model.layers", "model.norm"),
        Adapter("mistral", "model.layers", "model.norm"),
        Adapter("qwen2", "model.layers", "model.norm"),
        Adapter("qwen3", "model.layers", "model.norm"),
        Adapter("phi3", "model.layers", "model.norm"),
        Adapter("gemma2", "model.layers", "model.norm"),
        Adapter("gemma3_text", "model.layers", "model.norm"),
        Adapter("opt", "model.decoder.layers", "model.decoder.final_layer_norm"),
    )
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_ADAPTERS))


def get_adapter(model_type: str) -> Adapter:
    """The adapter for `model_type`, or an error that names the supported ones."""
    try:
        return _ADAPTERS[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type '{model_type}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        ) from None


def config_of(model: nn.Module) -> Any:
    """The model's HF config (typed loosely: every family has its own config class)."""
    return getattr(model, "config")  # noqa: B009


def adapter_for(model: nn.Module) -> Adapter:
    return get_adapter(str(config_of(model).model_type))


def renumber_layer_idx(blocks: Sequence[nn.Module]) -> None:
    """Give every attention module the index of its block, so the KV cache stays contiguous.

    Without this, a pruned model indexes cache slots of deleted blocks (transformers issue #30508).
    """
    for i, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                setattr(module, "layer_idx", i)  # noqa: B010


def _apply(model: nn.Module, adapter: Adapter, blocks: list[nn.Module], config_lists: dict[str, list[Any]]) -> None:
    adapter.set_blocks(model, nn.ModuleList(blocks))
    config_of(model).num_hidden_layers = len(blocks)
    for key, values in config_lists.items():
        setattr(config_of(model), key, values)
    renumber_layer_idx(blocks)


def _sliced_lists(model: nn.Module, adapter: Adapter, keep: Sequence[int], n: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for key in adapter.per_block_keys:
        values = getattr(config_of(model), key, None)
        if isinstance(values, (list, tuple)) and len(values) == n:
            out[key] = [values[i] for i in keep]
    return out


def remove_blocks(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the blocks `keep` (original indices, ascending), for good: config and layer_idx updated."""
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    n = len(blocks)
    _apply(model, adapter, [blocks[i] for i in keep], _sliced_lists(model, adapter, keep, n))


@contextmanager
def blocks_view(model: nn.Module, keep: Sequence[int]) -> Iterator[None]:
    """Run the model with only the blocks `keep`, then restore it exactly (blocks, config, layer_idx)."""
    adapter = adapter_for(model)
    blocks = adapter.blocks(model)
    n = len(blocks)
    original = list(blocks)
    saved = {key: getattr(config_of(model), key) for key in adapter.per_block_keys if hasattr(config_of(model), key)}
    saved_n = config_of(model).num_hidden_layers
    _apply(model, adapter, [original[i] for i in keep], _sliced_lists(model, adapter, keep, n))
    try:
        yield
    finally:
        adapter.set_blocks(model, blocks)
        config_of(model).num_hidden_layers = saved_n
        for key, values in saved.items():
            setattr(config_of(model), key, values)
        renumber_layer_idx(original)
