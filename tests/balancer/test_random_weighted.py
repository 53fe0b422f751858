"""random_weighted: weighted random choice by configured weight (cumulative sums + bisect)."""

from __future__ import annotations

import pytest

from relay.balancer.strategies import random_weighted
from relay.balancer.strategies.random_weighted import weighted_index
from tests.balancer.support import ScriptedRandom, member, picks, pool, shares


def test_100k_seeded_picks_are_within_half_a_point_of_the_weights() -> None:
    weights = {"a": 5.0, "b": 3.0, "c": 1.5, "d": 0.5}
    got = shares(picks("random_weighted", pool(*weights.values())))
    total = sum(weights.values())
    for ws, weight in weights.items():
        assert got[ws] == pytest.approx(weight / total, abs=0.005), (ws, got)


def test_two_to_one_weights_split_two_to_one() -> None:
    # The previous relay split 2:1 weights 51/49.
    got = shares(picks("random_weighted", pool(2.0, 1.0)))
    assert got["a"] == pytest.approx(2 / 3, abs=0.005)


def test_scripted_draws_pick_exactly_by_cumulative_weight() -> None:
    # Weights 1, 2, 1: cumulative 1, 3, 4; x = r * 4 falls in [0,1) -> a, [1,3) -> b, [3,4) -> c.
    rng = ScriptedRandom([0.0, 0.2499, 0.25, 0.7499, 0.75, 0.9999])
    chosen = [random_weighted.pick(pool(1, 2, 1), rng) for _ in range(6)]
    assert [s.workspace_id for s in chosen if s] == ["a", "a", "b", "b", "c", "c"]


def test_a_zero_width_entry_is_never_returned() -> None:
    cumulative = [1.0, 1.0, 2.0, 2.0]  # weights 1, 0, 1, 0
    rng = ScriptedRandom([0.0, 0.4999, 0.5, 0.9999999999999999])
    assert [weighted_index(cumulative, rng) for _ in range(4)] == [0, 0, 2, 2]


def test_no_positive_total_is_none() -> None:
    assert weighted_index([], ScriptedRandom([])) is None
    assert weighted_index([0.0, 0.0], ScriptedRandom([0.5])) is None
    assert random_weighted.pick([], ScriptedRandom([])) is None


def test_selection_reports_weights_as_scores() -> None:
    selection = random_weighted.pick([member("a", 2.0), member("b", 0.5)], ScriptedRandom([0.9]))
    assert selection is not None
    assert (selection.workspace_id, selection.score, selection.reason) == ("b", 0.5, "random_weighted")
    assert selection.scores == {"a": 2.0, "b": 0.5}
