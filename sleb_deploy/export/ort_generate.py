"""Greedy decoding with KV cache on an ONNX Runtime session, for the exported decoder graph.

Why our own loop instead of Optimum's ORTModelForCausalLM: it needs only onnxruntime + numpy (no torch,
no transformers at run time) and it is the reference host loop for the graph contract (what a C++ or
Triton host must do): left-padded prompts, position ids = cumsum(mask) - 1 clipped at 0, presents fed
back as pasts. IO binding keeps the presents as ORT-owned ``OrtValue``s between steps, so the growing
KV cache is not copied into numpy and back every token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy import contract
from sleb_deploy._optional import require


class OrtGenerator:
    """Greedy generator over ``model.onnx`` with Optimum-style KV-cache I/O."""

    def __init__(self, onnx_path: Path, session_options: Any = None, providers: list[Any] | None = None) -> None:
        ort = require("onnxruntime", "onnx")
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options, providers=providers or ["CPUExecutionProvider"]
        )
        past = [i for i in self.session.get_inputs() if contract.PAST_NAME.match(i.name)]
        self.num_layers = len(past) // 2
        self.past_names = contract.past_names(self.num_layers)
        self.output_names = contract.output_names(self.num_layers)
        first = past[0]
        np_dtype = contract.element_type(ort=first.type).numpy
        if np_dtype is None:
            raise ValueError(f"OrtGenerator drives fp32/fp16 graphs (numpy I/O), not {first.type}")
        self.kv_dtype = np.dtype(np_dtype)
        self.num_kv_heads = int(first.shape[1])
        self.head_dim = int(first.shape[3])

    def _step(
        self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[Any]
    ) -> tuple[np.ndarray, list[Any]]:
        """One forward; returns last-position logits [B, V] and the presents as OrtValues."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(contract.INPUT_IDS, np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input(contract.ATTENTION_MASK, np.ascontiguousarray(mask, dtype=np.int64))
        binding.bind_cpu_input(contract.POSITION_IDS, np.ascontiguousarray(pos, dtype=np.int64))
        for name, value in zip(self.past_names, past, strict=True):
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        logits = outs[0].numpy()[:, -1, :]
        return logits, list(outs[1:])

    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        max_new_tokens: int,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> np.ndarray:
        """Prompt + greedy continuation, [B, prompt_len + n]; finished rows are filled with pad (or eos)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        batch = ids.shape[0]
        fill = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
        past: list[Any] = [
            np.zeros((batch, self.num_kv_heads, 0, self.head_dim), dtype=self.kv_dtype) for _ in self.past_names
        ]
        pos = contract.position_ids(mask, mask.shape[1])
        cur = ids
        out = [ids]
        done = np.zeros(batch, dtype=bool)
        for _ in range(max_new_tokens):
            logits, past = self._step(cur, mask, pos[:, -cur.shape[1] :], past)
            nxt = logits.argmax(axis=-1).astype(np.int64)
            nxt = np.where(done, fill, nxt)
            out.append(nxt[:, None])
            if eos_token_id is not None:
                done |= nxt == eos_token_id
                if done.all():
                    break
            cur = nxt[:, None]
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
            pos = np.concatenate([pos, pos[:, -1:] + 1], axis=1)
        return np.concatenate(out, axis=1)
