"""Build options and the two TensorRT optimization profiles, as pure data (no TensorRT import).

One ONNX graph serves both phases of generation (DESIGN.md section 3), so one engine carries two profiles:

- profile 0, **prefill**: past length 0, sequence 1..``max_input_len`` (the whole prompt in one call);
- profile 1, **decode**: sequence 1, past 1..``max_context_len - 1`` (one new token against the KV cache).

Static-cache graphs (``contract.STATIC``) have the same two profiles, but their K/V buffers and
``attention_mask`` have the fixed length ``max_cache_len`` the graph was exported with (TensorRT needs the
buffer's sequence dimension static); only batch and sequence vary.

A host selects the profile by the phase it runs. Every point of every profile (min, opt and max, each on
its own) satisfies ``attention_mask`` length = past + sequence: TensorRT checks the shapes of each point
separately, and a point where the mask disagrees with the KV cache would describe inputs no host sends.
The numbers are computed here and only applied by ``build.py``, so they are tested without TensorRT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sleb_deploy import contract
from sleb_deploy.errors import UserInputError

Dims = tuple[int, ...]
Profile = dict[str, tuple[Dims, Dims, Dims]]
PROFILE_NAMES = ("prefill", "decode")


@dataclass(frozen=True)
class BuildConfig:
    """What the engine must accept and how to build it.

    The precision is not an option: networks are strongly typed (TensorRT 10.12 deprecated the FP16/BF16
    flags, TensorRT 11 only builds strongly typed networks), so the engine computes in the dtype of its
    ONNX. Export in fp16 or bf16 for a half-precision engine.

    ``max_context_len`` bounds past + sequence (the KV cache a host keeps, the attention mask it sends).
    ``opt_*`` are the shapes TensorRT tunes its kernels for: pick the ones the server sees most.
    """

    max_batch: int = 16
    opt_batch: int | None = None  # default: max_batch
    min_batch: int = 1
    max_input_len: int = 1024
    opt_input_len: int | None = None  # default: max_input_len // 2 (at least 1)
    max_context_len: int = 2048
    opt_context_len: int | None = None  # decode's opt past + 1; default: max_context_len // 2 (at least 2)
    use_timing_cache: bool = True
    decomposable_attention: bool = True  # let TensorRT decompose ONNX Attention where it has no fused kernel
    builder_optimization_level: int | None = None  # None: TensorRT's default (3)
    workspace_mib: int | None = None  # None: TensorRT's default (all device memory)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self) -> BuildConfig:
        """The same config with every default filled in and every value checked (raises UserInputError)."""
        opt_batch = self.max_batch if self.opt_batch is None else self.opt_batch
        opt_in = max(1, self.max_input_len // 2) if self.opt_input_len is None else self.opt_input_len
        opt_ctx = max(2, self.max_context_len // 2) if self.opt_context_len is None else self.opt_context_len
        cfg = BuildConfig(
            **{**asdict(self), "opt_batch": opt_batch, "opt_input_len": opt_in, "opt_context_len": opt_ctx}
        )
        cfg._check()
        return cfg

    def _check(self) -> None:
        assert self.opt_batch is not None and self.opt_input_len is not None and self.opt_context_len is not None
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserInputError(
                f"batch sizes must satisfy 1 <= min ({self.min_batch}) <= opt ({self.opt_batch}) "
                f"<= max ({self.max_batch})"
            )
        if not 1 <= self.opt_input_len <= self.max_input_len:
            raise UserInputError(
                f"input lengths must satisfy 1 <= opt ({self.opt_input_len}) <= max ({self.max_input_len})"
            )
        if self.max_context_len < 2:
            raise UserInputError(
                f"max_context_len is {self.max_context_len}: it must be at least 2 (one cached token + one new)"
            )
        if self.max_input_len > self.max_context_len:
            raise UserInputError(
                f"max_input_len ({self.max_input_len}) exceeds max_context_len ({self.max_context_len}): "
                "the prompt must fit in the context; raise max_context_len or lower max_input_len"
            )
        if not 2 <= self.opt_context_len <= self.max_context_len:
            raise UserInputError(
                f"opt_context_len ({self.opt_context_len}) must lie in 2..max_context_len ({self.max_context_len})"
            )
        if self.builder_optimization_level is not None and not 0 <= self.builder_optimization_level <= 5:
            raise UserInputError(f"builder_optimization_level must be 0..5, not {self.builder_optimization_level}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise UserInputError(f"workspace_mib must be positive, not {self.workspace_mib}")


def _profile(num_layers: int, kv: tuple[int, int], batch: Dims, seq: Dims, past: Dims) -> Profile:
    """Shapes for the (min, opt, max) points, given each point's batch, sequence and past lengths."""
    heads, head_dim = kv

    def points(shape: Callable[[int], Dims]) -> tuple[Dims, Dims, Dims]:
        return shape(0), shape(1), shape(2)

    prof: Profile = {
        contract.INPUT_IDS: points(lambda k: (batch[k], seq[k])),
        contract.ATTENTION_MASK: points(lambda k: (batch[k], past[k] + seq[k])),
        contract.POSITION_IDS: points(lambda k: (batch[k], seq[k])),
    }
    cache = points(lambda k: (batch[k], heads, past[k], head_dim))
    for name in contract.past_names(num_layers):
        prof[name] = cache
    return prof


