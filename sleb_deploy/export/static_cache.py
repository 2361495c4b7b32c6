"""The static KV-cache graph (``kv_cache="static"``): preallocated K/V buffers updated in place.

Why: the concatenating contract (``present = concat(past, new)``) reads and writes the whole cache once more
every decode step besides the attention that must read it; at 2K tokens of context that copy is most of a
decode step on ONNX Runtime CPU (DESIGN.md section 8). Here each layer's K and V are buffers
``[batch, kv_heads, max_cache_len, head_dim]``: ONNX opset 24 ``TensorScatter`` writes this step's rows at
``write_indices`` (per row), and attention reads the whole buffer under a mask built from ``attention_mask``
(which covers the buffer) and the write positions: causal, padding (left or right) and sliding window. A host
binds the same buffer as input and output (ONNX Runtime then updates it in place). One graph serves prefill
and decode.

Attention comes in two formulations (``contract.static_attention`` picks one from the buffer length; export.json
records it as ``graph.attention``), both with the query pre-scaled so that every GEMM runs with alpha 1 (the
scale folded into the query's rotary tables, ``decoder_module.RopeTables``):

- ``op``: the opset-24 ``Attention`` op (``scale`` 1, a boolean mask, ``nonpad_kv_seqlen``), what TensorRT
  fuses with its KV-cache update layer (fixed ``max_cache_len``).
- ``matmul``: MatMul(Q, Kᵀ) + additive mask -> Softmax -> MatMul(P, V), the G query heads of a KV head as a
  broadcast axis (``[B, Hkv, G, S, D]`` against ``[B, Hkv, 1, T, D]``), so K/V are never repeated and, at
  decode, every GEMM is one row: MLAS's matrix-vector kernels read K and V straight from the buffer (ONNX
  Runtime turns the Transpose into ``FusedMatMul`` ``transB``). ONNX Runtime 1.32's CPU ``Attention`` kernel
  instead runs Q·Kᵀ with alpha = scale, which MLAS only serves through its packing GEMM (it copies K into a
  packed panel per query head): 1.2-1.3x slower at decode (bench/results/static_cache.md).

``TensorScatter`` and ``Attention`` are emitted with ``torch.onnx.ops.symbolic`` (torch 2.13's
``torch.onnx.ops.attention`` is the opset-23 signature, without ``nonpad_kv_seqlen``); every op is in the
standard ONNX domain, so the graph stays portable (``onnx_graph.check_portable``). The rest of the forward is
``decoder_module.ExportDecoder``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from sleb_deploy.contract import (
    ATTENTION_MATMUL,
    ATTENTION_OP,
    STATIC_ATTENTION_FORMS,
    STATIC_OPSET,
    TOKEN_INPUTS,
    WRITE_INDICES,
    past_names,
)
from sleb_deploy.export.decoder_module import ExportDecoder

if TYPE_CHECKING:
    from sleb_deploy.export.decoder_module import RopeTables, _Layer


def allowed(attention_mask: torch.Tensor, write_indices: torch.Tensor, s: int, window: int) -> torch.Tensor:
    """Bool [B, 1, S, T] over the whole buffer (T = ``attention_mask``'s length): key slot k is visible to the
    query written at slot ``write_indices[b] + j`` when it holds a token, is not after it and (sliding layers)
    is inside the window. A query always sees itself, so no row is fully masked."""
    t = attention_mask.shape[1]
    q_idx = write_indices[:, None] + torch.arange(s, device=attention_mask.device)[None, :]  # [B, S]
    k_idx = torch.arange(t, device=attention_mask.device)
    diff = q_idx[:, :, None] - k_idx[None, None, :]  # [B, S, T]
    causal = diff >= 0
    if window:
        causal = causal & (diff < window)
    keep = (attention_mask.bool()[:, None, :] & causal) | (diff == 0)
    return keep[:, None]


def additive(keep: torch.Tensor) -> torch.Tensor:
    """The ``matmul`` form's mask: float32 0 where ``keep``, the lowest finite float32 elsewhere (added to the
    scores in float32, before the softmax)."""
    return torch.where(keep, 0.0, torch.finfo(torch.float32).min)


def _scatter(cache: torch.Tensor, update: torch.Tensor, write_indices: torch.Tensor) -> torch.Tensor:
    """ONNX ``TensorScatter`` (mode linear, axis -2): ``update``'s rows written into ``cache`` at each row's index."""
    return torch.onnx.ops.symbolic(
        "TensorScatter", (cache, update, write_indices), {}, dtype=cache.dtype, shape=cache.shape, version=STATIC_OPSET
    )


def attention(
    layer: _Layer,
    x: torch.Tensor,
    rope: RopeTables | None,
    mask: torch.Tensor,
    cache_k: torch.Tensor,
    cache_v: torch.Tensor,
    write_indices: torch.Tensor,
    scale: float,
    last_only: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's attention over its buffers: (output [B, Sq, H*D], updated key buffer, updated value buffer).
    A boolean ``mask`` (``allowed``) selects the ``op`` form, an additive one (``additive``) the ``matmul``
    form; ``StaticExportDecoder`` builds the mask of its form once per window."""
    b, s = x.shape[0], x.shape[1]
    h, hk, d = layer.n_heads, layer.n_kv, layer.head_dim
    q4, k4, v4 = layer.qkv_heads(x, rope, scale)  # q pre-scaled: alpha 1 in the GEMMs (module docstring)
    new_k = _scatter(cache_k, k4, write_indices)
    new_v = _scatter(cache_v, v4, write_indices)
    if last_only:
        q4, mask = q4[:, :, -1:], mask[:, :, -1:]
    sq = q4.shape[2]
    if mask.dtype == torch.bool:
        attrs: dict[str, int | float | str | bool | Sequence[int] | Sequence[float] | Sequence[str] | Sequence[bool]]
        attrs = {"q_num_heads": h, "kv_num_heads": hk, "scale": 1.0}
        if layer.softcap:
            attrs["softcap"] = layer.softcap
        y = torch.onnx.ops.symbolic(
            "Attention",
            (q4, new_k, new_v, mask, None, None, write_indices + s),
            attrs,
            dtype=q4.dtype,
            shape=q4.shape,
            version=STATIC_OPSET,
        )
        return y.transpose(1, 2).reshape(b, sq, h * d), new_k, new_v
    g = h // hk
    # Query heads [B, H, S, D] -> [B, Hkv, G, S, D]: against K/V [B, Hkv, 1, T, D] the G heads broadcast.
    scores = torch.matmul(q4.reshape(b, hk, g, sq, d), new_k.unsqueeze(2).transpose(3, 4))
    if layer.softcap:
        scores = torch.tanh(scores / layer.softcap) * layer.softcap
    probs = torch.softmax(scores.float() + mask[:, :, None], dim=-1).to(q4.dtype)
    out = torch.matmul(probs, new_v.unsqueeze(2))  # [B, Hkv, G, S, D]
    return out.permute(0, 3, 1, 2, 4).reshape(b, sq, h * d), new_k, new_v


