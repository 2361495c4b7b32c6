"""Numerical check of an exported decoder graph against the Hugging Face model it came from.

Why a chained check: a graph can match on a single prefill and still be wrong for decode (wrong past
length arithmetic, rope offsets, mask alignment). We run prefill with left padding at batch > 1, then
feed the graph's own ``present.*`` back as ``past_key_values.*`` for a few decode steps, and compare
every step with the HF model's logits and K/V at the same positions (``Reference``: one HF forward over the
whole sequence). Only non-padding positions are compared: values at padding positions are unspecified (HF
and the graph mask them differently, neither uses them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from sleb_deploy import contract
from sleb_deploy._optional import require
from sleb_deploy.models.adapters import get_adapter


def make_inputs(
    batch: int, prompt_len: int, vocab: int, *, left_pad: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts; row r gets ``r`` left-padding tokens (capped) when ``left_pad``."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, prompt_len), generator=gen)
    mask = torch.ones(batch, prompt_len, dtype=torch.long)
    if left_pad:
        for r in range(batch):
            pad = min(r * 2, prompt_len - 1)
            mask[r, :pad] = 0
            ids[r, :pad] = 0
    return ids, mask


def _to_np(t: torch.Tensor) -> np.ndarray:
    out: np.ndarray = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
    return out


def checked_sequence(
    batch: int, prompt_len: int, decode_steps: int, vocab: int, *, left_pad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of the whole checked sequence: the prompts (``make_inputs``), then one random token per
    decode step in every row (the steps' tokens do not depend on the outputs, so they are known up front)."""
    ids, mask = make_inputs(batch, prompt_len, vocab, left_pad=left_pad)
    gen = torch.Generator().manual_seed(1)
    steps = [torch.randint(1, vocab, (batch, 1), generator=gen) for _ in range(decode_steps)]
    return torch.cat((ids, *steps), dim=1), torch.cat((mask, torch.ones(batch, decode_steps, dtype=torch.long)), 1)


