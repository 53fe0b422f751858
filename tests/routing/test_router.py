from __future__ import annotations

from typing import Any

from relay.config import Settings
from relay.routing import Route, Router, sender_domain


def settings(**extra: Any) -> Settings:
    data: dict[str, Any] = {
        "workspaces": [
            {"id": "direct", "domains": ["joinmednet.org", "*.mednet.org"], "sandbox": {}},
            {"id": "off", "domains": ["disabled.org"], "sandbox": {"enabled": False}},
            {"id": "pooled", "domains": ["pooled.org"], "sandbox": {}},
        ],
        "load_balancing_pools": [
            {
                "id": "invite",
                "name": "Invite",
                "domain_patterns": ["invite.com", "*.mednet.org", "disabled.org"],
                "workspaces": [{"workspace_id": "pooled"}],
            },
            {"id": "paused", "name": "Paused", "domain_patterns": ["paused.com"], "enabled": False},
        ],
        "fallback_workspace": "direct",
    }
    data.update(extra)
    return Settings(**data)


def test_direct_mapping_wins_over_a_pool_pattern() -> None:
    router = Router(settings())
    assert router.route("brian@joinmednet.org") == Route("direct", "direct")
    assert router.route("brian@conf.mednet.org") == Route("direct", "direct")  # also a pool pattern


def test_pool_patterns_route_generic_domains() -> None:
    router = Router(settings())
    assert router.route("Brian@Invite.COM") == Route("pool", "invite")


def test_disabled_workspaces_and_pools_do_not_serve() -> None:
    router = Router(settings())
    assert router.route("a@disabled.org") == Route("pool", "invite")  # the disabled workspace steps aside
    assert router.route("a@paused.com") is None


def test_unserved_and_malformed_senders() -> None:
    router = Router(settings())
    assert not router.serves("a@elsewhere.com")
    assert not router.serves("")  # the null sender <>
    assert not router.serves("no-domain")
    assert sender_domain("x@Example.ORG.") == "example.org"
    assert sender_domain("@example.org") is None
