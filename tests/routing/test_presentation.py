from __future__ import annotations

from typing import Any

import pytest

from relay.config import Workspace
from relay.routing.presentation import presented_sender


def workspace(*domains: str, provider: dict[str, Any] | None = None, **load_balancing: Any) -> Workspace:
    return Workspace.model_validate(
        {
            "id": "w",
            "domains": list(domains),
            "load_balancing": load_balancing,
            **(provider or {"sandbox": {}}),
        }
    )


GMAIL = {"gmail": {"service_account_file": "sa.json", "default_sender": "noreply@joinmednet.org"}}


def test_keep_is_the_default() -> None:
    assert presented_sender(workspace("joinmednet.org"), "brian@invite.com") is None


@pytest.mark.parametrize(
    ("domains", "sender", "expected"),
    [
        (["joinmednet.org"], "brian@invite.com", "brian@joinmednet.org"),
        (["*.mednet.org", "JoinMednet.org", "other.org"], "Brian.Smith@invite.com", "Brian.Smith@joinmednet.org"),
        (["joinmednet.org"], '"odd@local"@invite.com', '"odd@local"@joinmednet.org'),
        (["joinmednet.org"], "Brian@JoinMednet.ORG", None),  # already there
        (["*.mednet.org"], "brian@invite.com", None),  # no domain to rewrite to (the config checks refuse this)
        (["joinmednet.org"], "", None),  # the null sender
        (["joinmednet.org"], "postmaster", None),
    ],
)
def test_domain_mode_moves_the_local_part_to_the_primary_domain(
    domains: list[str], sender: str, expected: str | None
) -> None:
    assert presented_sender(workspace(*domains, sender_rewrite="domain"), sender) == expected


def test_the_legacy_single_domain_counts_as_primary() -> None:
    w = Workspace.model_validate(
        {"id": "w", "domain": "legacy.org", "sandbox": {}, "load_balancing": {"sender_rewrite": "domain"}}
    )
    assert presented_sender(w, "brian@invite.com") == "brian@legacy.org"


def test_default_sender_mode() -> None:
    own = workspace("joinmednet.org", sender_rewrite="default_sender", default_sender="Relay@JoinMednet.org")
    assert presented_sender(own, "brian@invite.com") == "relay@joinmednet.org"
    assert presented_sender(own, "RELAY@joinmednet.org") is None
    gmail = workspace("joinmednet.org", provider=GMAIL, sender_rewrite="default_sender")
    assert presented_sender(gmail, "brian@invite.com") == "noreply@joinmednet.org"
    both = workspace(
        "joinmednet.org", provider=GMAIL, sender_rewrite="default_sender", default_sender="pool@joinmednet.org"
    )
    assert presented_sender(both, "brian@invite.com") == "pool@joinmednet.org"  # the load_balancing one wins
    missing = workspace("joinmednet.org", sender_rewrite="default_sender")
    assert presented_sender(missing, "brian@invite.com") is None  # the config checks refuse this


def test_keep_never_rewrites_even_with_a_default_sender() -> None:
    w = workspace("joinmednet.org", provider=GMAIL, default_sender="pool@joinmednet.org")
    assert presented_sender(w, "brian@invite.com") is None
