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
  clipped at 0 (``contract.position_ids``), finished rows filled with pad (or eos).
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
    """A deserialized plan with its two execution contexts and its ping-pong KV buffers; one step at a time."""

    def __init__(self, engine_dir: Path, *, backend: str = "auto", device: int = 0) -> None:
        from sleb_deploy.engines.build import EngineManifest, recording_logger

        engine_dir = Path(engine_dir)
        if not EngineManifest.exists(engine_dir):
            raise ArtifactError(
                f"{engine_dir / EngineManifest.FILE} not found: point at a directory written by `sleb-deploy build`"
            )
        manifest = EngineManifest.read(engine_dir)
        self.manifest = manifest
        if manifest.build_options.get("kv_cache", contract.CONCAT) != contract.CONCAT:
            raise ArtifactError(
                f"{engine_dir} is a static KV-cache engine: this runner drives the concatenating contract only "
                "(engines/README.md section 5c); build the engine from a default (--kv-cache concat) export"
            )
        self.limits = EngineLimits.from_manifest(manifest)
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
        numel = self.limits.max_batch * self.num_kv_heads * self.limits.max_context_len * self.head_dim
        with torch.cuda.stream(self.stream):
            self._kv = [
                [torch.empty(numel, dtype=self.kv_dtype, device=self.device) for _ in self.past_names] for _ in range(2)
            ]
        self.kv_bytes = 2 * len(self.past_names) * numel * self._kv[0][0].element_size()
        self._src = 0  # the set holding the current pasts
        self.load_s = time.perf_counter() - started

    def _last_error(self) -> str:
        errors = [m for s, m in self.logger.messages if s in ("ERROR", "INTERNAL_ERROR")]
        return errors[-1] if errors else "no message from TensorRT"

    def forward(self, ids: Any, mask: Any, pos: Any, past_len: int) -> Any:
        """One step, enqueued on ``self.stream``: int64 device tensors ``ids``/``pos`` ``[B, S]`` and ``mask``
        ``[B, past_len + S]``; the pasts are the current KV set's first ``past_len`` positions. Returns the
        logits tensor (device, ``[B, S or 1, vocab]``); the presents become the current set."""
        batch, seq = (int(d) for d in ids.shape)
        context = self.contexts[PREFILL if past_len == 0 else DECODE]
        for name, tensor in ((contract.INPUT_IDS, ids), (contract.ATTENTION_MASK, mask), (contract.POSITION_IDS, pos)):
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr())
        past_shape = (batch, self.num_kv_heads, past_len, self.head_dim)
        src, dst = self._kv[self._src], self._kv[1 - self._src]
        for name, buf in zip(self.past_names, src, strict=True):
            context.set_input_shape(name, past_shape)
            context.set_tensor_address(name, buf.data_ptr())
        for name, buf in zip(self.present_names, dst, strict=True):
            context.set_tensor_address(name, buf.data_ptr())
        with self.torch.cuda.stream(self.stream):
            logits = self.torch.empty(
                tuple(context.get_tensor_shape(contract.LOGITS)), dtype=self.logits_dtype, device=self.device
            )
        context.set_tensor_address(contract.LOGITS, logits.data_ptr())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not run the step (batch {batch}, seq {seq}): {self._last_error()}")
        self._src = 1 - self._src
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

        def step(cur: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
            past_len = mask.shape[1] - cur.shape[1]
            logits = eng.forward(eng.to_device(cur), eng.to_device(mask), eng.to_device(pos), past_len)
            last: np.ndarray = logits[:, -1, :].float().cpu().numpy()  # waits for the step
            if return_logits:
                steps.append(last)
            return last

        tokens = contract.greedy_concat_loop(step, ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id)
        return (tokens, steps) if return_logits else tokens

    def close(self) -> None:
        self.engine.close()
