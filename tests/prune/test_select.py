"""The pure SLEB loop on synthetic scores: rule, ties, barriers, resume, K validation."""

from __future__ import annotations

import pytest

from sleb_deploy.errors import UserInputError
from sleb_deploy.prune.select import Phase, check_barriers, num_to_remove, one_shot_select, sleb_select


def additive_scorer(cost: dict[int, float], calls: list[tuple[list[int], list[int]]]):  # type: ignore[no-untyped-def]
    """Loss of removing block b = cost[b] + number of blocks already gone (so phases differ)."""

    def score(alive: list[int], candidates: list[int]) -> dict[int, float]:
        calls.append((alive, candidates))
        gone = 10 - len(alive)
        return {c: cost[c] + gone for c in candidates}

    return score


def test_removes_argmin_each_phase_within_barriers() -> None:
    cost = {i: float(c) for i, c in enumerate([0, 5, 1, 7, 2, 9, 3, 8, 4, 0])}
    calls: list[tuple[list[int], list[int]]] = []
    phases = sleb_select(10, 3, additive_scorer(cost, calls))
    assert [p.removed for p in phases] == [2, 4, 6]
    # blocks 0 and the last alive one (9) are never candidates though their cost is lowest
    assert all(0 not in cands and alive[-1] not in cands for alive, cands in calls)
    assert calls[1][0] == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert phases[1].scores[4] == 3.0


def test_tie_goes_to_first_candidate_like_list_index() -> None:
    phases = sleb_select(6, 1, lambda alive, cands: {c: 1.0 for c in cands})
    assert phases[0].removed == 1


def test_barriers_move_candidates() -> None:
    calls: list[tuple[list[int], list[int]]] = []
    sleb_select(8, 1, additive_scorer({i: 0.0 for i in range(10)}, calls), early_barrier=2, latter_barrier=3)
    assert calls[0][1] == [2, 3, 4]


def test_resume_skips_done_phases_and_gives_the_same_result() -> None:
    cost = {i: float(c) for i, c in enumerate([0, 5, 1, 7, 2, 9, 3, 8, 4, 0])}
    full = sleb_select(10, 4, additive_scorer(cost, []))
    calls: list[tuple[list[int], list[int]]] = []
    resumed = sleb_select(10, 4, additive_scorer(cost, calls), done=[Phase.from_json(p.to_json()) for p in full[:2]])
    assert [p.removed for p in resumed] == [p.removed for p in full]
    assert len(calls) == 2


def test_num_to_remove() -> None:
    assert num_to_remove(30, None, 0.2) == 6  # 0.2 * 30 is 6.000000000000001 in floating point
    assert num_to_remove(80, None, 0.2) == 16
    assert num_to_remove(30, 5, None) == 5
    for remove, ratio in [(30, None), (31, None), (0, None), (None, 0.0), (None, 1.0), (None, -0.1), (3, 0.1)]:
        with pytest.raises(UserInputError):
            num_to_remove(30, remove, ratio)


def test_barriers_limit_k() -> None:
    check_barriers(10, 8, 1, 1)
    with pytest.raises(UserInputError, match="at most 8"):
        check_barriers(10, 9, 1, 1)


def test_one_shot_select() -> None:
    assert one_shot_select({0: 0.5, 1: 0.1, 2: 0.1, 3: 0.9}, 2) == [1, 2]
