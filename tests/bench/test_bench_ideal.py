"""The ideal speedup from measured costs (sleb_deploy/bench/ideal.py): known answers on exact lines."""

from __future__ import annotations

import pytest

from sleb_deploy.bench.ideal import CostLine, ideal


def test_cost_line_through_two_depths() -> None:
    line = CostLine.through(1, 12.0, 30, 70.0)  # t(L) = 10 + 2 L
    assert line.per_block == pytest.approx(2.0) and line.fixed == pytest.approx(10.0)
    assert line.time(24) == pytest.approx(58.0)
    with pytest.raises(ValueError):
        CostLine.through(3, 1.0, 3, 2.0)


def test_ideal_speedup_and_ratio() -> None:
    # dense 30 blocks 70 ms, probe 1 block 12 ms: c = 10, b = 2; pruned to 24 blocks ideally takes 58 ms.
    got = ideal(30, 70.0, 24, 1, 12.0, measured_speedup=70.0 / 60.0)
    assert got.speedup == pytest.approx(70.0 / 58.0)
    assert got.ratio == pytest.approx(58.0 / 60.0)  # measured 60 ms where 58 were ideal
    assert got.naive == pytest.approx(30 / 24)
    assert got.fixed_share == pytest.approx(10.0 / 70.0)
    exact = ideal(30, 70.0, 24, 1, 12.0, measured_speedup=70.0 / 58.0)
    assert exact.ratio == pytest.approx(1.0)
    # no fixed cost at all: the ideal is the block count ratio
    assert ideal(30, 60.0, 24, 1, 2.0, None).speedup == pytest.approx(30 / 24)


def test_ideal_undefined_cases_say_why() -> None:
    no_probe = ideal(30, 70.0, 24, None, None, 1.2)
    assert no_probe.speedup is None and no_probe.ratio is None and "probe" in no_probe.note
    assert no_probe.naive == pytest.approx(1.25)
    flat = ideal(30, 70.0, 24, 1, 71.0, 1.2)  # noise: the probe measured slower than dense
    assert flat.speedup is None and "per-block" in flat.note
