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

_ORT_TO_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OrtGenerator:
    """Greedy generator over ``model.onnx`` with Optimum-style KV-cache I/O."""

    def __init__(self, onnx_path: Path, session_options: Any = None, providers: list[Any] | None = None) -> None:
        import onnxruntime as ort

        self._ort = ort
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=session_options, providers=providers or ["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = self.input_names[3:]
        self.present_names = self.output_names[1:]
        first = inputs[3]
        if first.type not in _ORT_TO_NP:
            raise ValueError(f"OrtGenerator drives fp32/fp16 graphs (numpy I/O), not {first.type}")
        self.kv_dtype = _ORT_TO_NP[first.type]
        self.num_kv_heads = int(first.shape[1])
        self.head_dim = int(first.shape[3])

    def _step(
        self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, past: list[Any]
    ) -> tuple[np.ndarray, list[Any]]:
        """One forward; returns last-position logits [B, V] and the presents as OrtValues."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids, dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(pos, dtype=np.int64))
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
        pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
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
