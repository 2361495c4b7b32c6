"""The backends the benchmark knows, whether each can run here, and how each loads a variant.

========== ============================================ ==========================================
key        what runs                                     needs
========== ============================================ ==========================================
ort-cpu    the exported ONNX, ONNX Runtime CPU provider  ``pip install 'sleb-deploy[onnx]'``
ort-cuda   the same ONNX, CUDA provider, KV on device    ``pip install 'sleb-deploy[gpu]'`` + a GPU
tensorrt   the TensorRT engines (engines/<name>/...)      ``pip install 'sleb-deploy[trt]'`` + a GPU + built engines
torch-cpu  the HF checkpoints, PyTorch eager             (core dependency)
torch-cuda the HF checkpoints, PyTorch eager on CUDA     a CUDA build of torch + a GPU
========== ============================================ ==========================================

A backend that cannot run is skipped with a one-line note naming what to install; the sweep goes on with
the others. Nothing here probes CUDA at import.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sleb_deploy.bench import memory
from sleb_deploy.bench.ort_runner import BackendUnavailable
from sleb_deploy.bench.workspace import Variant
from sleb_deploy.errors import UserInputError

BACKENDS = ("ort-cpu", "ort-cuda", "tensorrt", "torch-cpu", "torch-cuda")
TENSORRT_NOTE = (
    "no TensorRT module: pip install 'sleb-deploy[trt]' (or use Dockerfile.trt) on a machine with an NVIDIA GPU"
)


class Runner(Protocol):
    """One loaded variant. ``prefill``/``decode`` return when the step is complete on the device. A runner
    whose engine has limits also has ``max_batch``, ``max_input_len`` and ``max_context_len`` (read from its
    ``engine.json``; cells over them are skipped with a note); one that drives a static-cache graph or engine
    has ``max_cache_len`` (its fixed buffer length, None when the graph leaves it symbolic). ``reserve`` is
    called before each cell with its batch and context (prompt + new tokens): a static-cache runner makes its
    buffers there, outside the clock."""

    variant: str
    blocks: int
    load_s: float

    def reserve(self, batch: int, context: int) -> None: ...

    def prefill(self, ids: np.ndarray) -> None: ...

    def decode(self) -> None: ...

    def generated(self) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    key: str
    framework: str  # "ort" | "torch" | "tensorrt"
    device: str  # "cpu" | "cuda"

    def load(self, variant: Variant, threads: int, dtype: str) -> Runner:
        """Load ``variant``; ``BackendUnavailable`` when this backend cannot run it (the note says why)."""
        if self.framework == "ort":
            from sleb_deploy.bench.ort_runner import OrtRunner

            if variant.onnx_dir is None:
                raise BackendUnavailable(f"no ONNX export of the {variant.name} model")
            return OrtRunner(variant.name, variant.onnx_dir, self.device, threads)
        if self.framework == "torch":
            from sleb_deploy.bench.torch_runner import TorchRunner

            if variant.hf_dir is None:
                raise BackendUnavailable(f"the {variant.name} Hugging Face checkpoint is not a local directory")
            return TorchRunner(variant.name, variant.hf_dir, self.device, dtype, variant.keep, threads)
        from sleb_deploy.bench.trt_runner import TrtRunner

        if variant.engine_dir is None:
            raise BackendUnavailable(
                f"no TensorRT engine of the {variant.name} model: build them with `sleb-deploy export --engines auto` "
                "or `sleb-deploy build`"
            )
        return TrtRunner(variant.name, variant.engine_dir)

    def reset_peak(self) -> None:
        memory.reset_peak()
        if self.framework == "torch" and self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> dict[str, float | None]:
        """Peak host RSS since ``reset_peak`` and, for torch on CUDA, the peak of allocated device memory."""
        out: dict[str, float | None] = {"peak_rss_mb": memory.peak_mb(), "cuda_max_allocated_mb": None}
        if self.framework == "torch" and self.device == "cuda":
            import torch

            out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 1024**2
        return out

    def release_cache(self) -> None:
        """After a failed allocation: hand cached device memory back so the next (smaller) cell can run."""
        if self.framework == "torch" and self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def free_mb(self) -> float | None:
        """Memory this backend's tensors can still get (host for CPU backends; the GPU for torch-cuda)."""
        if self.device == "cpu":
            return memory.available_mb()
        if self.framework == "torch":
            import torch

            free, _ = torch.cuda.mem_get_info()
            return float(free) / 1024**2
        return None  # ORT CUDA: no portable query; a failed allocation is caught and skipped instead


_CATALOG = {
    "ort-cpu": Backend("ort-cpu", "ort", "cpu"),
    "ort-cuda": Backend("ort-cuda", "ort", "cuda"),
    "tensorrt": Backend("tensorrt", "tensorrt", "cuda"),
    "torch-cpu": Backend("torch-cpu", "torch", "cpu"),
    "torch-cuda": Backend("torch-cuda", "torch", "cuda"),
}


def _find_spec(name: str) -> Any:
    """``importlib.util.find_spec``, None also for a module blocked in ``sys.modules`` (ValueError there)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _torch_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def unavailable(
    key: str,
    find_spec: Callable[[str], Any] = _find_spec,
    ort_providers: Callable[[], list[str]] = _ort_providers,
    torch_cuda: Callable[[], bool] = _torch_cuda,
) -> str | None:
    """Why backend ``key`` cannot run here (naming what to install), or None when it can.

    The probes are parameters so tests can state the machine they pretend to be on.
    """
    if key in ("ort-cpu", "ort-cuda") and find_spec("onnxruntime") is None:
        extra = "onnx" if key == "ort-cpu" else "gpu"
        return f"onnxruntime is not installed: pip install 'sleb-deploy[{extra}]'"
    if key == "ort-cuda" and "CUDAExecutionProvider" not in ort_providers():
        return (
            "this onnxruntime has no CUDA execution provider: pip install 'sleb-deploy[gpu]' "
            "(onnxruntime-gpu) on a machine with an NVIDIA GPU"
        )
    if key == "tensorrt":
        if find_spec("tensorrt") is None and find_spec("tensorrt_rtx") is None:
            return TENSORRT_NOTE
        if not torch_cuda():
            return "no CUDA device visible: TensorRT engines run only on an NVIDIA GPU"
    if key == "torch-cuda" and not torch_cuda():
        return "no CUDA device visible to PyTorch (a CUDA build of torch and an NVIDIA GPU are needed)"
    return None


def select(spec: str) -> list[Backend]:
    """``auto`` (every backend, the unavailable ones reported as skipped) or a comma-separated list of keys."""
    keys = list(BACKENDS) if spec == "auto" else [k.strip() for k in spec.split(",") if k.strip()]
    bad = [k for k in keys if k not in _CATALOG]
    if bad or not keys:
        raise UserInputError(f"--backends {spec!r}: choose auto or a comma-separated list of {', '.join(BACKENDS)}")
    return [_CATALOG[k] for k in dict.fromkeys(keys)]
