"""least_used: power-of-two-choices on utilisation with in-flight sends counted."""

from __future__ import annotations

from math import comb
from random import Random

import pytest

from relay.balancer import select
from relay.balancer.strategies import least_used
from relay.balancer.strategies.least_used import load
from tests.balancer.support import SEED, member, picks, shares


def test_load_counts_in_flight_sends_against_the_limit() -> None:
    assert load(member("a", utilisation=0.5, in_flight=10, limit=100)) == pytest.approx(0.6)
    assert load(member("a", utilisation=0.5, in_flight=10, limit=0)) == 0.5


def test_100k_picks_never_choose_the_most_utilised_member() -> None:
    candidates = [member(f"ws{i}", utilisation=u) for i, u in enumerate([0.3, 0.1, 0.9, 0.5, 0.2])]
    assert "ws2" not in picks("least_used", candidates)


def test_in_flight_sends_make_a_member_the_most_utilised() -> None:
    candidates = [
        member("busy", utilisation=0.2, in_flight=30, limit=100),  # 0.5
        member("a", utilisation=0.4, in_flight=0, limit=100),
        member("b", utilisation=0.3, in_flight=5, limit=100),  # 0.35
    ]
    assert "busy" not in picks("least_used", candidates)


def test_p2c_shares_by_rank_instead_of_argmin() -> None:
    # Distinct pairs: the r-th least loaded of n wins exactly the pairs with a worse member, (n-1-r) / C(n, 2).
    # Processes sharing one stale snapshot therefore spread 40/30/20/10/0 where argmin would send 100% to ws0.
    candidates = [member(f"ws{i}", utilisation=u) for i, u in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])]
    got = shares(picks("least_used", candidates))
    n = len(candidates)
    for r in range(n):
        assert got.get(f"ws{r}", 0.0) == pytest.approx((n - 1 - r) / comb(n, 2), abs=0.005), got


def test_ties_are_a_coin_flip() -> None:
    # One busy member of three: it never wins, the two idle ones share evenly (each 1/3 * 1/2 + 1/3).
    candidates = [member("idle1"), member("idle2"), member("busy", utilisation=0.8)]
    got = shares(picks("least_used", candidates))
    assert got == pytest.approx({"idle1": 0.5, "idle2": 0.5}, abs=0.005)


def test_equal_load_breaks_on_in_flight_when_there_is_no_limit() -> None:
    candidates = [member("a", in_flight=3), member("b", in_flight=1)]
    assert set(picks("least_used", candidates, n=1000)) == {"b"}


def test_one_eligible_member_is_chosen_and_none_is_none() -> None:
    rng = Random(SEED)
    selection = select("least_used", [member("only", utilisation=0.99), member("off", enabled=False)], rng)
    assert selection is not None
    assert (selection.workspace_id, selection.reason, selection.excluded) == ("only", "least_used", {"off": "disabled"})
    assert least_used.pick([], rng) is None