class Reference:
    """The HF model's logits and K/V over the whole checked sequence, from ONE forward.

    By causality the logits and K/V at position p depend on tokens <= p only, so one forward over prompt +
    decode tokens gives what a prefill and chained decode steps of the HF model would (to fp rounding), at a
    third of the cost; the graph is still run step by step on its own presents. That matters for big models,
    whose reference streams every weight from disk per forward (``streamed.offloaded_reference``)."""

    def __init__(self, model: Any, ids: torch.Tensor, mask: torch.Tensor) -> None:
        cfg = model.config
        # Learned positions (OPT) come from the mask inside HF's forward, which takes no position_ids for them.
        learned = get_adapter(str(cfg.model_type)).traits.pos_embed_path is not None
        self.mask = mask.numpy()
        pos = contract.position_ids(self.mask, ids.shape[1])
        with torch.no_grad():
            ref = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=None if learned else torch.from_numpy(pos),
                use_cache=True,
            )
        self.logits = _to_np(ref.logits)
        self.cache = ref.cache
        self.length = ids.shape[1]

    def logits_diff(self, got: np.ndarray, start: int, end: int) -> float:
        """Max |diff| of a step's logits (positions ``start:end``; a last-logits graph: ``end - 1``) over the
        positions that are real tokens (padding rows' logits are not compared)."""
        if got.shape[1] == 1 and end - start != 1:
            start = end - 1
        ref, valid = self.logits[:, start:end], self.mask[:, start:end].astype(bool)[:, :, None]
        return float(np.max(np.abs(np.where(valid, ref - got.astype(np.float64), 0.0))))

    def kv_diff(self, i: int, got: np.ndarray) -> float:
        """Max |diff| of ``got`` (the graph's K or V of layer ``i // 2`` for positions ``0:got.shape[2]``) over
        non-padding positions; a sliding-window HF cache may keep only the tail of the sequence."""
        layer = self.cache.layers[i // 2]
        ref = _to_np(layer.values if i % 2 else layer.keys).astype(np.float64)
        first = self.length - ref.shape[2]  # position of the cache's first row
        lo, hi = max(first, 0), got.shape[2]
        if hi <= lo:
            return 0.0
        diff = ref[:, :, lo - first : hi - first] - got[:, :, lo:hi].astype(np.float64)
        valid = self.mask[:, lo:hi].astype(bool)[:, None, :, None]
        return float(np.max(np.abs(np.where(valid, diff, 0.0))))


def kv_inputs(sess: Any) -> tuple[Any, int, str]:
    """``(first past input, number of layers, numpy dtype)`` of a session over an exported graph."""
    past_inputs = [i for i in sess.get_inputs() if contract.PAST_NAME.match(i.name)]
    first = past_inputs[0]
    np_dtype = contract.element_type(ort=first.type).numpy
    if np_dtype is None:
        raise ValueError(f"validation supports fp32/fp16 graphs with numpy I/O, not {first.type}")
    return first, len(past_inputs) // 2, np_dtype


def report(steps: list[dict[str, Any]], shapes_ok: bool) -> dict[str, Any]:
    """The validators' result: the per-step differences and their maxima."""
    return {
        "steps": steps,
        "max_logits": max(st["logits"] for st in steps),
        "max_kv": max(st["kv"] for st in steps),
        "present_shapes_ok": bool(shapes_ok),
    }


def validate_against_torch(
    model: Any,
    onnx_path: Path,
    *,
    batch: int = 2,
    prompt_len: int = 7,
    decode_steps: int = 2,
    left_pad: bool = True,
    lean: bool = False,
) -> dict[str, Any]:
    """Run ORT (CPU) and the HF model side by side; return per-step and overall max abs diffs.

    ``lean``: an ONNX Runtime session that holds the graph's weights once: no pre-packed copies, no constant
    folding (an fp16 graph on CPU would otherwise fold fp32 copies of its weights), no memory arena, and
    priority-based node order (the default order runs every weight's fp16->fp32 Cast first, so all fp32 copies
    are alive at once: measured 3.16 vs 1.77 GB peak for a 1.26 GB fp16 graph). For big graphs (the streamed
    export); the graph checked is the same, only ORT's load-time transformations differ.

    Returns ``{"steps": [{"logits": d, "kv": d, "present_len": n}, ...], "max_logits": d, "max_kv": d,
    "present_shapes_ok": bool}``. Tolerances are the caller's decision (they depend on dtype).
    """
    ort = require("onnxruntime", "onnx")
    cfg = model.config
    options = ort.SessionOptions()
    if lean:
        options.add_session_config_entry("session.disable_prepacking", "1")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.enable_cpu_mem_arena = False
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    sess = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    first_past, num_layers, np_dtype = kv_inputs(sess)
    n_kv, head_dim = int(first_past.shape[1]), int(first_past.shape[3])

    all_ids, all_mask = checked_sequence(batch, prompt_len, decode_steps, int(cfg.vocab_size), left_pad=left_pad)
    reference = Reference(model, all_ids, all_mask)
    past = {n: np.zeros((batch, n_kv, 0, head_dim), dtype=np_dtype) for n in contract.past_names(num_layers)}
    steps: list[dict[str, Any]] = []
    shapes_ok = True
    start = 0
    for step in range(decode_steps + 1):
        end = prompt_len + step
        m_np = reference.mask[:, :end]
        feeds: dict[str, np.ndarray] = {
            contract.INPUT_IDS: all_ids[:, start:end].numpy().astype(np.int64),
            contract.ATTENTION_MASK: m_np.astype(np.int64),
            contract.POSITION_IDS: contract.position_ids(m_np, end - start),
            **past,
        }
        outs = dict(zip(out_names, sess.run(None, feeds), strict=True))
        d_kv = 0.0
        presents = contract.present_names(num_layers)
        for i, (past_name, present_name) in enumerate(zip(contract.past_names(num_layers), presents, strict=True)):
            got = outs[present_name]
            shapes_ok &= got.shape == (batch, n_kv, end, head_dim)
            d_kv = max(d_kv, reference.kv_diff(i, got))
            past[past_name] = got
        d_logits = reference.logits_diff(outs[contract.LOGITS], start, end)
        steps.append({"step": step, "logits": d_logits, "kv": d_kv, "present_len": end})
        start = end
    return report(steps, shapes_ok)
