"""Sender address → route: a directly mapped workspace, a load-balancing pool, or nothing. No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..config import Settings
from .patterns import DomainTable

__all__ = ["Route", "Router", "sender_domain"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a sender's mail goes. `kind` is `direct` (one workspace) or `pool` (chosen per message)."""

    kind: Literal["direct", "pool"]
    target: str  # workspace id or pool id


def sender_domain(address: str) -> str | None:
    """The lower-cased domain of `local@domain`, or None for the null sender and bare local parts."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return None
    return domain.strip().lower().rstrip(".")


class Router:
    """Resolves senders against one configuration snapshot. Direct mapping always wins over pools (FR9).

    Pools can change while Relay runs (SIGHUP, the database): `replace_pools` swaps the pool table in one
    assignment, so a lookup sees either the old table or the new one, never a mix.
    """

    def __init__(self, settings: Settings, pools: Iterable[tuple[str, str]] | None = None) -> None:
        self.update(settings)
        if pools is None:
            pools = (
                (pattern, p.id) for p in settings.load_balancing_pools if p.enabled for pattern in p.domain_patterns
            )
        self._pools = DomainTable(pools)

    def update(self, settings: Settings) -> None:
        """Adopt new settings' direct domains and fallback workspace (a reload); pools come from `replace_pools`."""
        self._workspaces = DomainTable(
            (domain, w.id) for w in settings.workspaces if w.provider.enabled for domain in w.all_domains
        )
        self.fallback_workspace = settings.fallback_workspace

    def replace_pools(self, pools: Iterable[tuple[str, str]]) -> None:
        """Route pool domains by these (pattern, pool id) pairs from now on (enabled pools only)."""
        self._pools = DomainTable(pools)

    def route(self, sender: str) -> Route | None:
        domain = sender_domain(sender)
        if domain is None:
            return None
        workspace = self._workspaces.lookup(domain)
        if workspace is not None:
            return Route("direct", workspace)
        pool = self._pools.lookup(domain)
        if pool is not None:
            return Route("pool", pool)
        return None

    def direct(self, sender: str) -> str | None:
        """The workspace that serves `sender`'s domain directly, ignoring pools (the PRD's degradation step)."""
        domain = sender_domain(sender)
        return self._workspaces.lookup(domain) if domain is not None else None

    def serves(self, sender: str) -> bool:
        """Whether mail from `sender` may be accepted at all (DESIGN invariant 6)."""
        return self.route(sender) is not None
