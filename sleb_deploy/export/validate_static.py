"""Numerical check of a static-cache graph against the Hugging Face model, as ``validate.validate_against_torch``
does for the concatenating one: prefill with left padding at batch > 1, then chained decode steps, each step's
logits and K/V compared with the HF model's at the same positions (``validate.Reference``) over non-padding
positions.

The buffer is longer than the whole sequence (``extra_slots``), so the check also covers what the
concatenating check cannot: the rows are written at the right slots, attention ignores the slots not yet
written, and those slots stay untouched (``present_shapes_ok`` also requires them to be zero).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy import contract
from sleb_deploy._optional import require
from sleb_deploy.export.validate import Reference, checked_sequence, kv_inputs, report


def validate_static_against_torch(
    model: Any,
    onnx_path: Path,
    *,
    batch: int = 2,
    prompt_len: int = 7,
    decode_steps: int = 2,
    left_pad: bool = True,
    extra_slots: int = 5,
) -> dict[str, Any]:
    """The same report as ``validate_against_torch`` (``present_len`` = slots written so far) plus
    ``cache_len``; the buffer has ``prompt_len + decode_steps + extra_slots`` slots unless the graph fixes it."""
    ort = require("onnxruntime", "onnx")
    cfg = model.config
    so = ort.SessionOptions()
    so.log_severity_level = 3  # unaliased buffers: TensorScatter warns, every step, that it copies (harmless here)
    sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    first, num_layers, np_dtype = kv_inputs(sess)
    n_kv, head_dim = int(first.shape[1]), int(first.shape[3])
    needed = prompt_len + decode_steps
    length = first.shape[2] if isinstance(first.shape[2], int) else needed + extra_slots
    if length < needed:
        raise ValueError(f"the graph's {length}-slot buffer is shorter than the {needed} tokens checked")

    all_ids, all_mask = checked_sequence(batch, prompt_len, decode_steps, int(cfg.vocab_size), left_pad=left_pad)
    reference = Reference(model, all_ids, all_mask)
    cache_np = {n: np.zeros((batch, n_kv, length, head_dim), dtype=np_dtype) for n in contract.past_names(num_layers)}
    buf_mask = np.zeros((batch, length), dtype=np.int64)
    steps: list[dict[str, Any]] = []
    shapes_ok = True
    write = 0
    for step in range(decode_steps + 1):
        end = prompt_len + step
        m_np = reference.mask[:, :end]
        buf_mask[:, :end] = m_np
        feeds: dict[str, np.ndarray] = {
            contract.INPUT_IDS: all_ids[:, write:end].numpy().astype(np.int64),
            contract.ATTENTION_MASK: buf_mask,
            contract.POSITION_IDS: contract.position_ids(m_np, end - write),
            contract.WRITE_INDICES: np.full(batch, write, dtype=np.int64),
            **cache_np,
        }
        outs = dict(zip(out_names, sess.run(None, feeds), strict=True))
        d_logits = reference.logits_diff(outs[contract.LOGITS], write, end)
        write = end
        d_kv = 0.0
        for i, (past_name, present_name) in enumerate(
            zip(contract.past_names(num_layers), contract.present_names(num_layers), strict=True)
        ):
            got = outs[present_name]
            shapes_ok &= got.shape == (batch, n_kv, length, head_dim) and not got[:, :, write:].any()
            d_kv = max(d_kv, reference.kv_diff(i, got[:, :, :write]))
            cache_np[past_name] = got
        steps.append({"step": step, "logits": d_logits, "kv": d_kv, "present_len": write})
    return {**report(steps, shapes_ok), "cache_len": int(length)}
