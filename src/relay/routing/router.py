"""Sender address → route: a directly mapped workspace, a load-balancing pool, or nothing. No I/O."""

from __future__ import annotations

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
    """Resolves senders against one configuration snapshot. Direct mapping always wins over pools (FR9)."""

    def __init__(self, settings: Settings) -> None:
        self._workspaces = DomainTable(
            (domain, w.id) for w in settings.workspaces if w.provider.enabled for domain in w.all_domains
        )
        self._pools = DomainTable(
            (pattern, p.id) for p in settings.load_balancing_pools if p.enabled for pattern in p.domain_patterns
        )
        self.fallback_workspace = settings.fallback_workspace

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

    def serves(self, sender: str) -> bool:
        """Whether mail from `sender` may be accepted at all (DESIGN invariant 6)."""
        return self.route(sender) is not None
