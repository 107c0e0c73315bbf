"""How `mmhil bench boot --against` pairs its runs and tells a change from the noise."""

import pytest

from harness.bench import Sample, median_difference, paired
from harness.errors import MmhilError


def test_each_boot_is_paired_with_the_floor_run_just_before_it_and_subjects_take_turns() -> None:
    order: list[str] = []
    clock = iter(range(1, 1000))

    def run(name: str, seconds: float) -> float:
        order.append(name)
        return seconds + next(clock) / 1000

    lives = paired({"a": (lambda: run("a-floor", 20), lambda: run("a-boot", 25)),
                    "b": (lambda: run("b-floor", 20), lambda: run("b-boot", 24))}, 3)
    assert order == ["a-floor", "a-boot", "b-floor", "b-boot"] * 4  # the first round is not measured
    assert len(lives["a"].boots.values) == len(lives["b"].floors.values) == 3
    # Each pair is one step of the clock apart, so every lead is its boot's seconds less its floor's, plus 1 ms.
    assert all(lead == pytest.approx(5.001) for lead in lives["a"].leads.values)
    assert all(lead == pytest.approx(4.001) for lead in lives["b"].leads.values)


def test_a_shift_larger_than_the_spread_is_told_apart_and_none_is_not() -> None:
    noise = tuple(4.0 + 0.1 * ((i * 7) % 11) for i in range(60))
    same = median_difference(Sample(noise), Sample(tuple(reversed(noise))))
    assert same.median == 0 and same.low <= 0 <= same.high and not same.settled
    slower = median_difference(Sample(noise), Sample(tuple(v + 0.5 for v in noise)))
    assert slower.median == pytest.approx(0.5) and slower.settled and 0 < slower.low <= 0.5 <= slower.high
    faster = median_difference(Sample(noise), Sample(tuple(v - 0.5 for v in noise)))
    assert faster.settled and faster.high < 0


def test_fewer_than_three_runs_on_a_side_are_refused() -> None:
    with pytest.raises(MmhilError, match="at least 3 runs"):
        median_difference(Sample((1.0, 2.0)), Sample((1.0, 2.0, 3.0)))
