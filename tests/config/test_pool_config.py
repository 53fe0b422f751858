"""Pool configuration (PRD TR4, TR6, TR8): every invalid pool gives one problem naming its JSON path."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.config import MAX_POOL_MEMBERS, MAX_POOLS, load_settings
from relay.errors import ConfigError

Change = Callable[[dict[str, Any]], object]


def ws(workspace_id: str, *domains: str, **extra: Any) -> dict[str, Any]:
    return {"id": workspace_id, "domains": list(domains) or [f"{workspace_id}.example"], "sandbox": {}, **extra}


def base() -> dict[str, Any]:
    """Two workspaces and one pool, no fallback workspace: valid as it is."""
    return {
        "smtp": {"hostname": "relay.test"},
        "workspaces": [ws("mg-1", "joinmednet.org", "*.joinmednet.org"), ws("mg-2", "mednet.example")],
        "load_balancing_pools": [
            {
                "id": "invite",
                "name": "Invite",
                "domain_patterns": ["invite.com", "*.invite.com"],
                "workspaces": [{"workspace_id": "mg-1", "weight": 2.5}, {"workspace_id": "mg-2"}],
            }
        ],
    }


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(data))
    return path


def problems(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, data))
    return [str(p) for p in caught.value.problems]


def pool(data: dict[str, Any], i: int = 0) -> dict[str, Any]:
    pools: list[dict[str, Any]] = data["load_balancing_pools"]
    return pools[i]


def lb(data: dict[str, Any], i: int = 0) -> dict[str, Any]:
    workspace: dict[str, Any] = data["workspaces"][i]
    return workspace.setdefault("load_balancing", {})


def test_the_base_loads_without_a_fallback_workspace(tmp_path: Path) -> None:
    # Pool selection ships: an enabled pool no longer needs fallback_workspace.
    settings = load_settings(write(tmp_path, base()))
    assert settings.fallback_workspace is None
    assert settings.load_balancing_pools[0].workspaces[0].weight == 2.5
    assert settings.load_balancing_pools[0].max_failover_attempts is None


def test_a_zero_configuration_pool_gets_the_defaults(tmp_path: Path) -> None:
    data = base()
    data["load_balancing_pools"] = [
        {"id": "invite", "name": "Invite", "domain_patterns": ["invite.com"], "workspaces": [{"workspace_id": "mg-1"}]}
    ]
    settings = load_settings(write(tmp_path, data))
    loaded = settings.load_balancing_pools[0]
    assert loaded.strategy == "capacity_weighted"
    assert loaded.enabled is True
    assert loaded.max_failover_attempts is None
    assert [(m.workspace_id, m.weight, m.enabled) for m in loaded.workspaces] == [("mg-1", 1.0, True)]
    workspace = settings.workspaces[0].load_balancing
    assert (workspace.sender_rewrite, workspace.default_sender, workspace.default_weight) == ("keep", None, 1.0)


def test_the_new_fields_load(tmp_path: Path) -> None:
    data = base()
    pool(data)["max_failover_attempts"] = 0
    lb(data).update(
        sender_rewrite="default_sender", default_sender=" Postmaster@JoinMedNet.ORG. ", default_weight=999.99
    )
    lb(data, 1).update(sender_rewrite="domain")
    settings = load_settings(write(tmp_path, data))
    assert settings.load_balancing_pools[0].max_failover_attempts == 0
    assert settings.workspaces[0].load_balancing.default_sender == "postmaster@joinmednet.org"
    assert settings.workspaces[0].load_balancing.default_weight == 999.99
    assert settings.workspaces[1].load_balancing.sender_rewrite == "domain"


def many_workspaces(n: int) -> list[dict[str, Any]]:
    return [ws(f"w{k}") for k in range(n)]


def with_pools(n: int) -> Change:
    def change(data: dict[str, Any]) -> None:
        data["load_balancing_pools"] = [
            {"id": f"p{k}", "name": f"P{k}", "domain_patterns": [f"p{k}.example"], "workspaces": []} for k in range(n)
        ]

    return change


def with_members(listed: int, opted_in: int) -> Change:
    def change(data: dict[str, Any]) -> None:
        data["workspaces"] = many_workspaces(listed + opted_in)
        pool(data)["workspaces"] = [{"workspace_id": f"w{k}"} for k in range(listed)]
        for k in range(listed, listed + opted_in):
            data["workspaces"][k]["load_balancing"] = {"enabled": True, "pools": ["invite"]}

    return change


def second_pool(*patterns: str) -> Change:
    def change(data: dict[str, Any]) -> None:
        data["load_balancing_pools"].append({"id": "other", "name": "Other", "domain_patterns": list(patterns)})

    return change


INVALID: list[tuple[str, Change, str]] = [
    (
        "unknown workspace",
        lambda d: pool(d)["workspaces"].append({"workspace_id": "mailgn-1"}),
        'load_balancing_pools[0].workspaces[2].workspace_id: unknown workspace "mailgn-1"',
    ),
    (
        "workspace listed twice",
        lambda d: pool(d)["workspaces"].append({"workspace_id": "mg-2"}),
        'load_balancing_pools[0].workspaces[2].workspace_id: workspace "mg-2" is listed twice',
    ),
    (
        "duplicate pool id",
        lambda d: d["load_balancing_pools"].append({"id": "invite", "name": "Again", "domain_patterns": ["a.org"]}),
        'load_balancing_pools[1].id: duplicate pool id "invite"',
    ),
    (
        "unknown strategy",
        lambda d: pool(d).update(strategy="fastest"),
        "load_balancing_pools[0].strategy: Input should be 'capacity_weighted', 'round_robin', 'least_used' or "
        "'random_weighted'",
    ),
    (
        "negative weight",
        lambda d: pool(d)["workspaces"][0].update(weight=-1),
        "load_balancing_pools[0].workspaces[0].weight: Input should be greater than or equal to 0",
    ),
    (
        "weight above DECIMAL(5,2)",
        lambda d: pool(d)["workspaces"][0].update(weight=1000),
        "load_balancing_pools[0].workspaces[0].weight: Input should be less than or equal to 999.99",
    ),
    (
        "weight with three decimals",
        lambda d: pool(d)["workspaces"][0].update(weight=1.005),
        "load_balancing_pools[0].workspaces[0].weight: 1.005 has more than 2 decimal places "
        "(weights are stored as DECIMAL(5,2))",
    ),
    (
        "default weight above DECIMAL(5,2)",
        lambda d: lb(d).update(default_weight=999.991),
        "workspaces[0].load_balancing.default_weight: Input should be less than or equal to 999.99",
    ),
    (
        "max_failover_attempts above 49",
        lambda d: pool(d).update(max_failover_attempts=50),
        "load_balancing_pools[0].max_failover_attempts: Input should be less than or equal to 49",
    ),
    (
        "same pattern in two pools",
        second_pool("other.org", "*.INVITE.com"),
        'load_balancing_pools[1].domain_patterns[1]: pattern "*.invite.com" is already used by pool "invite"',
    ),
    (
        "same pattern twice in one pool",
        lambda d: pool(d)["domain_patterns"].append("Invite.com"),
        'load_balancing_pools[0].domain_patterns[2]: pattern "invite.com" is listed twice',
    ),
    (
        "pattern equal to a direct domain",
        second_pool("mednet.example"),
        'load_balancing_pools[1].domain_patterns[0]: pattern "mednet.example" never applies: workspace "mg-2" '
        "serves it directly, and direct mapping always wins over pools",
    ),
    (
        "wildcard equal to a direct wildcard",
        second_pool("*.JoinMednet.org"),
        'load_balancing_pools[1].domain_patterns[0]: pattern "*.joinmednet.org" never applies: workspace "mg-1" '
        "serves it directly, and direct mapping always wins over pools",
    ),
    (
        "pattern inside a direct wildcard",
        second_pool("*.eu.joinmednet.org"),
        'load_balancing_pools[1].domain_patterns[0]: pattern "*.eu.joinmednet.org" never applies: workspace "mg-1" '
        'serves it directly through "*.joinmednet.org", and direct mapping always wins over pools',
    ),
    (
        "21 pools",
        with_pools(MAX_POOLS + 1),
        "load_balancing_pools: at most 20 pools are supported (found 21)",
    ),
    (
        "51 members in the pool's own list",
        with_members(MAX_POOL_MEMBERS + 1, 0),
        "load_balancing_pools[0].workspaces: at most 50 workspaces per pool are supported (found 51, counting the "
        "workspaces that name this pool in load_balancing.pools)",
    ),
    (
        "51 members counting opt-ins",
        with_members(30, 21),
        "load_balancing_pools[0].workspaces: at most 50 workspaces per pool are supported (found 51, counting the "
        "workspaces that name this pool in load_balancing.pools)",
    ),
    (
        "sender_rewrite domain without a plain domain",
        lambda d: d["workspaces"].append(ws("wild", "*.wild.example", load_balancing={"sender_rewrite": "domain"})),
        'workspaces[2].load_balancing.sender_rewrite: "domain" needs a domain to rewrite to, and every domain of '
        "this workspace is a wildcard; add one to domains or choose another sender_rewrite",
    ),
    (
        "sender_rewrite default_sender without an address",
        lambda d: lb(d).update(sender_rewrite="default_sender"),
        'workspaces[0].load_balancing.sender_rewrite: "default_sender" needs an address: set '
        "load_balancing.default_sender",
    ),
    (
        "sender_rewrite default_sender on gmail without an address",
        lambda d: d["workspaces"].append(
            {
                "id": "gmail-1",
                "domains": ["gmail.example"],
                "gmail": {"service_account_file": "sa.json"},
                "load_balancing": {"sender_rewrite": "default_sender"},
            }
        ),
        'workspaces[2].load_balancing.sender_rewrite: "default_sender" needs an address: set '
        "load_balancing.default_sender or gmail.default_sender",
    ),
    (
        "unknown sender_rewrite",
        lambda d: lb(d).update(sender_rewrite="rewrite"),
        "workspaces[0].load_balancing.sender_rewrite: Input should be 'keep', 'domain' or 'default_sender'",
    ),
    (
        "default_sender that is not an address",
        lambda d: lb(d).update(sender_rewrite="default_sender", default_sender="postmaster"),
        'workspaces[0].load_balancing.default_sender: "postmaster" is not an email address (local@domain)',
    ),
]


@pytest.mark.parametrize(("change", "expected"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_each_invalid_pool_gives_one_problem_with_its_path(tmp_path: Path, change: Change, expected: str) -> None:
    data = base()
    change(data)
    assert problems(tmp_path, data) == [expected]


def listed_and_opted_in(data: dict[str, Any]) -> None:
    with_members(MAX_POOL_MEMBERS, 0)(data)
    lb(data).update(enabled=True, pools=["invite"])  # w0 is in the pool's list too: it counts once


def exact_domain_beside_a_direct_wildcard(data: dict[str, Any]) -> None:
    data["workspaces"][0] = ws("mg-1", "*.joinmednet.org")  # matches subdomains only, never joinmednet.org
    second_pool("joinmednet.org")(data)


def disabled_workspace_domain(data: dict[str, Any]) -> None:
    data["workspaces"][1]["sandbox"]["enabled"] = False  # it routes nothing, so the pool does get the domain
    second_pool("mednet.example")(data)


def gmail_default_sender(data: dict[str, Any]) -> None:
    data["workspaces"].append(
        {
            "id": "gmail-1",
            "domains": ["gmail.example"],
            "gmail": {"service_account_file": "sa.json", "default_sender": "noreply@gmail.example"},
            "load_balancing": {"sender_rewrite": "default_sender"},
        }
    )


VALID: list[tuple[str, Change]] = [
    ("20 pools", with_pools(MAX_POOLS)),
    ("50 listed", with_members(MAX_POOL_MEMBERS, 0)),
    ("25 listed and 25 opted in", with_members(25, 25)),
    ("listed and opted in counts once", listed_and_opted_in),
    ("overlapping wildcard still serves other subdomains", second_pool("*.mednet.example")),
    ("exact domain beside a direct wildcard", exact_domain_beside_a_direct_wildcard),
    ("disabled workspace's domain", disabled_workspace_domain),
    ("domain rewrite", lambda d: lb(d, 1).update(sender_rewrite="domain")),
    ("gmail default_sender", gmail_default_sender),
    ("49 failovers", lambda d: pool(d).update(max_failover_attempts=49)),
]


@pytest.mark.parametrize("change", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_limits_and_overlaps_that_are_fine(tmp_path: Path, change: Change) -> None:
    data = base()
    change(data)
    load_settings(write(tmp_path, data))


def test_config_check_names_a_shadowed_pattern(tmp_path: Path) -> None:
    data = base()
    second_pool("joinmednet.org")(data)
    path = write(tmp_path, data)
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "config", "check", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[1:] == [
        '  load_balancing_pools[1].domain_patterns[0]: pattern "joinmednet.org" never applies: workspace "mg-1" '
        "serves it directly, and direct mapping always wins over pools"
    ]
