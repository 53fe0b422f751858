"""Rules across objects of a structurally valid configuration; each problem names its JSON path."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import Problem
from .settings import Settings

__all__ = ["cross_checks"]


def cross_checks(settings: Settings) -> list[Problem]:
    return [*_workspace_problems(settings), *_pool_problems(settings), *_smtp_problems(settings)]


def _workspace_problems(settings: Settings) -> Iterator[Problem]:
    seen_ids: set[str] = set()
    domain_owner: dict[str, str] = {}
    pool_ids = {p.id for p in settings.load_balancing_pools}
    for i, workspace in enumerate(settings.workspaces):
        where = f"workspaces[{i}]"
        if workspace.id in seen_ids:
            yield Problem(f"{where}.id", f'duplicate workspace id "{workspace.id}"')
        seen_ids.add(workspace.id)
        for j, domain in enumerate(workspace.domains):
            owner = domain_owner.setdefault(domain, workspace.id)
            if owner != workspace.id:
                yield Problem(f"{where}.domains[{j}]", f'domain "{domain}" is already served by workspace "{owner}"')
        for j, pool_id in enumerate(workspace.load_balancing.pools):
            if pool_id not in pool_ids:
                yield Problem(f"{where}.load_balancing.pools[{j}]", f'unknown pool "{pool_id}"')
    fallback = settings.workspace(settings.fallback_workspace) if settings.fallback_workspace else None
    if settings.fallback_workspace is not None and fallback is None:
        yield Problem("fallback_workspace", f'unknown workspace "{settings.fallback_workspace}"')
    elif fallback is not None and not fallback.provider.enabled:
        yield Problem("fallback_workspace", f'workspace "{fallback.id}" is disabled')
    elif fallback is None and any(p.enabled for p in settings.load_balancing_pools):
        # Until pool selection ships, pool senders are delivered through the fallback workspace; without
        # one their mail would be accepted and then wait in the queue until it expires.
        yield Problem(
            "fallback_workspace",
            "required while load_balancing_pools are enabled: pool senders are delivered through it in this version",
        )


def _pool_problems(settings: Settings) -> Iterator[Problem]:
    workspace_ids = {w.id for w in settings.workspaces}
    seen: set[str] = set()
    pattern_owner: dict[str, str] = {}
    for i, pool in enumerate(settings.load_balancing_pools):
        where = f"load_balancing_pools[{i}]"
        if pool.id in seen:
            yield Problem(f"{where}.id", f'duplicate pool id "{pool.id}"')
        seen.add(pool.id)
        for j, pattern in enumerate(pool.domain_patterns):
            owner = pattern_owner.setdefault(pattern, pool.id)
            if owner != pool.id:
                yield Problem(f"{where}.domain_patterns[{j}]", f'pattern "{pattern}" is already used by pool "{owner}"')
        members: set[str] = set()
        for j, member in enumerate(pool.workspaces):
            if member.workspace_id not in workspace_ids:
                yield Problem(f"{where}.workspaces[{j}].workspace_id", f'unknown workspace "{member.workspace_id}"')
            if member.workspace_id in members:
                yield Problem(
                    f"{where}.workspaces[{j}].workspace_id", f'workspace "{member.workspace_id}" is listed twice'
                )
            members.add(member.workspace_id)


def _smtp_problems(settings: Settings) -> Iterator[Problem]:
    smtp = settings.smtp
    names: set[str] = set()
    for i, user in enumerate(smtp.users):
        if user.username in names:
            yield Problem(f"smtp.users[{i}].username", f'duplicate user "{user.username}"')
        names.add(user.username)
    if smtp.users and smtp.auth_require_tls and smtp.tls_cert is None:
        yield Problem(
            "smtp.users",
            "these users can never log in: AUTH is only offered after STARTTLS (auth_require_tls is true) and "
            "there is no certificate; set smtp.tls_cert and smtp.tls_key, or set smtp.auth_require_tls to false",
        )
    for field in ("tls_cert", "tls_key"):
        path = getattr(smtp, field)
        if path is not None and not path.is_file():
            yield Problem(f"smtp.{field}", f'file "{path}" does not exist')
