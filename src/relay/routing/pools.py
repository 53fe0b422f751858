"""Who is in a load-balancing pool (PRD FR1, TR6): policy from the config, no I/O.

Members are the pool's own `workspaces` list, plus every workspace whose `load_balancing.pools` names the
pool (at its `default_weight`). A workspace with `load_balancing.enabled: false` opts out of every pool,
and one whose provider is disabled never takes mail. A pool's own entry wins over the opt-in listing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Pool, Settings

__all__ = ["Member", "pool_members"]


@dataclass(frozen=True, slots=True)
class Member:
    workspace_id: str
    weight: float
    enabled: bool
    min_capacity_threshold: float


def pool_members(settings: Settings, pool: Pool) -> list[Member]:
    """The pool's members in a stable order: its own list first, then opt-ins in config order."""
    workspaces = {w.id: w for w in settings.workspaces}
    members: dict[str, Member] = {}
    for entry in pool.workspaces:
        workspace = workspaces.get(entry.workspace_id)
        if workspace is None:
            continue
        members[entry.workspace_id] = Member(
            entry.workspace_id,
            entry.weight,
            entry.enabled,
            workspace.load_balancing.min_capacity_threshold,
        )
    for workspace in settings.workspaces:
        if pool.id in workspace.load_balancing.pools and workspace.id not in members:
            lb = workspace.load_balancing
            members[workspace.id] = Member(workspace.id, lb.default_weight, True, lb.min_capacity_threshold)
    return [
        m
        for m in members.values()
        if workspaces[m.workspace_id].provider.enabled and _opted_in(settings, m.workspace_id, pool)
    ]


def _opted_in(settings: Settings, workspace_id: str, pool: Pool) -> bool:
    """`load_balancing.enabled: false` opts a workspace out of every pool — unless it only appears in the
    pool's own list and never configured load balancing at all (zero configuration, PRD)."""
    workspace = settings.workspace(workspace_id)
    assert workspace is not None
    lb = workspace.load_balancing
    return lb.enabled or (
        "enabled" not in lb.model_fields_set and workspace_id in {m.workspace_id for m in pool.workspaces}
    )
