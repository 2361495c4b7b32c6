"""The memory plan of a SLEB run: which scorer, how much memory at the peak, how many block loads and forwards.

Pure arithmetic (no torch), so it is unit-tested on configs no machine here could load (LLaMA-2-70B). Inputs:
the model's shape (from its config, or exact byte counts from the checkpoint's safetensors headers), the
calibration size (windows x tokens), the batch size, the dtype and a budget (``--max-memory``, else the free
memory of the device). The three scorers differ in what they hold at once:

- ``cached`` / ``naive``: every weight, on the device, all the time. ``cached`` also keeps every candidate's
  input for all windows (the states); ``naive`` keeps none and pays about twice the block forwards.
- ``streamed``: the non-block weights (embedding, final norm, head) stay; the blocks come from the checkpoint
  one at a time, each once per phase and window group, so the weights cost one block. What remains large are the
  states (one hidden state per candidate and window, plus the unskipped path): the windows are split into the
  fewest groups whose states fit, each group streaming the blocks once more; if even one batch's states do not
  fit on an accelerator, they live in CPU memory and visit the device per forward.

``auto`` takes ``cached`` when it fits (no block loads at all), else ``streamed`` with the fewest groups.
Figures are estimates for planning: activations are counted for the largest single forward (a block's MLP or
attention scores, or the vocabulary head), plus a fixed runtime allowance.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from sleb_deploy.errors import UserInputError

GiB = 1 << 30
# The process itself on CPU: torch, transformers, the tokenizer and the tokenized texts (measured 1.1 GB peak
# RSS before any weight is loaded, default model and texts); on a GPU, the CUDA context and allocator slack.
RUNTIME_BYTES = {"cpu": 1 * GiB, "accelerator": 1 * GiB}

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str) -> int:
    """``8GiB``, ``80GB``, ``512MiB``, ``1.5TB`` or a byte count -> bytes (GB = 10^9, GiB = 2^30)."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise UserInputError(f"--max-memory {text!r} is not a size; give e.g. 8GiB, 80GB or 512MiB")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UserInputError(f"--max-memory {text!r} must be more than zero")
    return value


