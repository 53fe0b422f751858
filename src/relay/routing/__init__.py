"""Routing: which workspace or pool serves a sender's domain. Policy only; picking inside a pool is `balancer/`."""

from .patterns import DomainTable, pattern_matches
from .pools import Member, pool_members
from .presentation import presented_sender
from .router import Route, Router, sender_domain

__all__ = [
    "DomainTable",
    "Member",
    "Route",
    "Router",
    "pattern_matches",
    "pool_members",
    "presented_sender",
    "sender_domain",
]
