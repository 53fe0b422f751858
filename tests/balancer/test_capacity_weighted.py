"""capacity_weighted: weighted random choice on weight x remaining fraction x urgency (sooner reset first)."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given

from relay.balancer import Candidate, select
from relay.balancer.strategies import capacity_weighted
from relay.balancer.strategies.capacity_weighted import RESET_HORIZON, score
from tests.balancer.support import PROPERTY, SEED, ScriptedRandom, candidate_lists, member, picks, shares


@pytest.mark.parametrize(
    ("weight", "fraction", "reset_in", "expected"),
    [
        (2.0, 0.5, 0.0, 2.0),  # resets now: urgency 2
        (2.0, 0.5, RESET_HORIZON / 2, 1.5),  # half a day away: urgency 1.5
        (2.0, 0.5, RESET_HORIZON, 1.0),  # a day away: urgency 1
        (2.0, 0.5, 3 * RESET_HORIZON, 1.0),  # further is the same as a day
        (1.0, 1.0, -5.0, 2.0),  # a negative wait counts as now
        (0.0, 1.0, 0.0, 0.0),  # no weight
        (3.0, 0.0, 0.0, 0.0),  # no capacity
    ],
)
def test_the_score_formula(weight: float, fraction: float, reset_in: float, expected: float) -> None:
    candidate = member("a", weight, remaining_fraction=fraction, full_reset_in=reset_in)
    assert score(candidate) == pytest.approx(expected)


def test_100k_picks_never_choose_a_zero_score_member() -> None:
    # Straight to the strategy, past eligibility, with members that score 0.
    candidates = [
        member("empty", 5.0, remaining_fraction=0.0),
        member("a", 1.0, remaining_fraction=0.3, full_reset_in=7200.0),
        member("weightless", 0.0),
        member("b", 2.0, remaining_fraction=0.9, full_reset_in=80_000.0),
    ]
    rng = Random(SEED)
    chosen = set()
    for _ in range(100_000):
        selection = capacity_weighted.pick(candidates, rng)
        assert selection is not None
        chosen.add(selection.workspace_id)
    assert chosen == {"a", "b"}


def test_the_sooner_resetting_of_two_otherwise_equal_members_gets_more() -> None:
    soon = member("soon", 1.0, remaining_fraction=0.5, full_reset_in=3600.0)
    late = member("late", 1.0, remaining_fraction=0.5, full_reset_in=72_000.0)
    got = shares(picks("capacity_weighted", [soon, late]))
    expected = (2 - 3600 / RESET_HORIZON) / ((2 - 3600 / RESET_HORIZON) + (2 - 72_000 / RESET_HORIZON))
    assert got["soon"] > got["late"]
    assert got["soon"] == pytest.approx(expected, abs=0.005)  # 0.6267


def test_100k_picks_follow_the_scores_within_half_a_point() -> None:
    candidates = [
        member("a", 2.0, remaining_fraction=1.0, full_reset_in=86_400.0),  # 2.0
        member("b", 2.0, remaining_fraction=0.25, full_reset_in=0.0),  # 1.0
        member("c", 1.0, remaining_fraction=0.5, full_reset_in=43_200.0),  # 0.75
        member("d", 1.0, remaining_fraction=0.25, full_reset_in=86_400.0),  # 0.25
    ]
    got = shares(picks("capacity_weighted", candidates))
    assert got == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.1875, "d": 0.0625}, abs=0.005)


def test_members_under_their_threshold_are_skipped() -> None:
    candidates = [
        member("low", 10.0, remaining_fraction=0.05, min_capacity_threshold=0.1),
        member("ok", 1.0, remaining_fraction=0.1, min_capacity_threshold=0.1),  # exactly at it: kept
    ]
    selection = select("capacity_weighted", candidates, Random(SEED))
    assert selection is not None
    assert selection.workspace_id == "ok"
    assert selection.excluded == {"low": "below_threshold"}
    assert selection.scores == {"ok": pytest.approx(0.2)}


def test_every_score_zero_is_none() -> None:
    assert capacity_weighted.pick([member("a", remaining_fraction=0.0)], ScriptedRandom([])) is None
    assert capacity_weighted.pick([], ScriptedRandom([])) is None


def test_scripted_draw_and_reported_scores() -> None:
    candidates = [member("a", 1.0, full_reset_in=RESET_HORIZON), member("b", 1.0, full_reset_in=0.0)]  # 1 and 2
    selection = capacity_weighted.pick(candidates, ScriptedRandom([0.34]))  # x = 1.02 -> b
    assert selection is not None
    assert (selection.workspace_id, selection.score, selection.reason) == ("b", 2.0, "capacity_weighted")
    assert selection.scores == {"a": 1.0, "b": 2.0}


@PROPERTY
@given(candidate_lists())
def test_the_pick_reports_exactly_the_score_formula(candidates: list[Candidate]) -> None:
    selection = capacity_weighted.pick(candidates, Random(SEED))
    expected = {c.workspace_id: score(c) for c in candidates}
    if not any(value > 0 for value in expected.values()):
        assert selection is None
        return
    assert selection is not None
    assert selection.scores == expected
    assert selection.score > 0
