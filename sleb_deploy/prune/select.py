"""The SLEB selection rule as a pure function over a scoring callback (no torch here).

Official rule (jiwonsong-dev/SLEB `sleb.py`): in each phase, every alive block except the first
`early_barrier` and the last `latter_barrier` alive ones is a candidate; a candidate's score is the summed
negative log-likelihood of the calibration windows with that block skipped; the argmin (first one on a tie,
as `list.index(min(...))` does) is removed for good, and the next phase re-scores the pruned model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sleb_deploy.errors import UserInputError

# score_phase(alive, candidates) -> {candidate: summed NLL with it skipped}
PhaseScorer = Callable[[list[int], list[int]], dict[int, float]]


@dataclass
class Phase:
    """One greedy step: who was alive, every candidate's score, who went."""

    index: int
    alive: list[int]
    scores: dict[int, float]
    removed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.index,
            "alive": self.alive,
            "scores": {str(k): v for k, v in self.scores.items()},
            "removed": self.removed,
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Phase:
        known = {"phase", "alive", "scores", "removed"}
        return cls(
            index=int(data["phase"]),
            alive=[int(i) for i in data["alive"]],
            scores={int(k): float(v) for k, v in data["scores"].items()},
            removed=int(data["removed"]),
            extra={k: v for k, v in data.items() if k not in known},
        )


def max_removable(num_blocks: int, early_barrier: int, latter_barrier: int) -> int:
    """Each phase needs one candidate between the barriers."""
    return max(0, num_blocks - early_barrier - latter_barrier)


def num_to_remove(num_blocks: int, remove: int | None, ratio: float | None) -> int:
    """K from `--remove K` or `--ratio r` (K = ceil(r * N), as 16 of 80 and 8 of 40 in the SLEB README)."""
    if (remove is None) == (ratio is None):
        raise UserInputError("give exactly one of --remove K or --ratio R")
    if remove is None:
        if ratio is None or not 0.0 < ratio < 1.0:
            raise UserInputError(f"--ratio {ratio} must lie strictly between 0 and 1")
        remove = max(1, math.ceil(ratio * num_blocks - 1e-9))
    if remove < 1:
        raise UserInputError(f"--remove {remove}: remove at least one block")
    if remove >= num_blocks:
        raise UserInputError(f"--remove {remove} is not fewer than the model's {num_blocks} blocks; lower it")
    return remove


def check_barriers(num_blocks: int, k: int, early_barrier: int, latter_barrier: int) -> None:
    if early_barrier < 0 or latter_barrier < 0:
        raise UserInputError("barriers must be >= 0")
    limit = max_removable(num_blocks, early_barrier, latter_barrier)
    if k > limit:
        raise UserInputError(
            f"cannot remove {k} of {num_blocks} blocks with barriers ({early_barrier}, {latter_barrier}): "
            f"at most {limit}; lower --remove/--ratio or the barriers"
        )


def sleb_select(
    num_blocks: int,
    k: int,
    score_phase: PhaseScorer,
    early_barrier: int = 1,
    latter_barrier: int = 1,
    done: Sequence[Phase] = (),
    on_phase: Callable[[list[Phase]], None] | None = None,
) -> list[Phase]:
    """Greedy SLEB: remove `k` blocks one phase at a time; `done` resumes after finished phases."""
    check_barriers(num_blocks, k, early_barrier, latter_barrier)
    phases = list(done)
    alive = list(range(num_blocks))
    for phase in phases:
        alive.remove(phase.removed)
    while len(phases) < k:
        candidates = alive[early_barrier : len(alive) - latter_barrier]
        scores = score_phase(list(alive), candidates)
        best = min(candidates, key=lambda b: (scores[b], candidates.index(b)))
        phases.append(Phase(len(phases), list(alive), {c: scores[c] for c in candidates}, best))
        alive.remove(best)
        if on_phase is not None:
            on_phase(phases)
    return phases


def one_shot_select(scores: dict[int, float], k: int) -> list[int]:
    """The k lowest-scoring blocks, lowest first (baselines that rank once, e.g. block influence)."""
    return sorted(scores, key=lambda b: (scores[b], b))[:k]
