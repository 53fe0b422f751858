from __future__ import annotations

from typing import Any

from relay.config import Settings
from relay.routing.pools import Member, pool_members


def settings(*workspaces: dict[str, Any], members: list[dict[str, Any]] | None = None) -> Settings:
    return Settings(
        workspaces=list(workspaces),
        load_balancing_pools=[
            {"id": "invite", "name": "Invite", "domain_patterns": ["invite.com"], "workspaces": members or []}
        ],
        fallback_workspace=workspaces[0]["id"],
    )


def ws(workspace_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": workspace_id, "domains": [f"{workspace_id}.example"], "sandbox": {}, **extra}


def test_the_pools_own_list_and_opt_ins() -> None:
    s = settings(
        ws("a"),
        ws(
            "b",
            load_balancing={"enabled": True, "pools": ["invite"], "default_weight": 1.5, "min_capacity_threshold": 0.2},
        ),
        ws("c", load_balancing={"enabled": True, "pools": ["other"]}),
        members=[{"workspace_id": "a", "weight": 2.0}],
    )
    assert pool_members(s, s.load_balancing_pools[0]) == [Member("a", 2.0, True, 0.1), Member("b", 1.5, True, 0.2)]


def test_the_pools_own_entry_wins_over_the_opt_in_weight() -> None:
    s = settings(
        ws("a", load_balancing={"enabled": True, "pools": ["invite"], "default_weight": 9}),
        members=[{"workspace_id": "a", "weight": 2.0, "enabled": False}],
    )
    assert pool_members(s, s.load_balancing_pools[0]) == [Member("a", 2.0, False, 0.1)]


def test_opting_out_and_disabled_providers_leave_every_pool() -> None:
    s = settings(
        ws("a", load_balancing={"enabled": False}),
        ws("b", sandbox={"enabled": False}),
        ws("c"),
        members=[{"workspace_id": "a"}, {"workspace_id": "b"}, {"workspace_id": "c"}],
    )
    assert [m.workspace_id for m in pool_members(s, s.load_balancing_pools[0])] == ["c"]
