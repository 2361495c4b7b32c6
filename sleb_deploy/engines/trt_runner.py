"""Greedy generation on a TensorRT engine: the ONNX Runtime generator's loop (``export/ort_generate.py``) on a GPU.

**Not run on the development machine or in CI**: a plan deserializes only on an NVIDIA GPU, and neither this
machine nor CI has one. The code follows TensorRT 10's Python API (``Runtime.deserialize_cuda_engine``,
``ICudaEngine.create_execution_context``, ``IExecutionContext.set_optimization_profile_async`` /
``set_input_shape`` / ``set_tensor_address`` / ``get_tensor_shape`` / ``execute_async_v3``), which
``tensorrt_rtx`` shares; ``tests/engines/test_trt_runner.py`` (marked ``gpu``) checks it against ONNX Runtime
where a GPU is at hand. Everything it decides before touching CUDA (limits, load checks) lives in
``engines/limits.py`` and is tested everywhere.

How it runs the contract (``engines/README.md``):

- **One engine, one execution context per profile.** The weights are deserialized once; context 0 keeps
  profile 0 (prefill: past 0, the whole prompt), context 1 keeps profile 1 (decode: one token, past >= 1).
  Each context keeps its profile for its lifetime, so no step pays a profile switch.
- **KV buffers allocated once**, at the engine's max batch x max context: two sets ("ping" and "pong") of
  ``2 x num_layers`` device buffers. A step binds its pasts in one set and its presents in the other, then the
  roles swap, so a present never aliases its past (the graph writes ``concat(past, new)``; TensorRT does not
  allow an output to overlap an input). A ``[B, H, L, D]`` tensor occupies the first ``B*H*L*D`` elements of
  its buffer, contiguous, as a linear-format binding must.
- **int64 bindings**: ``input_ids``, ``attention_mask`` and ``position_ids`` stay int64 (the builder keeps the
  network's int64 inputs) and are bound as int64 device tensors.
- **Device memory through torch** (a core dependency): torch CUDA tensors and one torch stream, which is
  also the enqueue stream; no pycuda or cuda-python.
- **Greedy decoding** as ``OrtGenerator`` does it: left-padded prompts, position ids ``cumsum(mask) - 1``
  clipped at 0 (``contract.position_ids``), finished rows filled with pad (or eos); the loop is the
  contract's own (``contract.greedy_concat_loop`` / ``contract.greedy_static_loop``), shared with ``OrtGenerator``.

**Static-cache engines** (built from a ``--kv-cache static --max-cache-len N`` export; ``engine.json``'s
``build_options.kv_cache`` is ``"static"``; engines/README.md section 5c). The parser turns each
``TensorScatter`` into TensorRT's ``KVCacheUpdate`` layer, whose output "must be a network output and shares
the same device memory address with the cache input (in-place update)" (TensorRT's operator documentation;
``ICudaEngine.get_aliased_input_tensor`` names the input an output aliases). So here each layer's K and V get
**one** device buffer of ``max_batch x H x max_cache_len x D`` elements, bound with ``set_tensor_address`` as
both ``past_key_values.{i}.*`` and ``present.{i}.*`` (the same pointer), with the input shape
``[B, H, max_cache_len, D]``; ``write_indices`` (int64 ``[B]``) says where each row writes, and
``attention_mask`` covers the whole buffer. No ping-pong, no copy of the cache per step. The buffers are
zeroed once, when allocated: a slot left over from an earlier request is finite and masked out (weight
exactly 0), as an unwritten slot is. Prefill runs on the prefill profile's context, every later step on the
decode profile's (one token). Like the rest of this module it is **unrun here** (no GPU; a TensorRT-RTX plan
runs on RTX GPUs only): written against the TensorRT 10 / TensorRT-RTX Python API, checked by
``tests/engines/test_trt_runner.py`` where a GPU is at hand.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from sleb_deploy import contract
from sleb_deploy._optional import require
from sleb_deploy.config import BACKEND_EXTRAS
from sleb_deploy.engines.limits import EngineLimits, check_loadable
from sleb_deploy.errors import ArtifactError

PREFILL, DECODE = 0, 1  # the optimization profiles, in the order engines/profiles.py builds them


def cuda_gpu(index: int = 0) -> dict[str, str] | None:
    """``{"name", "compute_capability"}`` of CUDA device ``index`` as torch sees it, or None without one.

    Called only when an engine is loaded, never at import: importing this module touches no CUDA.
    """
    import torch

    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        return None
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def _torch_dtype(dtype: Any) -> Any:
    """The torch dtype of a TensorRT ``DataType`` (by the contract's element-type table)."""
    import torch

    return getattr(torch, contract.element_type(trt=dtype.name).torch)


class TrtEngine:
    """A deserialized plan with its two execution contexts and its KV buffers (two ping-pong sets for the
    concatenating contract, one aliased set for the static one); one step at a time."""

    def __init__(self, engine_dir: Path, *, backend: str = "auto", device: int = 0) -> None:
        from sleb_deploy.engines.build import EngineManifest, recording_logger

        engine_dir = Path(engine_dir)
        if not EngineManifest.exists(engine_dir):
            raise ArtifactError(
                f"{engine_dir / EngineManifest.FILE} not found: point at a directory written by `sleb-deploy build`"
            )
        manifest = EngineManifest.read(engine_dir)
        self.manifest = manifest
        self.kv_cache = manifest.kv_cache
        if self.kv_cache not in contract.KV_CACHE_CONTRACTS:
            raise ArtifactError(f"{engine_dir}/engine.json names an unknown KV-cache contract {self.kv_cache!r}")
        self.limits = EngineLimits.from_manifest(manifest)
        if self.kv_cache == contract.STATIC and self.limits.max_cache_len is None:
            raise ArtifactError(f"{engine_dir}/engine.json: a static-cache engine without max_cache_len; rebuild it")
        module = str(manifest.backend.get("module"))
        if module not in BACKEND_EXTRAS:
            raise ArtifactError(f"{engine_dir}/engine.json names backend {module!r}, not a TensorRT module")
        if backend not in ("auto", module):
            raise ArtifactError(
                f"{engine_dir} holds a {module} plan; it cannot be loaded with {backend} "
                f"(pass --backend {module} or auto, or rebuild the engine with {backend})"
            )
        trt = require(module, BACKEND_EXTRAS[module])
        check_loadable(manifest, module, str(trt.__version__), cuda_gpu(device))

        import torch

        self.torch = torch
        self.device = torch.device("cuda", device)
        started = time.perf_counter()
        self.logger = recording_logger(trt)
        self.logger.messages.clear()
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine((engine_dir / manifest.plan).read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{module} could not deserialize {engine_dir / manifest.plan}: {self._last_error()}")
        if self.engine.num_optimization_profiles < 2:
            raise ArtifactError(f"{engine_dir / manifest.plan} has no prefill + decode profiles: rebuild it")
        self.stream = torch.cuda.Stream(device=self.device)
        self.contexts = []
        for profile in (PREFILL, DECODE):
            context = self.engine.create_execution_context()
            if context is None or not context.set_optimization_profile_async(profile, self.stream.cuda_stream):
                raise ArtifactError(f"{module} could not make an execution context for profile {profile}")
            self.contexts.append(context)
        self.stream.synchronize()

        self.num_layers, self.num_kv_heads = manifest.num_layers, manifest.num_kv_heads
        self.head_dim = manifest.head_dim
        self.past_names = contract.past_names(self.num_layers)
        self.present_names = contract.present_names(self.num_layers)
        self.kv_dtype = _torch_dtype(self.engine.get_tensor_dtype(self.past_names[0]))
        self.logits_dtype = _torch_dtype(self.engine.get_tensor_dtype(contract.LOGITS))
        self.last_logits_only = int(self.engine.get_tensor_shape(contract.LOGITS)[1]) == 1  # [B, 1, V]: fixed 1
        static = self.kv_cache == contract.STATIC
        if static:
            self._check_aliases(engine_dir)
        length = self.limits.max_cache_len if self.limits.max_cache_len is not None else self.limits.max_context_len
        numel = self.limits.max_batch * self.num_kv_heads * length * self.head_dim
        with torch.cuda.stream(self.stream):  # static: one aliased set, zeroed (see the module docstring)
            self._kv = [
                [torch.zeros(numel, dtype=self.kv_dtype, device=self.device) for _ in self.past_names]
                for _ in range(1 if static else 2)
            ]
        self.kv_bytes = len(self._kv) * len(self.past_names) * numel * self._kv[0][0].element_size()
        self._src = 0  # the set holding the current pasts
        self.stream.synchronize()
        self.load_s = time.perf_counter() - started

    def _check_aliases(self, engine_dir: Path) -> None:
        """A static engine's ``present.{i}.*`` must be TensorRT's in-place alias of ``past_key_values.{i}.*``
        (``KVCacheUpdate``); checked where the API can say (``get_aliased_input_tensor``, TensorRT >= 10.15 and
        TensorRT-RTX), so a plan whose update was not lowered in place fails here, not with a wrong cache."""
        aliased = getattr(self.engine, "get_aliased_input_tensor", None)
        if aliased is None:
            return
        for past, present in zip(self.past_names, self.present_names, strict=True):
            if aliased(present) != past:
                raise ArtifactError(
                    f"{engine_dir}: output {present} does not alias input {past} in this plan (TensorRT reports "
                    f"{aliased(present)!r}); the static contract needs TensorRT's in-place KV cache update: rebuild "
                    "the engine with a TensorRT that lowers TensorScatter to KVCacheUpdate"
                )

    def _last_error(self) -> str:
        errors = [m for s, m in self.logger.messages if s in ("ERROR", "INTERNAL_ERROR")]
        return errors[-1] if errors else "no message from TensorRT"

    def forward(self, ids: Any, mask: Any, pos: Any, past_len: int) -> Any:
        """One step, enqueued on ``self.stream``: int64 device tensors ``ids``/``pos`` ``[B, S]`` and ``mask``
        ``[B, past_len + S]``; the pasts are the current KV set's first ``past_len`` positions. Returns the
        logits tensor (device, ``[B, S or 1, vocab]``); the presents become the current set. Concatenating
        contract only (``forward_static`` is the static one's)."""
        if self.kv_cache != contract.CONCAT:
            raise RuntimeError("forward() drives the concatenating contract; this engine is static: forward_static()")
        batch, seq = (int(d) for d in ids.shape)
        context = self.contexts[PREFILL if past_len == 0 else DECODE]
        feeds = ((contract.INPUT_IDS, ids), (contract.ATTENTION_MASK, mask), (contract.POSITION_IDS, pos))
        past_shape = (batch, self.num_kv_heads, past_len, self.head_dim)
        src, dst = self._kv[self._src], self._kv[1 - self._src]
        for name, buf in zip(self.past_names, src, strict=True):
            context.set_input_shape(name, past_shape)
            context.set_tensor_address(name, buf.data_ptr())
        for name, buf in zip(self.present_names, dst, strict=True):
            context.set_tensor_address(name, buf.data_ptr())
        logits = self._execute(context, feeds, batch, seq)
        self._src = 1 - self._src
        return logits

    def forward_static(self, ids: Any, mask: Any, pos: Any, write: Any, prefill: bool) -> Any:
        """One step of a static-cache engine, enqueued on ``self.stream``: int64 device tensors ``ids``/``pos``
        ``[B, S]``, ``mask`` ``[B, max_cache_len]`` and ``write`` ``[B]`` (each row's first slot). Each layer's
        buffer is bound as its past input and its present output at once (one pointer: TensorRT's
        ``KVCacheUpdate`` writes this step's rows into it in place). ``prefill``: the prefill profile's context
        (the whole prompt), else the decode profile's (``S`` = 1). Returns the logits tensor (device,
        ``[B, S or 1, vocab]``). The caller checks ``write + S <= max_cache_len`` (``contract.greedy_static_loop``
        does): TensorRT does not check the write positions."""
        if self.kv_cache != contract.STATIC or self.limits.max_cache_len is None:
            raise RuntimeError("forward_static() drives a static-cache engine; this one concatenates: forward()")
        batch, seq = (int(d) for d in ids.shape)
        context = self.contexts[PREFILL if prefill else DECODE]
        feeds = ((contract.INPUT_IDS, ids), (contract.ATTENTION_MASK, mask), (contract.POSITION_IDS, pos),
                 (contract.WRITE_INDICES, write))  # fmt: skip
        cache_shape = (batch, self.num_kv_heads, self.limits.max_cache_len, self.head_dim)
        for past, present, buf in zip(self.past_names, self.present_names, self._kv[0], strict=True):
            context.set_input_shape(past, cache_shape)
            context.set_tensor_address(past, buf.data_ptr())
            context.set_tensor_address(present, buf.data_ptr())  # the same address: the in-place update
        return self._execute(context, feeds, batch, seq)

    def _execute(self, context: Any, feeds: tuple[tuple[str, Any], ...], batch: int, seq: int) -> Any:
        """Bind the token inputs ``feeds`` (the KV tensors are bound by the caller), allocate the logits for
        the shapes set on ``context``, bind them and enqueue the step on the stream."""
        for name, tensor in feeds:
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        with self.torch.cuda.stream(self.stream):
            logits = self.torch.empty(
                tuple(context.get_tensor_shape(contract.LOGITS)), dtype=self.logits_dtype, device=self.device
            )
        context.set_tensor_address(contract.LOGITS, logits.data_ptr())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not run the step (batch {batch}, seq {seq}): {self._last_error()}")
        return logits

    def to_device(self, array: np.ndarray) -> Any:
        """An int64 host array as a device tensor, copied on the engine's stream."""
        with self.torch.cuda.stream(self.stream):
            return self.torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self.device, non_blocking=True)

    def close(self) -> None:
        self._kv = []
        self.contexts = []
        self.engine = None


class TrtGenerator:
    """Greedy generator over an engine directory, with ``OrtGenerator``'s interface: same prompts in, same
    tokens out. ``generate(..., return_logits=True)`` also returns each step's last-position logits."""

    def __init__(self, engine_dir: Path, *, backend: str = "auto", device: int = 0) -> None:
        self.engine = TrtEngine(engine_dir, backend=backend, device=device)
        self.limits = self.engine.limits

    def generate(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        max_new_tokens: int,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        return_logits: bool = False,
    ) -> Any:
        """Prompt + greedy continuation, ``[B, prompt_len + n]`` (and the per-step logits when asked)."""
        ids = np.asarray(input_ids, dtype=np.int64)
        batch, prompt_len = ids.shape
        self.limits.check_request(batch, prompt_len, max_new_tokens)
        eng = self.engine
        steps: list[np.ndarray] = []
        if eng.kv_cache == contract.STATIC:
            tokens = self._generate_static(ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, steps)
            return (tokens, steps) if return_logits else tokens

        def step(cur: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
            past_len = mask.shape[1] - cur.shape[1]
            logits = eng.forward(eng.to_device(cur), eng.to_device(mask), eng.to_device(pos), past_len)
            last: np.ndarray = logits[:, -1, :].float().cpu().numpy()  # waits for the step
            if return_logits:
                steps.append(last)
            return last

        tokens = contract.greedy_concat_loop(step, ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)
        return (tokens, steps) if return_logits else tokens

    def _generate_static(
        self,
        ids: np.ndarray,
        attention_mask: np.ndarray,
        max_new_tokens: int,
        eos_token_id: int | None,
        pad_token_id: int | None,
        steps: list[np.ndarray],
    ) -> np.ndarray:
        """The static contract's loop (``contract.greedy_static_loop``) over ``TrtEngine.forward_static``; each
        step's chosen logits (row b's last prompt token at prefill) are appended to ``steps``."""
        eng = self.engine
        cache_len = self.limits.max_cache_len
        assert cache_len is not None  # TrtEngine refuses a static engine without it
        rows = eng.to_device(np.arange(ids.shape[0]))
        first = True

        def step(cur: np.ndarray, mask: np.ndarray, pos: np.ndarray, write: np.ndarray, at: np.ndarray) -> np.ndarray:
            nonlocal first
            logits = eng.forward_static(
                eng.to_device(cur), eng.to_device(mask), eng.to_device(pos), eng.to_device(write), prefill=first
            )
            first = False
            chosen: np.ndarray = logits[rows, eng.to_device(at)].float().cpu().numpy()  # waits for the step
            steps.append(chosen)
            return chosen

        return contract.greedy_static_loop(
            step, ids, attention_mask, max_new_tokens, cache_len, eos_token_id, pad_token_id,
            last_logits_only=eng.last_logits_only,
        )  # fmt: skip

    def close(self) -> None:
        self.engine.close()
