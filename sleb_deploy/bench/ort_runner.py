"""The ONNX Runtime runner: the reference host loop of ``export/ort_generate.py``, cut into timed calls.

It speaks the graph contract exactly as ``OrtGenerator`` does (names and position ids from
``sleb_deploy.contract``, presents fed back as pasts) with three changes that matter for timing:

- the presents stay ORT-owned ``OrtValue``s between steps, on the device they were computed on (CUDA:
  the KV cache never crosses to the host);
- the logits are written by ORT straight into a preallocated host buffer (``bind_output`` with a buffer
  pointer), so a full-logits prefill does not pay a second ``[batch, prompt, vocab]`` copy into numpy; only
  the last position's argmax is read from it;
- ``prefill``/``decode`` return only when the step is complete (the next token is on the host), so the
  caller's clock brackets the whole step;
- binding goes through ONNX Runtime's native ``SessionIOBinding`` (``onnxruntime.capi``), as a C++ host
  binds, not through the Python ``IOBinding`` wrapper, whose per-tensor checks and ``OrtValue`` wrappers cost
  ~0.2 ms a step for 60 KV tensors (measured on a 30-block graph: wrapper 0.84 ms, native 0.65 ms, bare
  ``session.run`` 0.65-0.74 ms). That overhead is the harness's, not the model's; item 5 of issue 9 bounds it.

``step(commit=False)`` runs a decode step without advancing the state: the harness check times it against a
bare ``session.run`` on the same inputs.

A static-cache graph (``--kv-cache static``; engines/README.md section 5c) is driven as ``OrtGenerator`` drives
it: one ``OrtValue`` per layer buffer, on the KV device, bound as the past input *and* the present output of
the same name (``TensorScatter`` writes in place, no copy of the cache per step), the mask over the whole
buffer and ``write_indices`` at the current length. ``reserve(batch, context)`` (the sweep calls it before each
cell) makes the buffers: ``context`` slots (the cell's prompt + new tokens) for a graph whose buffer length is
symbolic, the graph's own ``max_cache_len`` when the export fixed it (a cell that writes more is skipped).
The timed steps then allocate nothing for the cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy import contract
from sleb_deploy._optional import require
from sleb_deploy.export.ort_generate import kv_layout

_GLOBAL_POOL: dict[str, int] = {}


class BackendUnavailable(Exception):
    """This backend cannot run here (the message says why and what to install); the sweep skips it."""


def static_inputs(ids: np.ndarray, mask: np.ndarray, write: int) -> dict[str, np.ndarray]:
    """The token inputs of a static-cache step writing ``ids`` [B, S] at slot ``write`` of every row; marks
    those slots in the runner's buffer mask ``mask`` [B, max_cache_len] (in place) and feeds it."""
    batch, seq = ids.shape
    mask[:, write : write + seq] = 1
    return {
        contract.INPUT_IDS: ids,
        contract.ATTENTION_MASK: mask,
        contract.POSITION_IDS: np.ascontiguousarray(np.broadcast_to(np.arange(write, write + seq), (batch, seq))),
        contract.WRITE_INDICES: np.full(batch, write, dtype=np.int64),
    }


def session_options(threads: int) -> Any:
    """Options for every benchmarked session: ONE process-wide intra-op pool shared by all of them.

    Per-session pools would each spin up a thread per core and fight over the cores when sessions alternate;
    a shared pool is what a server holding several models does. The pool is created once per process
    (ONNX Runtime refuses to replace it); a later call asking for another size keeps the first pool and
    ``pool_threads()`` reports the size that is in force.
    """
    ort = require("onnxruntime", "onnx")
    if "intra" not in _GLOBAL_POOL:
        try:
            ort.set_global_thread_pool_sizes(threads, 1)
        except Exception:  # already created by someone else in this process: use it as it is
            pass
        _GLOBAL_POOL["intra"] = threads
    so = ort.SessionOptions()
    so.use_per_session_threads = False
    so.log_severity_level = 3
    return so


def pool_threads() -> int | None:
    """The global pool's intra-op size as requested (0: ONNX Runtime's default, one per core)."""
    return _GLOBAL_POOL.get("intra")


