"""round_robin: nginx's smooth weighted round robin, one RoundRobin per pool, random start offset."""

from __future__ import annotations

from collections import Counter
from random import Random

import pytest

from relay.balancer import RoundRobin, select
from relay.balancer.strategies.round_robin import MAX_OFFSET
from tests.balancer.support import PICKS, SEED, member, picks, pool


def test_weights_5_1_1_give_aabacaa() -> None:
    sequence = picks("round_robin", pool(5, 1, 1), n=21, state=RoundRobin(offset=0))
    assert "".join(sequence) == "aabacaa" * 3


def test_equal_weights_are_plain_round_robin() -> None:
    sequence = picks("round_robin", pool(1, 1, 1, 1), n=8, state=RoundRobin(offset=0))
    assert "".join(sequence) == "abcd" * 2


@pytest.mark.parametrize("offset", [0, None])
def test_100k_picks_give_exactly_k_w_per_full_cycle(offset: int | None) -> None:
    weights = {"a": 5, "b": 3, "c": 1, "d": 1}
    cycle = sum(weights.values())
    sequence = picks("round_robin", pool(*weights.values()), state=RoundRobin(offset=offset))
    counts: Counter[str] = Counter()
    for k in range(1, PICKS // cycle + 1):
        window = Counter(sequence[(k - 1) * cycle : k * cycle])
        assert window == weights, k
        counts += window
        assert counts == {ws: k * w for ws, w in weights.items()}, k


@pytest.mark.parametrize("weights", [(5, 1, 1), (7, 4, 2, 1), (3, 3, 2, 1, 1), (1000, 1, 1), (2, 1.5, 1)])
def test_every_prefix_stays_within_one_pick_of_its_share(weights: tuple[float, ...]) -> None:
    candidates = pool(*weights)
    total = sum(weights)
    sequence = picks("round_robin", candidates, state=RoundRobin(offset=0))
    counts = dict.fromkeys((c.workspace_id for c in candidates), 0)
    worst = 0.0
    for t, ws in enumerate(sequence, start=1):
        counts[ws] += 1
        for c in candidates:
            worst = max(worst, abs(counts[c.workspace_id] - t * c.weight / total))
    assert worst < 1.0, worst


def test_current_values_always_sum_to_zero() -> None:
    state = RoundRobin(offset=0)
    rng = Random(SEED)
    for _ in range(1000):
        select("round_robin", pool(5, 3, 1, 1), rng, state)
        assert sum(state.current.values()) == 0


def test_the_random_offset_spreads_first_picks_by_weight() -> None:
    firsts: Counter[str] = Counter()
    for seed in range(4000):
        selection = select("round_robin", pool(2, 1, 1), Random(seed), RoundRobin())
        assert selection is not None
        firsts[selection.workspace_id] += 1
    assert firsts["a"] / 4000 == pytest.approx(0.5, abs=0.03)
    assert firsts["b"] / 4000 == pytest.approx(0.25, abs=0.03)
    assert firsts["c"] / 4000 == pytest.approx(0.25, abs=0.03)


def test_the_offset_is_drawn_once_and_capped() -> None:
    state = RoundRobin()
    sequence = picks("round_robin", pool(1000, 1000), n=4, state=state)
    assert sequence in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
    assert MAX_OFFSET == 1024


def test_a_member_that_becomes_ineligible_is_skipped_and_a_new_one_joins() -> None:
    state = RoundRobin(offset=0)
    rng = Random(SEED)
    assert picks("round_robin", pool(1, 1), n=2, state=state) == ["a", "b"]
    unhealthy_b = [member("a"), member("b", healthy=False)]
    assert [s.workspace_id for s in (select("round_robin", unhealthy_b, rng, state) for _ in range(3)) if s] == [
        "a",
        "a",
        "a",
    ]
    joined = Counter(picks("round_robin", pool(1, 1, 1), n=300, state=state))
    assert max(joined.values()) - min(joined.values()) <= 3


def test_a_failure_lowers_the_effective_weight_which_then_ramps_back() -> None:
    state = RoundRobin(offset=0)
    candidates = pool(3, 3)
    state.failed("a", max_fails=1)  # before the first pick: unknown member, ignored
    assert picks("round_robin", candidates, n=2, state=state) == ["a", "b"]
    state.failed("a", max_fails=1)  # effective 0, then +1 per pick
    after = picks("round_robin", candidates, n=6, state=state)
    assert after.count("b") > after.count("a")
    assert Counter(picks("round_robin", candidates, n=600, state=state)) == {"a": 300, "b": 300}


def test_round_robin_needs_its_state() -> None:
    with pytest.raises(ValueError, match="RoundRobin state"):
        select("round_robin", pool(1, 1), Random(SEED))