def format_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / (1 << 20):.0f} MiB"


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a decoder config: sizes of a block, of the rest, and of the activations."""

    num_blocks: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    mlp_matrices: int = 3  # gated MLPs (gate, up, down); 2 for fc1/fc2 (OPT)

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From an HF config object or its dict (OPT's ``ffn_dim`` and fc MLP included)."""
        data: dict[str, Any] = config if isinstance(config, dict) else config.to_dict()

        def get(key: str, default: Any = None) -> Any:
            return data.get(key, default)

        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        opt = get("model_type") == "opt"
        return cls(
            num_blocks=int(get("num_hidden_layers")),
            hidden=hidden,
            heads=heads,
            kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(get("head_dim") or hidden // heads),
            intermediate=int(get("ffn_dim") if opt else get("intermediate_size")),
            vocab=int(get("vocab_size")),
            tied=bool(get("tie_word_embeddings", True)),
            mlp_matrices=2 if opt else 3,
        )

    def block_params(self) -> int:
        attn = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return attn + self.mlp_matrices * self.hidden * self.intermediate + 2 * self.hidden

    def other_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of the largest block and of everything outside the blocks, at the scoring dtype."""

    block: int
    other: int
    num_blocks: int

    @classmethod
    def from_shape(cls, shape: ModelShape, dtype_bytes: int) -> WeightBytes:
        return cls(shape.block_params() * dtype_bytes, shape.other_params() * dtype_bytes, shape.num_blocks)

    @property
    def total(self) -> int:
        return self.block * self.num_blocks + self.other


@dataclass(frozen=True)
class Calibration:
    windows: int
    seq_len: int
    batch_size: int = 1
    eval_windows: int = 0  # perplexity windows (dense and pruned) that the streamed path also streams


def phases(num_blocks: int, k: int, early: int = 1, latter: int = 1) -> list[tuple[int, int]]:
    """(alive blocks, candidates) of each of the k phases."""
    return [(num_blocks - i, num_blocks - i - early - latter) for i in range(k)]


def block_forwards_per_window(scorer: str, num_blocks: int, k: int, early: int = 1, latter: int = 1) -> int:
    """Block forwards per calibration window over all phases.

    ``naive``: every candidate runs the m - 1 other blocks. ``cached`` and ``streamed``: the unskipped path runs
    the blocks before the last candidate once, and the candidate at alive position p runs the m - 1 - p after it.
    """
    total = 0
    for m, c in phases(num_blocks, k, early, latter):
        if scorer == "naive":
            total += c * (m - 1)
        else:
            last = early + c - 1  # alive position of the last candidate
            total += last + sum(m - 1 - p for p in range(early, early + c))
    return total


@dataclass
class MemoryPlan:
    """What ``prune`` will do and hold; printed before the run and recorded in ``sleb.json``."""

    scorer: str
    device: str
    budget_bytes: int
    budget_source: str  # "--max-memory" | "free device memory" | "free CPU memory"
    weights_bytes: int
    resident_weights_bytes: int  # weights held at once
    states_bytes: int  # hidden states kept on the device (cached: candidates' inputs; streamed: one group's)
    host_states_bytes: int  # streamed with states in CPU memory (accelerators only)
    work_bytes: int  # the largest forward's activations + runtime allowance
    peak_bytes: int
    window_groups: int
    states_on: str  # "device" | "cpu" | "none"
    block_loads: int  # streamed: blocks read from the checkpoint (scoring + perplexity); 0 when resident
    block_forwards: int  # window x block forwards over all phases
    head_forwards: int  # window x vocabulary-head forwards (one per candidate per phase)
    fits: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The printed plan, a few lines."""
        where = f"{self.window_groups} window group(s), states on {self.states_on}" if self.scorer == "streamed" else ""
        lines = [
            f"plan: {self.scorer} scorer on {self.device}; peak ~{format_bytes(self.peak_bytes)} of "
            f"{format_bytes(self.budget_bytes)} ({self.budget_source}){'' if self.fits else ' - DOES NOT FIT'}",
            f"  weights {format_bytes(self.weights_bytes)}, held at once {format_bytes(self.resident_weights_bytes)}"
            f"; states {format_bytes(self.states_bytes)}"
            + (f" (+{format_bytes(self.host_states_bytes)} in CPU memory)" if self.host_states_bytes else "")
            + f"; activations+runtime {format_bytes(self.work_bytes)}",
            f"  block loads {self.block_loads}, block forwards {self.block_forwards}, "
            f"head forwards {self.head_forwards}" + (f"; {where}" if where else ""),
        ]
        return "\n".join(lines)


def work_bytes(shape: ModelShape, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """Activations of the largest single forward of one batch: a block (attention scores or the MLP) or the
    head (logits, and a second logits-sized temporary for soft-capping), plus its input and output."""
    tokens = batch * seq_len
    attention = batch * shape.heads * seq_len * seq_len * dtype_bytes
    qkv = tokens * (shape.heads + 2 * shape.kv_heads) * shape.head_dim * dtype_bytes
    mlp = 3 * tokens * shape.intermediate * dtype_bytes
    head = 2 * tokens * shape.vocab * dtype_bytes
    return max(attention + qkv, mlp, head) + 2 * tokens * shape.hidden * dtype_bytes


def plan_memory(
    shape: ModelShape,
    calib: Calibration,
    k: int,
    dtype_bytes: int,
    budget_bytes: int,
    *,
    scorer: str = "auto",
    device: str = "cpu",
    budget_source: str = "--max-memory",
    weights: WeightBytes | None = None,
    early: int = 1,
    latter: int = 1,
) -> MemoryPlan:
    """The plan for ``scorer`` (``auto``: cached if it fits, else streamed with the fewest window groups)."""
    weights = weights or WeightBytes.from_shape(shape, dtype_bytes)
    n = shape.num_blocks
    accelerator = not device.startswith("cpu")
    work = work_bytes(shape, calib.batch_size, calib.seq_len, dtype_bytes)
    work += RUNTIME_BYTES["accelerator" if accelerator else "cpu"]
    window_state = calib.seq_len * shape.hidden * dtype_bytes  # one window's hidden state
    first_candidates = phases(n, k, early, latter)[0][1] if k else 0
    forwards_per_window = {s: block_forwards_per_window(s, n, k, early, latter) for s in ("naive", "cached")}
    heads = calib.windows * sum(c for _, c in phases(n, k, early, latter))

    def resident(name: str) -> MemoryPlan:
        states = first_candidates * calib.windows * window_state if name == "cached" else 0
        peak = weights.total + states + work
        return MemoryPlan(
            name, device, budget_bytes, budget_source, weights.total, weights.total, states, 0, work, peak, 1,
            "device" if states else "none", 0, forwards_per_window[name] * calib.windows, heads,
            peak <= budget_bytes,
        )  # fmt: skip

    def streamed(groups: int, on_host: bool) -> MemoryPlan:
        batches = math.ceil(calib.windows / calib.batch_size)
        per_group = min(calib.windows, math.ceil(batches / groups) * calib.batch_size)
        paths = first_candidates + 1  # every candidate's state and the unskipped one
        if on_host:
            device_states, host_states = 2 * calib.batch_size * window_state, paths * calib.windows * window_state
        else:
            device_states, host_states = paths * per_group * window_state, 0
        held = weights.other + weights.block
        peak = held + device_states + work
        scoring_loads = groups * sum(m for m, _ in phases(n, k, early, latter))
        eval_loads = (n + (n - k)) if calib.eval_windows else 0
        return MemoryPlan(
            "streamed", device, budget_bytes, budget_source, weights.total, held, device_states, host_states,
            work, peak, groups, "cpu" if on_host else "device", scoring_loads + eval_loads,
            forwards_per_window["cached"] * calib.windows, heads, peak <= budget_bytes,
        )  # fmt: skip

    def best_streamed() -> MemoryPlan:
        max_groups = math.ceil(calib.windows / calib.batch_size)
        options = [streamed(g, False) for g in _group_counts(calib.windows, calib.batch_size)]
        fitting = [p for p in options if p.fits]
        if fitting:
            return fitting[0]
        if accelerator:
            on_host = streamed(1, True)
            if on_host.fits:
                return on_host
        return streamed(max_groups, False)

    if scorer in ("cached", "naive"):
        return resident(scorer)
    if scorer == "streamed":
        return best_streamed()
    cached = resident("cached")
    return cached if cached.fits else best_streamed()


def _group_counts(windows: int, batch: int) -> list[int]:
    """Distinct group counts, fewest first, whose groups are whole batches."""
    counts: list[int] = []
    batches = math.ceil(windows / batch)
    for per_group_batches in range(batches, 0, -1):
        g = math.ceil(batches / per_group_batches)
        if g not in counts:
            counts.append(g)
    return counts


def free_memory(device: str) -> tuple[int, str]:
    """Free bytes where scoring runs (the budget without ``--max-memory``) and what was measured."""
    if device.startswith("cpu"):
        try:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            return int(info["MemAvailable"].split()[0]) * 1024, "free CPU memory"
        except (OSError, KeyError):  # pragma: no cover - not Linux
            import os

            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free CPU memory"
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free), "free device memory"