class OrtRunner:
    """Greedy generation over one exported ``model.onnx``, one timed call per prefill and per decode step."""

    def __init__(self, variant: str, onnx_dir: Path, device: str, threads: int) -> None:
        ort = require("onnxruntime", "gpu" if device == "cuda" else "onnx")
        self.variant = variant
        self.device = device
        providers: list[Any] = ["CPUExecutionProvider"]
        if device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        start = time.perf_counter()
        self.session = ort.InferenceSession(
            str(Path(onnx_dir) / "model.onnx"), sess_options=session_options(threads), providers=providers
        )
        self.load_s = time.perf_counter() - start
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("ONNX Runtime fell back to the CPU: no usable CUDA device for its CUDA provider")
        past = [i for i in self.session.get_inputs() if contract.PAST_NAME.match(i.name)]
        self.blocks = len(past) // 2
        self.past_names = contract.past_names(self.blocks)
        self.present_names = contract.present_names(self.blocks)
        kv = contract.element_type(ort=past[0].type)
        logits = next(o for o in self.session.get_outputs() if o.name == contract.LOGITS)
        logits_type = contract.element_type(ort=logits.type)
        if kv.numpy is None or logits_type.numpy is None:
            raise BackendUnavailable(f"a {kv.key} graph cannot be fed from numpy: benchmark an fp32 or fp16 export")
        self.kv_dtype = np.dtype(kv.numpy)
        self.logits_dtype = np.dtype(logits_type.numpy)
        self.num_kv_heads = int(past[0].shape[1])
        self.head_dim = int(past[0].shape[3])
        self.vocab = int(logits.shape[2])
        self.last_only = logits.shape[1] == 1  # a --last-logits-only graph: logits [batch, 1, vocab]
        self.kv_cache, self.max_cache_len = kv_layout(self.session)
        self._ort = ort
        self._native = require("onnxruntime.capi._pybind_state", "onnx")
        self._cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        self._kv_device = ort.OrtDevice.make(device, 0)._get_c_device()
        self._buffers: dict[tuple[int, ...], np.ndarray] = {}
        self._past: list[Any] = []
        self._length = 0
        self._tokens: list[np.ndarray] = []
        self._cache: list[Any] = []  # static: the aliased buffers (OrtValues), made by reserve()
        self._cache_shape: tuple[int, ...] = ()
        self._mask = np.zeros((0, 0), dtype=np.int64)  # static: the mask over the buffer

    def reserve(self, batch: int, context: int) -> None:
        """Static graphs: zeroed buffers for ``batch`` rows and ``context`` slots (the graph's fixed length if it
        has one); kept while the shape stays. Concatenating graphs grow their cache per step: nothing to do."""
        if self.kv_cache != contract.STATIC:
            return
        length = self.max_cache_len if self.max_cache_len is not None else context
        shape = (batch, self.num_kv_heads, length, self.head_dim)
        if shape == self._cache_shape:
            return
        self._cache, self._cache_shape = [], ()
        # One array each, and the Python OrtValues kept: on the CPU an OrtValue made from numpy uses the array's
        # memory, which lives only as long as the wrapper holds it.
        self._cache = [
            self._ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=self.kv_dtype), self.device, 0)
            for _ in self.past_names
        ]
        self._cache_shape = shape

    # --- one forward ------------------------------------------------------------------------------------

    def _logits_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        buf = self._buffers.get(shape)
        if buf is None:
            if len(self._buffers) > 2:  # keep the decode buffer and one prefill buffer, not one per shape seen
                self._buffers.clear()
            buf = np.empty(shape, dtype=self.logits_dtype)
            self._buffers[shape] = buf
        return buf

    def _forward(self, ids: np.ndarray, past: list[Any], total: int) -> tuple[np.ndarray, list[Any]]:
        """One forward; returns the next tokens [batch] and the presents (native OrtValues, on the KV device)."""
        batch, seq = ids.shape
        mask = np.ones((batch, total), dtype=np.int64)
        binding = self._native.SessionIOBinding(self.session._sess)
        binding.bind_input(contract.INPUT_IDS, ids)
        binding.bind_input(contract.ATTENTION_MASK, mask)
        binding.bind_input(contract.POSITION_IDS, contract.position_ids(mask, seq))
        for name, value in zip(self.past_names, past, strict=True):
            if isinstance(value, np.ndarray):
                binding.bind_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        logits = self._bind_logits(binding, batch, seq)
        for name in self.present_names:
            binding.bind_output(name, self._kv_device)
        self.session._sess.run_with_iobinding(binding, None)
        outs = binding.get_outputs()  # logits first (bound first), then the presents in order
        presents = [outs[i] for i in range(1, len(outs))]
        return logits[:, -1, :].argmax(axis=-1).astype(np.int64), presents

    def _bind_logits(self, binding: Any, batch: int, seq: int) -> np.ndarray:
        logits = self._logits_buffer((batch, 1 if self.last_only else seq, self.vocab))
        binding.bind_output(contract.LOGITS, self._cpu, self.logits_dtype.type, list(logits.shape), logits.ctypes.data)
        return logits

    def _forward_static(self, ids: np.ndarray, write: int) -> np.ndarray:
        """One static step: ``ids`` written at slot ``write`` of the aliased buffers; returns the next tokens."""
        batch, seq = ids.shape
        if self._cache_shape[:1] != (batch,) or write + seq > self._cache_shape[2]:
            have = f"{self._cache_shape[0]} rows x {self._cache_shape[2]} slots" if self._cache_shape else "none"
            raise RuntimeError(
                f"static KV cache buffers ({have}) do not hold {batch} rows writing slots up to {write + seq}: "
                "call reserve(batch, context) first"
            )
        binding = self._native.SessionIOBinding(self.session._sess)
        feeds = static_inputs(ids, self._mask, write)  # kept until the run: bind_input uses the arrays' memory
        for name, value in feeds.items():
            binding.bind_input(name, value)
        logits = self._bind_logits(binding, batch, seq)
        for past, present, value in zip(self.past_names, self.present_names, self._cache, strict=True):
            binding.bind_ortvalue_input(past, value._ortvalue)
            binding.bind_ortvalue_output(present, value._ortvalue)  # one OrtValue: TensorScatter writes in place
        self.session._sess.run_with_iobinding(binding, None)
        out: np.ndarray = logits[:, -1, :].argmax(axis=-1).astype(np.int64)
        return out

    # --- the timed calls ----------------------------------------------------------------------------------

    def prefill(self, ids: np.ndarray) -> None:
        """Run the prompt ``[batch, prompt_len]`` (no padding) and pick the first new token."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.kv_cache == contract.STATIC:
            if self._cache_shape:
                self._mask = np.zeros((ids.shape[0], self._cache_shape[2]), dtype=np.int64)
            nxt = self._forward_static(ids, 0)
        else:
            empty = np.zeros((ids.shape[0], self.num_kv_heads, 0, self.head_dim), dtype=self.kv_dtype)
            nxt, self._past = self._forward(ids, [empty] * len(self.past_names), ids.shape[1])
        self._length = ids.shape[1]
        self._tokens = [nxt]

    def step(self, commit: bool = True) -> None:
        """One decode step from the current state; ``commit=False`` leaves the state as it was (static graphs:
        the step writes the slot the next committed step writes again, and marks it in the mask)."""
        if self.kv_cache == contract.STATIC:
            nxt, presents = self._forward_static(self._tokens[-1][:, None], self._length), self._past
        else:
            nxt, presents = self._forward(self._tokens[-1][:, None], self._past, self._length + 1)
        if commit:
            self._past = presents
            self._length += 1
            self._tokens.append(nxt)

    def decode(self) -> None:
        self.step(commit=True)

    def generated(self) -> np.ndarray:
        """The new tokens so far, ``[batch, n]``."""
        return np.stack(self._tokens, axis=1)

    def bare_feeds(self) -> dict[str, np.ndarray]:
        """The current decode step's inputs as plain numpy feeds (for the bare ``session.run`` comparison)."""
        if self.kv_cache == contract.STATIC:  # copies of the buffers: session.run cannot alias them
            feeds = static_inputs(self._tokens[-1][:, None].copy(), self._mask.copy(), self._length)
            feeds.update({name: value.numpy() for name, value in zip(self.past_names, self._cache, strict=True)})
            return feeds
        batch = self._tokens[-1].shape[0]
        mask = np.ones((batch, self._length + 1), dtype=np.int64)
        feeds = {
            contract.INPUT_IDS: self._tokens[-1][:, None].copy(),
            contract.ATTENTION_MASK: mask,
            contract.POSITION_IDS: contract.position_ids(mask, 1),
        }
        for name, value in zip(self.past_names, self._past, strict=True):
            feeds[name] = value.numpy() if not isinstance(value, np.ndarray) else value
        return feeds

    def close(self) -> None:
        self._past = []
        self._cache, self._cache_shape = [], ()
        self._buffers.clear()
        self.session = None
