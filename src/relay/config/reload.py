"""What a configuration reload (SIGHUP) may change while Relay runs, and what needs a restart."""

from __future__ import annotations

from .settings import Settings

__all__ = ["header_rewrites", "restart_required"]

_RESTART_SECTIONS = ("smtp", "http", "database_url", "redis_url", "delivery", "instance_name", "webhooks")


def restart_required(old: Settings, new: Settings) -> list[str]:
    """The settings that differ between `old` and `new` and only take effect at start (JSON paths). Workspaces
    may be added, removed or changed, their provider included (it is rebuilt)."""
    return [name for name in _RESTART_SECTIONS if getattr(old, name) != getattr(new, name)]


def header_rewrites(settings: Settings) -> dict[str, tuple[tuple[str, str], ...]]:
    """Each workspace's enabled header rewrite rules as (header name, new value) pairs."""
    return {
        w.id: tuple((r.header_name, r.new_value) for r in w.provider.header_rewrite.rules)
        for w in settings.workspaces
        if w.provider.header_rewrite.enabled
    }
