"""What an engine can run and where it can load, read from ``engine.json`` alone (no TensorRT, no GPU).

Both checks run before anything touches CUDA, so a wrong engine or a request over its limits is one clear
line instead of a failed deserialization or a TensorRT shape error deep inside a step:

- ``EngineLimits``: the largest batch, prompt and context the two optimization profiles accept (read from
  the profiles the builder recorded, which are what the plan holds), and ``check_request`` for a request;
- ``check_loadable``: the plan's TensorRT module and version and the GPU it was built for, against the
  module, version and GPU at hand. A TensorRT plan deserializes only with the exact TensorRT version that
  built it and is tuned for one GPU model (NVIDIA's "engines are not portable across platforms or TensorRT
  versions"); a TensorRT-RTX plan is built ahead of time without a GPU and compiled just in time on any RTX
  GPU, so only the GPU's kind is checked for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sleb_deploy import contract
from sleb_deploy.errors import ArtifactError, MissingDependencyError, UserInputError

if TYPE_CHECKING:
    from sleb_deploy.engines.build import EngineManifest


@dataclass(frozen=True)
class EngineLimits:
    """The shapes an engine accepts: prefill up to ``max_input_len`` tokens, decode up to ``max_context_len``
    tokens of past + new, both up to ``max_batch`` rows. A static-cache engine (``max_cache_len`` set) holds
    its context in buffers of that many slots instead: a request fits when it writes no more slots
    (``contract.static_slots``), and ``max_context_len`` is the same number."""

    max_batch: int
    max_input_len: int
    max_context_len: int
    max_cache_len: int | None = None

    @classmethod
    def from_manifest(cls, manifest: EngineManifest) -> EngineLimits:
        by_name = {p["name"]: p["shapes"] for p in manifest.profiles}
        if set(by_name) != {"prefill", "decode"}:
            raise ArtifactError(
                f"{manifest.directory}/engine.json lists profiles {sorted(by_name)}, not prefill and decode: "
                "rebuild the engine with `sleb-deploy build`"
            )
        prefill, decode = by_name["prefill"], by_name["decode"]
        cache_len = manifest.build_options.get("max_cache_len")
        static = manifest.kv_cache == contract.STATIC
        return cls(
            max_batch=min(int(prefill[contract.INPUT_IDS]["max"][0]), int(decode[contract.INPUT_IDS]["max"][0])),
            max_input_len=int(prefill[contract.INPUT_IDS]["max"][1]),
            max_context_len=int(decode[contract.ATTENTION_MASK]["max"][1]),
            max_cache_len=int(cache_len) if static and cache_len is not None else None,
        )

    def check_request(self, batch: int, prompt_len: int, new_tokens: int) -> None:
        """Refuse, naming the limit and the build option that raises it, what the engine cannot run."""
        if batch > self.max_batch:
            raise UserInputError(
                f"batch {batch} is over the engine's max batch of {self.max_batch}: send fewer prompts at once "
                "or rebuild with a larger --max-batch"
            )
        if prompt_len > self.max_input_len:
            raise UserInputError(
                f"the prompt has {prompt_len} tokens, over the engine's max input length of {self.max_input_len}: "
                "shorten it or rebuild with a larger --max-input-len"
            )
        if self.max_cache_len is not None:
            slots = contract.static_slots(prompt_len, new_tokens)
            if slots > self.max_cache_len:
                raise UserInputError(
                    f"prompt + new tokens - 1 = {slots} slots, over the engine's {self.max_cache_len}-slot KV cache "
                    "buffer: ask for fewer new tokens, or export with a larger --max-cache-len and rebuild"
                )
            return
        if prompt_len + new_tokens > self.max_context_len:
            raise UserInputError(
                f"prompt + new tokens = {prompt_len + new_tokens}, over the engine's max context of "
                f"{self.max_context_len}: ask for fewer new tokens or rebuild with a larger --max-context-len"
            )


def _rebuild_hint(manifest: EngineManifest) -> str:
    onnx = manifest.source.get("onnx")
    onnx_dir = str(onnx).rsplit("/", 1)[0] if onnx else "ONNX_DIR"
    target = manifest.directory if manifest.directory is not None else "ENGINE_DIR"
    return f"rebuild it here: sleb-deploy build --onnx {onnx_dir} --out {target} --force"


def is_rtx(gpu_name: str) -> bool:
    """Whether TensorRT-RTX runs on this GPU: it targets RTX (GeForce RTX, RTX PRO / RTX Axxxx) GPUs, which
    name themselves so; datacenter parts (A100, H100, H200, ...) need TensorRT instead."""
    return "RTX" in gpu_name.upper()


def check_loadable(manifest: EngineManifest, module: str, version: str, gpu: dict[str, Any] | None) -> None:
    """Refuse, with one line that says how to rebuild, a plan this process cannot load.

    ``module``/``version``: the TensorRT module that would deserialize the plan; ``gpu``: the device it would
    run on (``{"name", "compute_capability"}``), or None when no CUDA GPU is visible. The module and version
    are checked first: a plan from another TensorRT is refused for that reason on any machine.
    """
    built = manifest.backend
    hint = _rebuild_hint(manifest)
    if built.get("module") != module:
        raise ArtifactError(
            f"this plan was built with {built.get('module')} {built.get('version')}, not {module}: load it with "
            f"{built.get('module')}, or {hint}"
        )
    if built.get("version") != version:
        raise ArtifactError(
            f"this plan was built with {module} {built.get('version')} and this machine has {version}: "
            f"a plan loads only with the TensorRT version that built it; {hint}"
        )
    if gpu is None:
        raise MissingDependencyError(
            "no CUDA GPU is visible: a TensorRT plan runs only on an NVIDIA GPU (use the ONNX export with "
            "ONNX Runtime on this machine)"
        )
    if module == "tensorrt_rtx":
        if not is_rtx(str(gpu.get("name", ""))):
            raise ArtifactError(
                f"a TensorRT-RTX plan runs on RTX GPUs only, and this GPU is {gpu.get('name')}: build the engine "
                "with TensorRT instead (pip install 'sleb-deploy[trt]' or Dockerfile.trt), "
                "sleb-deploy build --onnx ONNX_DIR --out ENGINE_DIR --backend tensorrt"
            )
        return
    tuned = manifest.gpu
    if tuned is None:
        raise ArtifactError(f"engine.json does not say which GPU this {module} plan was built for; {hint}")
    if tuned.get("compute_capability") != gpu.get("compute_capability") or tuned.get("name") != gpu.get("name"):
        raise ArtifactError(
            f"this plan was built for {tuned.get('name')} (compute capability {tuned.get('compute_capability')}) "
            f"and this GPU is {gpu.get('name')} ({gpu.get('compute_capability')}): plans are specific to the GPU "
            f"model; {hint}"
        )
