"""Greedy decoding with KV cache on an ONNX Runtime session, for the exported decoder graph.

Why our own loop instead of Optimum's ORTModelForCausalLM: it needs only onnxruntime + numpy (no torch,
no transformers at run time) and it is the reference host loop for the graph contract (what a C++ or
Triton host must do): left-padded prompts, position ids = cumsum(mask) - 1 clipped at 0, presents fed
back as pasts. IO binding keeps the presents as ORT-owned ``OrtValue``s between steps, so the growing
KV cache is not copied into numpy and back every token.

It drives both KV-cache contracts (``contract.KV_CACHE_CONTRACTS``), read from the graph's inputs. The
static one (``static_cache``): one ``OrtValue`` per buffer, bound as input *and* output so ``TensorScatter``
updates it in place (unbound, ONNX Runtime copies the buffer every step); ``attention_mask`` covers the buffer;
each row writes its next token right after its last prompt token, so right-padded prompts work too (their
padding slots are overwritten), and the logits are read at each row's last token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy import contract
from sleb_deploy._optional import require
from sleb_deploy.errors import UserInputError


class StaticCache:
    """The K/V buffers of a static-cache graph: one zeroed ``OrtValue`` [B, Hkv, length, D] per past input."""

    def __init__(self, gen: OrtGenerator, batch: int, length: int) -> None:
        ort = require("onnxruntime", "onnx")
        shape = (batch, gen.num_kv_heads, length, gen.head_dim)
        self.batch, self.length = batch, length
        self.values = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=gen.kv_dtype)) for _ in gen.past_names]


def kv_layout(session: Any) -> tuple[str, int | None]:
    """``(KV-cache contract, max_cache_len)`` of a session over an exported graph: static when it takes
    ``write_indices``; the buffer length when a static graph fixes it (a TensorRT-ready export), else None."""
    inputs = session.get_inputs()
    static = any(i.name == contract.WRITE_INDICES for i in inputs)
    fixed = next(i for i in inputs if contract.PAST_NAME.match(i.name)).shape[2]
    return (contract.STATIC, fixed if isinstance(fixed, int) else None) if static else (contract.CONCAT, None)


class OrtGenerator:
    """Greedy generator over ``model.onnx`` with Optimum-style KV-cache I/O (either contract)."""

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
        self.kv_cache, self.max_cache_len = kv_layout(self.session)
        logits = next(o for o in self.session.get_outputs() if o.name == contract.LOGITS)
        self.last_logits_only = logits.shape[1] == 1  # a --last-logits-only export

    def cache(self, batch: int, length: int) -> StaticCache:
        """Zeroed buffers for ``run_static`` (static-cache graphs)."""
        if self.kv_cache != contract.STATIC:
            raise UserInputError("this graph speaks the concatenating KV contract: it takes no cache buffers")
        if self.max_cache_len is not None and length != self.max_cache_len:
            raise UserInputError(f"this graph's cache buffers have {self.max_cache_len} slots, not {length}")
        return StaticCache(self, batch, length)

    def run_static(
        self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, write_indices: np.ndarray, cache: StaticCache
    ) -> np.ndarray:
        """One forward of a static-cache graph, writing this step's K/V into ``cache`` in place; logits [B, S, V].

        Checked before running (ONNX Runtime would fail deep inside ``TensorScatter``, or not at all): every
        row's ``write_indices + sequence_length`` inside the buffer, the mask as long as the buffer.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        batch, s = ids.shape
        w = np.ascontiguousarray(write_indices, dtype=np.int64)
        if w.shape != (batch,) or cache.batch != batch:
            raise UserInputError(f"write_indices {w.shape} and cache batch {cache.batch} must match batch {batch}")
        if (w < 0).any() or (w + s > cache.length).any():
            row = int(np.argmax((w < 0) | (w + s > cache.length)))
            raise UserInputError(
                f"row {row} writes {s} token(s) at slot {int(w[row])}, outside the {cache.length}-slot KV cache buffer"
            )
        if mask.shape != (batch, cache.length):
            raise UserInputError(
                f"attention_mask must cover the cache buffer: shape {(batch, cache.length)}, not {mask.shape}"
            )
        binding = self.session.io_binding()
        binding.bind_cpu_input(contract.INPUT_IDS, ids)
        binding.bind_cpu_input(contract.ATTENTION_MASK, np.ascontiguousarray(mask, dtype=np.int64))
        binding.bind_cpu_input(contract.POSITION_IDS, np.ascontiguousarray(pos, dtype=np.int64))
        binding.bind_cpu_input(contract.WRITE_INDICES, w)
        binding.bind_output(contract.LOGITS, "cpu")  # first: get_outputs() lists outputs in binding order
        for past, present, value in zip(self.past_names, self.output_names[1:], cache.values, strict=True):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        self.session.run_with_iobinding(binding)
        logits: np.ndarray = binding.get_outputs()[0].numpy()
        return logits

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
        max_cache_len: int | None = None,
    ) -> np.ndarray:
        """Prompt + greedy continuation, [B, prompt_len + n]; finished rows are filled with pad (or eos).

        ``max_cache_len`` (static-cache graphs): the buffer length; default the graph's fixed length, else
        ``prompt_len + max_new_tokens``. Concatenating graphs expect left padding.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        mask = np.asarray(attention_mask, dtype=np.int64)
        batch = ids.shape[0]
        if self.kv_cache == contract.STATIC:
            return self._generate_static(ids, mask, max_new_tokens, eos_token_id, pad_token_id, max_cache_len)
        past: list[Any] = [
            np.zeros((batch, self.num_kv_heads, 0, self.head_dim), dtype=self.kv_dtype) for _ in self.past_names
        ]

        def step(cur: np.ndarray, step_mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
            nonlocal past
            logits, past = self._step(cur, step_mask, pos, past)
            return logits

        return contract.greedy_concat_loop(step, ids, mask, max_new_tokens, eos_token_id, pad_token_id)

    def _generate_static(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        max_new_tokens: int,
        eos_token_id: int | None,
        pad_token_id: int | None,
        max_cache_len: int | None,
    ) -> np.ndarray:
        batch, prompt = ids.shape
        length = max_cache_len or self.max_cache_len or prompt + max_new_tokens
        rows = np.arange(batch)
        cache: StaticCache | None = None  # made at the first step: the loop refuses a bad request first

        def step(
            cur: np.ndarray, buf_mask: np.ndarray, pos: np.ndarray, write: np.ndarray, at: np.ndarray
        ) -> np.ndarray:
            nonlocal cache
            if cache is None:
                cache = self.cache(batch, length)
            logits: np.ndarray = self.run_static(cur, buf_mask, pos, write, cache)[rows, at]
            return logits

        return contract.greedy_static_loop(
            step, ids, mask, max_new_tokens, length, eos_token_id, pad_token_id, self.last_logits_only
        )