class StaticExportDecoder(ExportDecoder):
    """Flat signature of the static contract: (input_ids, attention_mask, position_ids, write_indices, *buffers)
    -> (logits, *updated buffers). Needs the op-based variant (``opset23``; exported at opset 24).
    ``attention``: the formulation (``contract.STATIC_ATTENTION_FORMS``)."""

    def __init__(
        self, model: Any, *, variant: str = "opset23", last_logits_only: bool = False, attention: str = ATTENTION_MATMUL
    ) -> None:
        super().__init__(model, variant=variant, last_logits_only=last_logits_only)
        if attention not in STATIC_ATTENTION_FORMS:
            raise ValueError(f"unknown static attention form {attention!r}")
        self.attention = attention

    def _mask(
        self, attention_mask: torch.Tensor, s: int, window: int, write_indices: torch.Tensor | None
    ) -> torch.Tensor:
        if write_indices is None:
            raise ValueError("the static contract needs write_indices")
        keep = allowed(attention_mask, write_indices, s, window)
        return keep if self.attention == ATTENTION_OP else additive(keep)

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        write_indices: torch.Tensor,
        *cache: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        return self.run(input_ids, attention_mask, position_ids, cache, write_indices)


def example_inputs(
    wrapper: ExportDecoder, tdtype: torch.dtype, axes: dict[str, dict[int, str]], max_cache_len: int | None
) -> tuple[list[torch.Tensor], tuple[Any, ...]]:
    """Example inputs (a decode-like step of 3 tokens written at slot 5 of an 11-slot buffer, or of
    ``max_cache_len`` slots) and the dynamic shapes of the static contract, in the graph's input order."""
    batch, seq, write = 2, 3, 5
    t = max_cache_len if max_cache_len is not None else 11
    write = min(write, t - seq)
    mask = torch.zeros(batch, t, dtype=torch.long)
    mask[:, : write + seq] = 1
    example: list[torch.Tensor] = [
        torch.ones(batch, seq, dtype=torch.long),
        mask,
        torch.arange(write, write + seq).repeat(batch, 1),
        torch.full((batch,), write, dtype=torch.long),
        *empty_cache(wrapper, batch, tdtype, t),
    ]
    dynamic_shapes = (
        *(axes[n] for n in (*TOKEN_INPUTS, WRITE_INDICES)),
        tuple(axes[n] for n in past_names(wrapper.num_layers)),
    )
    return example, dynamic_shapes


def empty_cache(model: ExportDecoder, batch: int, dtype: torch.dtype, max_cache_len: int) -> list[torch.Tensor]:
    """Zero buffers [B, Hkv, max_cache_len, D] for every layer (key, value interleaved)."""
    shape = (batch, model.n_kv, max_cache_len, model.head_dim)
    return [torch.zeros(shape, dtype=dtype) for _ in range(2 * model.num_layers)]


__all__ = ["StaticExportDecoder", "additive", "allowed", "attention", "empty_cache", "example_inputs"]