def _static_profile(num_layers: int, kv: tuple[int, int], batch: Dims, seq: Dims, cache_len: int) -> Profile:
    """Static contract: batch and sequence vary, the buffers and the mask keep ``cache_len`` slots."""
    heads, head_dim = kv

    def points(shape: Callable[[int], Dims]) -> tuple[Dims, Dims, Dims]:
        return shape(0), shape(1), shape(2)

    prof: Profile = {
        contract.INPUT_IDS: points(lambda k: (batch[k], seq[k])),
        contract.ATTENTION_MASK: points(lambda k: (batch[k], cache_len)),
        contract.POSITION_IDS: points(lambda k: (batch[k], seq[k])),
        contract.WRITE_INDICES: points(lambda k: (batch[k],)),
    }
    cache = points(lambda k: (batch[k], heads, cache_len, head_dim))
    for name in contract.past_names(num_layers):
        prof[name] = cache
    return prof


def optimization_profiles(
    cfg: BuildConfig, num_layers: int, num_kv_heads: int, head_dim: int, max_cache_len: int | None = None
) -> list[Profile]:
    """``[prefill, decode]``: per input name, its (min, opt, max) shapes (see the module docstring).
    ``max_cache_len``: a static-cache graph with buffers of that many slots (the concatenating one: None)."""
    for what, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads), ("head_dim", head_dim)):
        if value < 1:
            raise UserInputError(f"{what} must be positive, not {value}")
    c = cfg.resolved()
    assert c.opt_batch is not None and c.opt_input_len is not None and c.opt_context_len is not None
    batch = (c.min_batch, c.opt_batch, c.max_batch)
    kv = (num_kv_heads, head_dim)
    if max_cache_len is not None:
        if c.max_input_len > max_cache_len:
            raise UserInputError(
                f"max_input_len ({c.max_input_len}) exceeds the graph's {max_cache_len}-slot KV cache buffer: "
                "lower max_input_len or export with a larger --max-cache-len"
            )
        return [
            _static_profile(num_layers, kv, batch, (1, c.opt_input_len, c.max_input_len), max_cache_len),
            _static_profile(num_layers, kv, batch, (1, 1, 1), max_cache_len),
        ]
    prefill = _profile(num_layers, kv, batch, seq=(1, c.opt_input_len, c.max_input_len), past=(0, 0, 0))
    decode = _profile(num_layers, kv, batch, seq=(1, 1, 1), past=(1, c.opt_context_len - 1, c.max_context_len - 1))
    return [prefill, decode]


def profiles_to_json(profiles: list[Profile]) -> list[dict[str, Any]]:
    """The profiles as engine.json records them: name, then per input ``{"min","opt","max"}`` lists."""
    return [
        {
            "index": i,
            "name": PROFILE_NAMES[i],
            "shapes": {n: dict(zip(("min", "opt", "max"), map(list, p[n]), strict=True)) for n in p},
        }
        for i, p in enumerate(profiles)
    ]
