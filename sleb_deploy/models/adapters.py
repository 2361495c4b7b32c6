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
class ExportTraits:
    """How a family's forward is wired, as data: the ONNX exporter (``export/decoder_module.py``) reads these
    and never branches on a family name. Things every family spells the same way in its config (sliding
    windows' ``layer_types``, ``attn_logit_softcapping``, ``final_logit_softcapping``, per-layer-type rope
    parameters, q/k norms) are read from the config and the modules, not listed here.
    """

    norm: str = "rms"  # "rms": x * w (fp32 math); "rms_offset": x * (1 + w) (Gemma); "layer": LayerNorm (OPT)
    qkv: str = "separate"  # "separate": q_proj/k_proj/v_proj, fused by the exporter; "fused": qkv_proj (Phi-3)
    mlp: str = "gated"  # "gated": gate_proj/up_proj/down_proj; "gated_fused": gate_up_proj (Phi-3); "fc": fc1/fc2
    mlp_path: str = "mlp"  # where the MLP's linears live, relative to the block ("" = on the block itself)
    attn_out: str = "o_proj"  # the attention output projection (OPT: out_proj)
    pre_norms: tuple[str, str] = ("input_layernorm", "post_attention_layernorm")  # before attention, before MLP
    post_norms: tuple[str, str] | None = None  # Gemma's sandwich: after attention, after the MLP
    post_ln_flag: str | None = None  # config flag that is False for post-LN blocks (OPT: do_layer_norm_before)
    query_prescale: bool = False  # q is scaled before the dot product, the attention scale is then 1 (OPT)
    attn_scale: str = "head_dim"  # "head_dim": head_dim**-0.5; "query_pre_attn_scalar": its **-0.5 (Gemma)
    rotary_path: str | None = "model.rotary_emb"  # the rotary module (None: learned positions)
    sliding: str = "layer_types"  # which layers use config.sliding_window: "layer_types" | "every_layer"
    embed_path: str = "model.embed_tokens"
    pos_embed_path: str | None = None  # learned positions' table (OPT)
    project_in_path: str | None = None  # OPT-350m's embedding projections
    project_out_path: str | None = None


_GEMMA = ExportTraits(
    norm="rms_offset",
    pre_norms=("input_layernorm", "pre_feedforward_layernorm"),
    post_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
    attn_scale="query_pre_attn_scalar",
)
_OPT = ExportTraits(
    norm="layer",
    mlp="fc",
    mlp_path="",
    attn_out="out_proj",
    pre_norms=("self_attn_layer_norm", "final_layer_norm"),
    post_ln_flag="do_layer_norm_before",
    query_prescale=True,
    rotary_path=None,
    embed_path="model.decoder.embed_tokens",
    pos_embed_path="model.decoder.embed_positions",
    project_in_path="model.decoder.project_in",
    project_out_path="model.decoder.project_out",
)


@dataclass(frozen=True)
class Adapter:
    """One row of the family table: where a family keeps its blocks, which config lists are per block,
    how its forward is wired for export (``traits``), and how its calibration windows start (``window_bos``:
    "always" where the model was trained with BOS at the start of every sequence and scores far worse
    without it, e.g. Gemma; "never" keeps the official SLEB code's stream windows)."""

    model_type: str
    blocks_path: str = "model.layers"
    final_norm_path: str = "model.norm"
    per_block_keys: tuple[str, ...] = ("layer_types",)
    traits: ExportTraits = ExportTraits()
    window_bos: str = "never"

    def resolve(self, model: nn.Module, path: str | None) -> Any:
        """The sub-module at a dotted ``path`` (None when the path is None or a part is missing/None)."""
        if not path:
            return None
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        blocks = self.resolve(model, self.blocks_path)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{self.blocks_path} of {type(model).__name__} is not a ModuleList")
        return blocks

    def set_blocks(self, model: nn.Module, blocks: nn.ModuleList) -> None:
        parent_path, _, name = self.blocks_path.rpartition(".")
        setattr(self.resolve(model, parent_path), name, blocks)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        norm = self.resolve(model, self.final_norm_path)
        return norm if isinstance(norm, nn.Module) else None


_ADAPTERS: dict[str, Adapter] = {
    a.model_type: a
    for a in (
        Adapter("llama"),
        Adapter("mistral", traits=ExportTraits(sliding="every_layer")),
        Adapter("qwen2"),
        Adapter("qwen3"),
        Adapter("phi3", traits=ExportTraits(qkv="fused", mlp="gated_fused", sliding="every_layer")),
        Adapter("gemma2", traits=_GEMMA, window_bos="always"),
        Adapter("gemma3_text", traits=_GEMMA, window_bos="always"),
        Adapter("opt", "model.decoder.layers", "model.decoder.final_layer_norm", traits=_OPT),
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


def family_window_bos(model_type: str) -> str:
    """How a family's calibration windows start by default ("never" for a family without a row)."""
    adapter = _ADAPTERS.get(model_type)
    return adapter.window_bos if adapter is not None else "never"


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
