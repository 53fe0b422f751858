"""select(): eligibility before strategy, the strategy table, and properties over arbitrary pools."""

from __future__ import annotations

import math
from random import Random
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.balancer import STRATEGIES, Candidate, RoundRobin, eligible, exclusion_reason, select
from relay.config import Strategy
from tests.balancer.support import PROPERTY, SEED, candidate_lists, member


def rule_holds(c: Candidate) -> bool:
    return (
        c.enabled
        and c.weight > 0
        and c.healthy
        and c.sender_allowed
        and c.remaining_fraction > 0
        and c.remaining_fraction >= c.min_capacity_threshold
    )


def test_strategies_are_keyed_by_the_config_literal() -> None:
    assert set(STRATEGIES) == set(get_args(Strategy))
    assert len(STRATEGIES) == len(get_args(Strategy))


@pytest.mark.parametrize("strategy", get_args(Strategy))
def test_an_empty_pool_is_none(strategy: Strategy) -> None:
    assert select(strategy, [], Random(SEED), RoundRobin()) is None


@pytest.mark.parametrize("strategy", get_args(Strategy))
def test_a_pool_with_nothing_eligible_is_none(strategy: Strategy) -> None:
    candidates = [member("a", healthy=False), member("b", remaining_fraction=0.0), member("c", 0.0)]
    assert select(strategy, candidates, Random(SEED), RoundRobin()) is None
    assert eligible(candidates) == ([], {"a": "unhealthy", "b": "no_capacity", "c": "zero_weight"})


def test_an_unknown_strategy_is_an_error() -> None:
    with pytest.raises(ValueError, match='unknown strategy "fastest"'):
        select("fastest", [member("a")], Random(SEED))  # type: ignore[arg-type]


def test_exclusion_reasons_in_rule_order() -> None:
    candidates = [
        member("off", enabled=False, healthy=False),
        member("weightless", 0.0, healthy=False),
        member("sick", healthy=False, remaining_fraction=0.0),
        member("foreign", sender_allowed=False),
        member("empty", remaining_fraction=0.0),
        member("low", remaining_fraction=0.09, min_capacity_threshold=0.1),
        member("ok", remaining_fraction=0.1, min_capacity_threshold=0.1),
    ]
    selection = select("random_weighted", candidates, Random(SEED))
    assert selection is not None
    assert selection.workspace_id == "ok"
    assert selection.scores == {"ok": 1.0}
    assert selection.excluded == {
        "off": "disabled",
        "weightless": "zero_weight",
        "sick": "unhealthy",
        "foreign": "sender_not_allowed",
        "empty": "no_capacity",
        "low": "below_threshold",
    }


@PROPERTY
@given(candidate_lists())
def test_eligibility_partitions_the_pool_by_the_rules(candidates: list[Candidate]) -> None:
    kept, excluded = eligible(candidates)
    assert kept == [c for c in candidates if rule_holds(c)]  # order preserved
    assert set(excluded) == {c.workspace_id for c in candidates if not rule_holds(c)}
    for c in candidates:
        assert (exclusion_reason(c) is None) == rule_holds(c)
        if c.workspace_id in excluded:
            assert excluded[c.workspace_id] == exclusion_reason(c)


@PROPERTY
@given(candidate_lists(), st.sampled_from(get_args(Strategy)), st.integers(min_value=0, max_value=2**32))
def test_the_pick_is_always_an_eligible_candidate(candidates: list[Candidate], strategy: Strategy, seed: int) -> None:
    rng = Random(seed)
    state = RoundRobin()
    kept, excluded = eligible(candidates)
    eligible_ids = {c.workspace_id for c in kept}
    for _ in range(5):
        selection = select(strategy, candidates, rng, state)
        if not kept:
            assert selection is None
            continue
        assert selection is not None
        assert selection.workspace_id in eligible_ids
        assert selection.reason == strategy
        assert set(selection.scores) == eligible_ids
        assert selection.excluded == excluded
        assert math.isfinite(selection.score)
        assert selection.score == selection.scores[selection.workspace_id]
        if strategy == "capacity_weighted":
            assert selection.score > 0
