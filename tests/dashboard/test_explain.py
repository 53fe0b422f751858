"""The routing decision in words (`relay.dashboard.explain`), from the evidence an attempt records: a pool's
choice with every score, exclusions, a failover, a spill past the thresholds, and a pool with no member."""

from __future__ import annotations

from typing import Any

from relay.dashboard.explain import explain


def test_a_choice_names_the_pool_the_strategy_and_every_score_highest_first() -> None:
    evidence = {
        "pool": "invite",
        "strategy": "capacity_weighted",
        "workspace": "ws-a",
        "score": 0.75,
        "capacity": 0.5,
        "scores": {"ws-d": 0.1, "ws-a": 0.75, "ws-b": 0.25},
        "excluded": {"ws-c": "unhealthy"},
    }
    assert explain(evidence, "ws-a") == (
        "Pool invite (capacity_weighted) chose ws-a: score 0.7500 vs ws-b 0.2500, ws-d 0.1000 (a weighted draw: "
        "68.2 % chance); 50.0 % of its capacity left; excluded: ws-c (unhealthy, circuit open or blocked)."
    )


def test_least_used_shows_loads_lowest_first_and_round_robin_has_no_chance() -> None:
    evidence = {"pool": "p", "strategy": "least_used", "workspace": "b", "scores": {"a": 0.5, "b": 0.1, "c": 0.3}}
    assert explain(evidence, "b") == "Pool p (least_used) chose b: load 0.1000 vs c 0.3000, a 0.5000 (lower is better)."
    turn = {"pool": "p", "strategy": "round_robin", "workspace": "a", "score": 2.0, "scores": {"a": 2.0, "b": -1.0}}
    assert explain(turn, "a") == "Pool p (round_robin) chose a: score 2.0000 vs b -1.0000."


def test_a_failover_names_the_member_already_tried() -> None:
    evidence = {
        "pool": "invite",
        "strategy": "round_robin",
        "workspace": "ws-b",
        "score": 1.0,
        "capacity": 1.0,
        "scores": {"ws-b": 1.0},
        "excluded": {"ws-a": "already_tried"},
        "failover": 1,
    }
    assert explain(evidence, "ws-b") == (
        "Pool invite (round_robin) chose ws-b: score 1.0000, the only eligible member; 100.0 % of its capacity "
        "left; excluded: ws-a (already tried in this pass); failover after 1 earlier try in this pass."
    )
    assert "after 2 earlier tries" in explain({**evidence, "failover": 2}, "ws-b")


def test_a_refused_reservation_gives_the_limit_s_reason() -> None:
    evidence = {
        "pool": "p",
        "strategy": "least_used",
        "workspace": "ws-a",
        "score": 0.9,
        "scores": {"ws-a": 0.9},
        "excluded": {"ws-b": "reservation_refused", "ws-c": "below_threshold"},
        "refused": {"ws-b": "daily limit of 100 reached", "ws-d": "all connections busy"},
    }
    text = explain(evidence, "ws-a")
    assert "ws-b (its limits refused the send: daily limit of 100 reached)" in text
    assert "ws-c (under its minimum capacity threshold)" in text
    assert "ws-d (its limits refused the send: all connections busy)" in text  # refused, not in `excluded`


def test_a_spill_says_the_threshold_was_set_aside() -> None:
    evidence = {"pool": "p", "strategy": "capacity_weighted", "workspace": "a", "score": 0.05, "spilled": True}
    text = explain(evidence, "a")
    assert "every member was under its capacity threshold, so the threshold was set aside" in text


def test_an_exhausted_pool_says_where_the_message_went_instead() -> None:
    evidence = {
        "pool": "invite",
        "strategy": "capacity_weighted",
        "workspace": None,
        "scores": {},
        "excluded": {"ws-a": "no_capacity", "ws-b": "disabled"},
        "fallback_action": "fallback_workspace",
    }
    assert explain(evidence, "spare") == (
        "Pool invite (capacity_weighted) had no member available; sent through spare instead, the "
        "fallback_workspace; excluded: ws-a (no capacity left), ws-b (disabled)."
    )
    direct = explain({**evidence, "fallback_action": "direct_mapping"}, "mapped")
    assert "sent through mapped instead, the sender's direct mapping" in direct


def test_no_evidence_is_a_direct_route_or_nothing_recorded() -> None:
    assert explain(None, "ws-a") == "Direct route: the sender's domain maps to ws-a; no pool decided."
    assert explain({}, None) == "No routing decision was recorded."


def test_odd_evidence_gives_a_plainer_sentence_not_an_error() -> None:
    odd: list[Any] = [
        {"pool": 3, "workspace": ["x"], "scores": "many", "excluded": [1], "failover": "two"},
        {"pool": "p", "workspace": "a", "score": "high", "scores": {"a": None, "b": True}, "excluded": {"c": 5}},
        {"strategy": "s"},
        "not a mapping",
    ]
    for evidence in odd:
        text = explain(evidence, "a")
        assert isinstance(text, str) and text.endswith(".")
    assert (
        explain(odd[1], "a")
        == "Pool p chose a: score unknown, the only eligible member; excluded: c (no reason recorded)."
    )
    assert explain({"pool": "p", "workspace": "a", "score": 0.5}, "b") == (
        "Pool p chose a: score 0.5000, the only eligible member; but the attempt went through b."
    )
