"""Routing: which workspace or pool serves a sender's domain. Policy only; picking inside a pool is `balancer/`."""

from .patterns import DomainTable, pattern_matches
from .router import Route, Router, sender_domain

__all__ = ["DomainTable", "Route", "Router", "pattern_matches", "sender_domain"]
