"""The ideal speedup of a pruned model, from costs measured on the same backend and shape.

Removing blocks cannot remove the work outside them: the embedding lookup, the final norm, the vocabulary
head (49152 x 576 on the default model, a large share of a small model), the host loop and the runtime's
per-call overhead. So "30 blocks -> 24 blocks = 1.25x" is an assumption, not an ideal. We measure instead.

Model of the latency of one phase (prefill, one decode step or a whole generation) at one shape::

    t(L) = c + L * b          L blocks, c the cost outside the blocks, b the cost of one block

Two depths fix the line. We time the dense model (N blocks, ``t_N``) and a *probe*: the same model cut to
its first block (``t_1``), on the same backend, with the same prompts, batch and phase, interleaved with the
others. Then::

    b = (t_N - t_1) / (N - 1)
    c = t_1 - b
    ideal pruned time  t*(M) = c + M * b = t_1 + (M - 1) * b
    ideal speedup      s*    = t_N / t*(M)
    ratio to ideal     q     = s / s*  = t*(M) / t_M       (s = t_N / t_M, the measured speedup)

``q = 1`` means pruning delivered everything the removed blocks' measured share predicts; ``q < 1`` means
the pruned model is slower than its depth predicts (e.g. a fixed cost that scaled, or noise); ``q > 1`` means
it is faster (e.g. it now fits a cache). The line assumes blocks of equal cost, which holds for models whose
blocks are all alike (Llama, Qwen, Mistral); for Gemma-2/3, whose blocks alternate sliding-window and global
attention, the first block is a sliding one and the slope is a sliding block's. ``s_naive = N / M`` (all
time in the blocks) is kept beside it as the upper bound that a zero-cost outside would give.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CostLine:
    """``t(L) = fixed + L * per_block``, fitted through two measured depths."""

    fixed: float
    per_block: float

    @classmethod
    def through(cls, blocks_a: int, time_a: float, blocks_b: int, time_b: float) -> CostLine:
        if blocks_a == blocks_b:
            raise ValueError(f"two different depths are needed to fit a cost line (both {blocks_a})")
        per_block = (time_b - time_a) / (blocks_b - blocks_a)
        return cls(fixed=time_a - blocks_a * per_block, per_block=per_block)

    def time(self, blocks: int) -> float:
        return self.fixed + blocks * self.per_block


@dataclass(frozen=True)
class Ideal:
    """The ideal figures of one pruned row (``None`` where the measurements cannot define them)."""

    speedup: float | None  # s* = t_N / t*(M)
    ratio: float | None  # q = measured speedup / s*
    naive: float  # N / M
    fixed_share: float | None  # c / t_N: the part of the dense time no block removal can touch
    note: str = ""


def ideal(
    dense_blocks: int,
    dense_time: float,
    pruned_blocks: int,
    probe_blocks: int | None,
    probe_time: float | None,
    measured_speedup: float | None,
) -> Ideal:
    """Ideal speedup of ``pruned_blocks`` over ``dense_blocks`` (see the module docstring for the arithmetic).

    Without a probe, or when the line is not increasing (the probe measured as slow as the dense model:
    noise swamps the blocks' cost at this shape), only the naive ratio is given, with a note saying why.
    """
    naive = dense_blocks / pruned_blocks
    if probe_blocks is None or probe_time is None:
        return Ideal(None, None, naive, None, "no probe measured: ideal needs the 1-block probe")
    line = CostLine.through(probe_blocks, probe_time, dense_blocks, dense_time)
    if line.per_block <= 0:
        return Ideal(None, None, naive, None, "probe not faster than dense: no measurable per-block cost")
    target = line.time(pruned_blocks)
    if target <= 0:
        return Ideal(None, None, naive, None, "fitted line predicts a non-positive pruned time")
    speedup = dense_time / target
    ratio = measured_speedup / speedup if measured_speedup is not None else None
    return Ideal(speedup, ratio, naive, line.fixed / dense_time)
