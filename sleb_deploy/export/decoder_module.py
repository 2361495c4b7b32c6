"""An explicit, export-friendly re-implementation of a Hugging Face decoder forward.

Why not export the HF model itself: its forward goes through transformers' ``Cache`` objects and mask
builders, which change between releases and trace into graphs with extra copies (e.g. a transposed,
head-expanded K cache per layer per step). This module reuses the HF model's own sub-modules (the
``nn.Linear``/``nn.Embedding`` weights are shared, not copied) and re-writes only the glue: rotary
embedding, masks, attention with an explicit ``present = concat(past, new)`` and the residual wiring.
``validate.validate_against_torch`` checks it numerically against the HF model for every family.

Two graph styles (``variant``):

* ``"opset23"``: attention as the ONNX ``Attention`` op (it takes ``past_key``/``past_value`` and returns
  the presents; GQA without expanding K/V), rotary as ``RotaryEmbedding``, RMSNorm as ``RMSNormalization``.
* ``"opset18"``: plain MatMul/Softmax attention. Query heads are grouped per KV head
  (``[B, Hkv, G*S, D] @ [B, Hkv, D, T]``) so the K/V cache is never repeated per query head.

``last_logits_only``: logits for the last position only, and the last block's queries, attention output,
MLP and residual for that position only (its K/V, and so its presents, still cover every position).

Every family difference is read from the family table (``models/adapters.py``: ``Adapter.traits``) or from
the config; nothing here branches on a family's name.

Padding semantics: a key is visible when it is not padding, not in the future, and (sliding layers)
inside the window. A query always sees itself, so the rows of left-padding queries are never fully
masked (a fully masked row would give NaN that then leaks into the cache through ``0 * NaN``). Values at
padding positions are therefore unspecified, as in HF.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from sleb_deploy.config import VARIANTS
from sleb_deploy.errors import UnsupportedModelError, UserInputError
from sleb_deploy.models.adapters import Adapter, ExportTraits, get_adapter

_STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

# How a derived initializer is made from the checkpoint tensors it replaces: ``(function, sources)``.
Derivation = tuple[Callable[[list[torch.Tensor]], torch.Tensor], list[torch.Tensor]]


def fused_transposed(weights: list[torch.Tensor]) -> torch.Tensor:
    """``[in, sum(out)]``: projection weights stacked along their outputs, then transposed for ``MatMul(x, W)``."""
    return torch.cat([w.t() for w in weights], dim=1)  # one strided copy (cat, then transpose: two)


def _transposed(weights: list[torch.Tensor]) -> torch.Tensor:
    (weight,) = weights
    return weight.t().contiguous()


def _stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(tensors)


def _register_derived(
    module: nn.Module, name: str, fn: Callable[[list[torch.Tensor]], torch.Tensor], sources: list[torch.Tensor]
) -> None:
    """Register ``fn(sources)`` as a (non-persistent) buffer and record the recipe in ``module.derived``:
    ``export/streamed.py`` rebuilds the same tensor from the checkpoint, one at a time, with the same ``fn``."""
    module.register_buffer(name, fn(sources) if sources else None, persistent=False)
    if sources:
        cast(dict[str, Derivation], module.derived)[name] = (fn, sources)


def _rope_type(params: dict[str, Any] | None) -> str:
    if not params:
        return "default"
    return str(params.get("rope_type", params.get("type", "default")))


class _Rope(nn.Module):
    """cos/sin from position ids with a precomputed ``inv_freq`` (static rope types only)."""

    inv_freq: torch.Tensor

    def __init__(self, inv_freq: torch.Tensor, scaling: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.scaling = float(scaling)
        self.rot_dim = 2 * int(inv_freq.shape[0])

    def tables(self, position_ids: torch.Tensor, dtype: torch.dtype, q_scale: float | None) -> RopeTables:
        """cos, sin of shape [B, S, rot_dim/2] in ``dtype`` (fp32 math, like HF); ``q_scale``: also the query's
        tables with that factor folded in (computed in fp32 before the cast)."""
        freqs = position_ids[..., None].float() * self.inv_freq
        cos = freqs.cos() * self.scaling
        sin = freqs.sin() * self.scaling
        if q_scale is None:
            return RopeTables(cos.to(dtype), sin.to(dtype), self.rot_dim)
        q_cos, q_sin = (cos * q_scale).to(dtype), (sin * q_scale).to(dtype)
        return RopeTables(cos.to(dtype), sin.to(dtype), self.rot_dim, q_cos, q_sin)


class RopeTables(NamedTuple):
    """One rope's tables for a forward: ``cos``/``sin`` [B, S, rot_dim/2] and, where the attention scale is
    folded into the query's rotary (``ExportDecoder.run``), ``q_cos``/``q_sin``: the same tables times the
    scale. Rotary is linear in its tables, so the query comes out rotated *and* scaled with no ``Mul`` of its
    own (one node per layer less, and the attention's GEMM then runs at alpha 1: ``_Layer.qkv_heads``)."""

    cos: torch.Tensor
    sin: torch.Tensor
    rot_dim: int
    q_cos: torch.Tensor | None = None
    q_sin: torch.Tensor | None = None


def _apply_rope(x: torch.Tensor, cos_h: torch.Tensor, sin_h: torch.Tensor, rot_dim: int) -> torch.Tensor:
    """HF ``rotate_half`` rotary on x [B, S, H, D]; cos_h/sin_h [B, S, rot/2]; partial rotary aware."""
    cos = torch.cat((cos_h, cos_h), dim=-1)[:, :, None, :]
    sin = torch.cat((sin_h, sin_h), dim=-1)[:, :, None, :]
    x_rot = x[..., :rot_dim]
    half = rot_dim // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + rotated * sin
    if rot_dim == x.shape[-1]:
        return out
    return torch.cat((out, x[..., rot_dim:]), dim=-1)


class _Norm(nn.Module):
    """RMSNorm in fp32 (HF llama/gemma semantics) or LayerNorm; ``kind`` is ``ExportTraits.norm``."""

    src: Any

    def __init__(self, src: Any, kind: str, use_op: bool) -> None:
        super().__init__()
        self.src = src
        self.kind = kind  # "rms", "rms_offset", "layer"
        self.use_op = use_op
        eps = getattr(src, "variance_epsilon", None)
        if eps is None:
            eps = getattr(src, "eps", 1e-6)
        self.eps = float(eps)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return self.src(x)
        w = self.src.weight
        dim = int(w.shape[0])
        if self.kind == "rms_offset":
            w32 = 1.0 + w.float()
            if self.use_op:
                return nn.functional.rms_norm(x.float(), (dim,), w32, self.eps).to(x.dtype)
            x32 = x.float()
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
            out: torch.Tensor = (y * w32).to(x.dtype)
            return out
        if self.use_op:
            # Weight as the op's scale: no ones-tensor built at run time and no separate Mul per norm.
            return nn.functional.rms_norm(x.float(), (dim,), w.float(), self.eps).to(x.dtype)
        else:
            x32 = x.float()
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        res: torch.Tensor = w * y.to(x.dtype)
        return res


class _Layer(nn.Module):
    """One decoder block; ``forward`` returns (hidden, present_key, present_value)."""

    qkv_wT: torch.Tensor
    qkv_b: torch.Tensor | None
    gate_up_wT: torch.Tensor
    gate_up_b: torch.Tensor | None

    attn: Any
    mlp: Any
    o_proj: Any
    act: Any

    def __init__(self, owner: ExportDecoder, hf_layer: Any, layer_idx: int) -> None:
        super().__init__()
        cfg = owner.cfg
        traits: ExportTraits = owner.traits
        self.traits = traits
        self.use_op = owner.variant == "opset23"
        self.n_heads = owner.n_heads
        self.n_kv = owner.n_kv
        self.head_dim = owner.head_dim
        attn = hf_layer.self_attn
        self.attn = attn
        self.o_proj = getattr(attn, traits.attn_out)
        self.mlp = getattr(hf_layer, traits.mlp_path) if traits.mlp_path else hf_layer
        layer_types = getattr(cfg, "layer_types", None)
        self.layer_type = layer_types[layer_idx] if layer_types else "full_attention"
        window = getattr(cfg, "sliding_window", None)
        sliding = traits.sliding == "every_layer" or self.layer_type == "sliding_attention"
        self.window = int(window) if sliding and window else 0
        self.scale = owner.scale
        self.softcap = float(getattr(cfg, "attn_logit_softcapping", None) or 0.0)
        self.act = owner.act
        use_norm_op = self.use_op

        def norm(name: str | None) -> _Norm | None:
            mod = getattr(hf_layer, name, None) if name else None
            return None if mod is None else _Norm(mod, traits.norm, use_norm_op)

        self.norm_attn, self.norm_mlp = norm(traits.pre_norms[0]), norm(traits.pre_norms[1])
        post = traits.post_norms or (None, None)
        self.post_attn, self.post_mlp = norm(post[0]), norm(post[1])
        # A post-LN block (OPT-350m) applies its norms after each residual add instead of before the sublayer.
        self.pre_ln = bool(getattr(cfg, traits.post_ln_flag)) if traits.post_ln_flag else True
        # Fused, pre-transposed weights as constants of their own: the graph then holds MatMul(x, W) with W an
        # initializer. Concatenating or transposing weights inside the graph leaves Transpose(Concat(W...))
        # nodes that ONNX Runtime folds at load but then does not pre-pack, measured ~30% slower per GEMM.
        # Costs a copy of these weights while exporting; the sources (``derived``'s) are not in the graph.
        self.derived: dict[str, Derivation] = {}
        if traits.qkv == "separate":
            projs = (attn.q_proj, attn.k_proj, attn.v_proj)
            _register_derived(self, "qkv_wT", fused_transposed, [p.weight for p in projs])
            _register_derived(self, "qkv_b", _stacked, [] if projs[0].bias is None else [p.bias for p in projs])
        if traits.mlp == "gated":
            gp, up = self.mlp.gate_proj, self.mlp.up_proj
            _register_derived(self, "gate_up_wT", fused_transposed, [gp.weight, up.weight])
            _register_derived(self, "gate_up_b", _stacked, [] if gp.bias is None else [gp.bias, up.bias])
        qn = getattr(attn, "q_norm", None)
        kn = getattr(attn, "k_norm", None)
        self.q_norm = None if qn is None else _Norm(qn, traits.norm, use_norm_op)
        self.k_norm = None if kn is None else _Norm(kn, traits.norm, use_norm_op)

    def _qkv_fused(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, (H + 2*Hkv) * D]: q, k, v side by side (one MatMul)."""
        if self.traits.qkv == "fused":
            return cast(torch.Tensor, self.attn.qkv_proj(x))
        qkv = torch.matmul(x, self.qkv_wT)
        if self.qkv_b is not None:
            qkv = qkv + self.qkv_b
        return qkv

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = self._qkv_fused(x)
        nq, nk = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        return qkv[..., :nq], qkv[..., nq : nq + nk], qkv[..., nq + nk :]

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.traits.mlp == "fc":
            return cast(torch.Tensor, self.mlp.fc2(self.act(self.mlp.fc1(x))))
        if self.traits.mlp == "gated_fused":
            gate, up = self.mlp.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate_up = torch.matmul(x, self.gate_up_wT)
            if self.gate_up_b is not None:
                gate_up = gate_up + self.gate_up_b
            gate, up = gate_up.chunk(2, dim=-1)
        return cast(torch.Tensor, self.mlp.down_proj(self.act(gate) * up))

    def qkv_heads(
        self, x: torch.Tensor, rope: RopeTables | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, H, S, D] times ``scale``, k and v [B, Hkv, S, D], with the q/k norms and rotary applied,
        ONNX-op style.

        The fused q|k|v projection is reshaped and transposed once, then split by heads; rotary and the
        q/k norms run on that 4-D layout. Per layer that is one Reshape/Transpose pair instead of one per
        q, k and v (the default model: 690 nodes instead of 871, 1-3% faster per decode step on ONNX
        Runtime CPU). The Attention op needs Q of the same rank as K/V, so Q is 4-D too. The query leaves
        scaled so that the attention runs with scale 1 (alpha 1 in its GEMMs; ``static_cache``'s docstring):
        through the rope's ``q_cos``/``q_sin`` when the run folded it there, else with a ``Mul``.
        """
        b, s = x.shape[0], x.shape[1]
        h, hk, d = self.n_heads, self.n_kv, self.head_dim
        qkv = self._qkv_fused(x).reshape(b, s, h + 2 * hk, d).transpose(1, 2)
        q4, k4, v4 = qkv.split([h, hk, hk], dim=1)
        if self.traits.query_prescale:
            q4 = q4 * self.scale  # scaled before the dot product (then attention scale 1.0), as HF OPT does
        if self.q_norm is not None and self.k_norm is not None:
            q4, k4 = self.q_norm(q4), self.k_norm(k4)
        folded = False
        if rope is not None:
            q_cos, q_sin = rope.cos, rope.sin
            if rope.q_cos is not None and rope.q_sin is not None:
                q_cos, q_sin, folded = rope.q_cos, rope.q_sin, True
            q4 = torch.onnx.ops.rotary_embedding(q4, q_cos, q_sin, rotary_embedding_dim=rope.rot_dim)
            k4 = torch.onnx.ops.rotary_embedding(k4, rope.cos, rope.sin, rotary_embedding_dim=rope.rot_dim)
        if scale != 1.0 and not folded:
            q4 = q4 * scale  # exact for power-of-two scales
        return q4, k4, v4

    def _attention_op(
        self,
        x: torch.Tensor,
        rope: RopeTables | None,
        allowed: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        scale: float,
        last_only: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention as the ONNX op, every head in the [B, heads, S, D] layout the KV cache has; the query comes
        pre-scaled (``qkv_heads``), the op's ``scale`` is 1."""
        b = x.shape[0]
        h, hk, d = self.n_heads, self.n_kv, self.head_dim
        q4, k4, v4 = self.qkv_heads(x, rope, scale)
        # KV concat stays outside the op: TensorRT's importer accepts only single-output Attention
        # nodes, so the op's own past/present I/O cannot be used.
        present_k = torch.cat((past_k, k4), dim=2)
        present_v = torch.cat((past_v, v4), dim=2)
        if last_only:
            q4, allowed = q4[:, :, -1:], allowed[:, :, -1:]
        y = torch.onnx.ops.attention(q4, present_k, present_v, allowed, q_num_heads=h, kv_num_heads=hk, scale=1.0)[0]
        return y.transpose(1, 2).reshape(b, q4.shape[2], h * d), present_k, present_v

    def _attention(
        self,
        x: torch.Tensor,
        rope: RopeTables | None,
        allowed: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        last_only: bool = False,
        write_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention output [B, Sq, H*D] and the presents; ``last_only``: queries of the last position only
        (Sq = 1; keys and values, and so the presents, still cover every position). ``write_indices``: the
        static-cache contract (``static_cache.attention``): past_k/past_v are the preallocated buffers."""
        b, s = x.shape[0], x.shape[1]
        h, hk, d = self.n_heads, self.n_kv, self.head_dim
        scale = 1.0 if self.traits.query_prescale else self.scale
        if write_indices is not None:
            from sleb_deploy.export import static_cache

            return static_cache.attention(self, x, rope, allowed, past_k, past_v, write_indices, scale, last_only)
        if self.use_op and self.softcap == 0.0:
            return self._attention_op(x, rope, allowed, past_k, past_v, scale, last_only)
        q, k, v = self._qkv(x)
        if self.traits.query_prescale:
            q = q * self.scale
        if self.q_norm is not None and self.k_norm is not None:
            q = self.q_norm(q.reshape(b, s, h, d)).reshape(b, s, h * d)
            k = self.k_norm(k.reshape(b, s, hk, d)).reshape(b, s, hk * d)
        q4 = q.reshape(b, s, h, d)
        k4 = k.reshape(b, s, hk, d)
        if rope is not None:
            q4 = _apply_rope(q4, rope.cos, rope.sin, rope.rot_dim)
            k4 = _apply_rope(k4, rope.cos, rope.sin, rope.rot_dim)
        present_k = torch.cat((past_k, k4.transpose(1, 2)), dim=2)
        present_v = torch.cat((past_v, v.reshape(b, s, hk, d).transpose(1, 2)), dim=2)
        if last_only:
            q4, allowed, s = q4[:, -1:], allowed[:, :, -1:], 1
        g = h // hk
        # [B, S, Hkv, G, D] -> [B, Hkv, G*S, D]: query heads grouped under their KV head, no K/V repeat.
        qg = q4.reshape(b, s, hk, g, d).permute(0, 2, 3, 1, 4).reshape(b, hk, g * s, d)
        scores = torch.matmul(qg, present_k.transpose(2, 3)) * scale
        t = present_k.shape[2]
        scores = scores.reshape(b, hk, g, s, t)
        if self.softcap:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.masked_fill(~allowed[:, :, None, :, :], torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.float(), dim=-1).to(q4.dtype).reshape(b, hk, g * s, t)
        out = torch.matmul(probs, present_v).reshape(b, hk, g, s, d).permute(0, 3, 1, 2, 4)
        return out.reshape(b, s, h * d), present_k, present_v

    def forward(
        self,
        hidden: torch.Tensor,
        rope: RopeTables | None,
        allowed: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        last_only: bool = False,
        write_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-LN (norm, sublayer, add), Gemma's sandwich (a norm after each sublayer too) or post-LN (add,
        then norm). ``last_only`` (the last block of a last-logits graph): every position feeds the presents,
        but only the last one goes on through attention's output, the MLP and the residual."""
        pre = self.pre_ln
        x = self.norm_attn(hidden) if pre and self.norm_attn is not None else hidden
        a, pk, pv = self._attention(x, rope, allowed, past_k, past_v, last_only, write_indices)
        a = self.o_proj(a)
        if last_only:
            hidden = hidden[:, -1:]
        if self.post_attn is not None:
            a = self.post_attn(a)
        hidden = hidden + a
        if not pre and self.norm_attn is not None:
            hidden = self.norm_attn(hidden)
        x = self.norm_mlp(hidden) if pre and self.norm_mlp is not None else hidden
        m = self._mlp(x)
        if self.post_mlp is not None:
            m = self.post_mlp(m)
        hidden = hidden + m
        if not pre and self.norm_mlp is not None:
            hidden = self.norm_mlp(hidden)
        return hidden, pk, pv


class ExportDecoder(nn.Module):
    """Flat-signature decoder: (input_ids, attention_mask, position_ids, *past) -> (logits, *presents)."""

    lm_head_wT: torch.Tensor

    cfg: Any
    act: Any
    lm_head: Any
    embed: Any
    pos_embed: Any
    project_in: Any
    project_out: Any

    def __init__(self, model: Any, *, variant: str = "opset23", last_logits_only: bool = False) -> None:
        super().__init__()
        cfg = model.config
        adapter: Adapter = get_adapter(str(getattr(cfg, "model_type", "")))
        if variant not in VARIANTS:
            raise UserInputError(f"unknown graph variant {variant!r} (choose from {', '.join(VARIANTS)})")
        traits = adapter.traits
        self.cfg = cfg
        self.traits = traits
        self.variant = variant
        self.last_logits_only = last_logits_only
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        if traits.attn_scale == "query_pre_attn_scalar":
            self.scale = float(cfg.query_pre_attn_scalar) ** -0.5
        else:
            self.scale = self.head_dim**-0.5
        from transformers.activations import ACT2FN

        act_name = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
        act_name = act_name or getattr(cfg, "activation_function", "relu")
        self.act = ACT2FN[act_name]
        self.lm_head = model.lm_head
        # Its own pre-transposed copy even when tied to the embedding (as Optimum's graph has): a Transpose of
        # the shared embedding would be folded by ONNX Runtime but not pre-packed (measured 38 vs 29 ms at S=128).
        self.derived: dict[str, Derivation] = {}
        _register_derived(self, "lm_head_wT", _transposed, [model.lm_head.weight])
        self.final_softcap = float(getattr(cfg, "final_logit_softcapping", None) or 0.0)
        self.embed = adapter.resolve(model, traits.embed_path)
        self.pos_embed = adapter.resolve(model, traits.pos_embed_path)
        self.project_in = adapter.resolve(model, traits.project_in_path)
        self.project_out = adapter.resolve(model, traits.project_out_path)
        final_norm = adapter.final_norm(model)
        self.final_norm = None if final_norm is None else _Norm(final_norm, traits.norm, variant == "opset23")
        self.ropes = nn.ModuleDict()
        rotary = adapter.resolve(model, traits.rotary_path)
        if rotary is not None:
            self._init_ropes(rotary)
        hf_layers = list(adapter.blocks(model))
        self.layers = nn.ModuleList(_Layer(self, lyr, i) for i, lyr in enumerate(hf_layers))
        self.num_layers = len(hf_layers)
        # The head's source weight is in the graph only as the embedding it is tied to.
        tied = model.lm_head.weight is getattr(self.embed, "weight", None)
        self.head_sources: list[torch.Tensor] = [] if tied else [model.lm_head.weight]

    def _init_ropes(self, rotary: Any) -> None:
        """One ``_Rope`` per layer type when the config keys rope parameters by layer type (Gemma-3), else one."""
        params = self.cfg.rope_parameters
        layer_types = getattr(self.cfg, "layer_types", None)
        if isinstance(params, dict) and layer_types and all(lt in params for lt in set(layer_types)):
            for lt in sorted(set(layer_types)):
                rtype = _rope_type(params.get(lt))
                if rtype not in _STATIC_ROPE_TYPES:
                    raise UnsupportedModelError(f"rope_type {rtype!r} ({lt}) is not supported for ONNX export")
                inv = getattr(rotary, f"{lt}_inv_freq")
                self.ropes[lt] = _Rope(inv, float(getattr(rotary, f"{lt}_attention_scaling")))
            return
        rtype = _rope_type(params)
        if rtype not in _STATIC_ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_type {rtype!r} is not supported for ONNX export (position-dependent scaling); "
                f"supported: {', '.join(_STATIC_ROPE_TYPES)}"
            )
        self.ropes["full_attention"] = _Rope(rotary.inv_freq, float(rotary.attention_scaling))

    def initializer_bytes(self) -> int:
        """Bytes of the tensors the exported graph holds as initializers: every weight the forward reads
        (tied weights once) plus the fused, pre-transposed copies, minus the sources those copies replace.
        This is what decides external data: the untied head copy alone is 0.54 GB for a Qwen2.5-0.5B shape."""
        replaced = {id(t) for t in self.head_sources}
        for layer in self.layers:
            replaced.update(id(t) for _, sources in cast(_Layer, layer).derived.values() for t in sources)
        seen: set[int] = set()
        total = 0
        for t in [*self.parameters(), *self.buffers()]:
            if id(t) in replaced or id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return total

    def _allowed(self, attention_mask: torch.Tensor, s: int, window: int) -> torch.Tensor:
        """Bool [B, 1, S, T]: causal (+window) and padding mask; the diagonal is always visible."""
        t = attention_mask.shape[1]
        q_idx = torch.arange(s, device=attention_mask.device) + (t - s)
        k_idx = torch.arange(t, device=attention_mask.device)
        diff = q_idx[:, None] - k_idx[None, :]
        causal = diff >= 0
        if window:
            causal = causal & (diff < window)
        keep = attention_mask.bool()[:, None, None, :] & causal[None, None, :, :]
        return keep | (diff == 0)[None, None, :, :]

    def _rope_q_scale(self, static: bool) -> float | None:
        """The attention scale to fold into the query's rotary tables (``RopeTables``), or None: only where
        every layer's attention goes through ``_Layer.qkv_heads`` (the static contract, or the ``Attention``
        op without softcapping), the scale is not 1 and the query is not already scaled (OPT). A rope that
        does not rotate the whole head (partial rotary) keeps the ``Mul`` (``run``)."""
        if self.traits.query_prescale or self.scale == 1.0:
            return None
        layers = [cast(_Layer, layer) for layer in self.layers]
        if static or all(layer.use_op and layer.softcap == 0.0 for layer in layers):
            return self.scale
        return None

    def _mask(
        self, attention_mask: torch.Tensor, s: int, window: int, write_indices: torch.Tensor | None
    ) -> torch.Tensor:
        """The concatenating contract's mask (``write_indices`` is the static contract's: its subclass)."""
        return self._allowed(attention_mask, s, window)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *past: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        return self.run(input_ids, attention_mask, position_ids, past)

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...],
        write_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The forward; ``write_indices`` given: the static-cache contract (``static_cache.StaticExportDecoder``),
        ``past`` are the preallocated buffers and ``attention_mask`` covers them."""
        s = input_ids.shape[1]
        hidden = self.embed(input_ids)  # Gemma2/3's embedding module applies its sqrt(hidden) scale itself
        dtype = hidden.dtype
        if self.project_in is not None:
            hidden = self.project_in(hidden)
        if self.pos_embed is not None:
            # Learned positions (OPT) count non-padding tokens from the mask, as HF does; the table is offset.
            # (equal to position_ids at every non-padding position, which is all the static contract uses).
            t = attention_mask.shape[1]
            if write_indices is None:
                pos = (torch.cumsum(attention_mask, dim=1) * attention_mask - 1)[:, t - s :]
            else:
                pos = position_ids
            offset = int(getattr(self.pos_embed, "offset", 0))
            hidden = hidden + self.pos_embed.weight[pos + offset].to(dtype)
        masks: dict[int, torch.Tensor] = {}
        ropes: dict[str, RopeTables] = {}
        q_scale = self._rope_q_scale(write_indices is not None)
        for name, rope_m in self.ropes.items():
            rope = cast(_Rope, rope_m)
            ropes[name] = rope.tables(position_ids, dtype, q_scale if rope.rot_dim == self.head_dim else None)
        presents: list[torch.Tensor] = []
        for i, layer_m in enumerate(self.layers):
            layer = cast(_Layer, layer_m)
            if layer.window not in masks:
                masks[layer.window] = self._mask(attention_mask, s, layer.window, write_indices)
            rope_i = None
            if ropes:
                rope_i = ropes.get(layer.layer_type, ropes.get("full_attention"))
            last_only = self.last_logits_only and i == self.num_layers - 1
            hidden, pk, pv = layer(
                hidden, rope_i, masks[layer.window], past[2 * i], past[2 * i + 1], last_only, write_indices
            )
            presents += [pk, pv]
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        if self.project_out is not None:
            hidden = self.project_out(hidden)
        logits = torch.matmul(hidden, self.lm_head_wT)
        if getattr(self.lm_head, "bias", None) is not None:
            logits = logits + self.lm_head.bias
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return (logits, *presents)


def empty_past(model: ExportDecoder, batch: int, dtype: torch.dtype, past_len: int = 0) -> list[torch.Tensor]:
    """Zero past tensors [B, Hkv, P, D] for every layer (key, value interleaved)."""
    shape = (batch, model.n_kv, past_len, model.head_dim)
    return [torch.zeros(shape, dtype=dtype) for _ in range(2 * model.num_layers)]


__all__ = ["VARIANTS", "ExportDecoder", "empty_past"]
