"""Rules across objects of a structurally valid configuration; each problem names its JSON path."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import Problem
from .models import Pool, Workspace
from .settings import Settings

__all__ = ["MAX_POOLS", "MAX_POOL_MEMBERS", "cross_checks"]

MAX_POOLS = 20  # PRD TR8
MAX_POOL_MEMBERS = 50  # PRD TR8: the pool's own list plus the workspaces that opt in


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
        yield from _sender_rewrite_problems(where, workspace)
    fallback = settings.workspace(settings.fallback_workspace) if settings.fallback_workspace else None
    if settings.fallback_workspace is not None and fallback is None:
        yield Problem("fallback_workspace", f'unknown workspace "{settings.fallback_workspace}"')
    elif fallback is not None and not fallback.provider.enabled:
        yield Problem("fallback_workspace", f'workspace "{fallback.id}" is disabled')


def _sender_rewrite_problems(where: str, workspace: Workspace) -> Iterator[Problem]:
    lb = workspace.load_balancing
    path = f"{where}.load_balancing.sender_rewrite"
    if lb.sender_rewrite == "domain" and workspace.primary_domain is None:
        yield Problem(
            path,
            '"domain" needs a domain to rewrite to, and every domain of this workspace is a wildcard; '
            "add one to domains or choose another sender_rewrite",
        )
    gmail_sender = workspace.gmail.default_sender if workspace.gmail else None
    if lb.sender_rewrite == "default_sender" and not (lb.default_sender or gmail_sender):
        yield Problem(
            path,
            '"default_sender" needs an address: set load_balancing.default_sender'
            + (" or gmail.default_sender" if workspace.gmail else ""),
        )


def _pool_problems(settings: Settings) -> Iterator[Problem]:
    pools = settings.load_balancing_pools
    if len(pools) > MAX_POOLS:
        yield Problem("load_balancing_pools", f"at most {MAX_POOLS} pools are supported (found {len(pools)})")
    workspace_ids = {w.id for w in settings.workspaces}
    seen: set[str] = set()
    pattern_owner: dict[str, str] = {}
    for i, pool in enumerate(pools):
        where = f"load_balancing_pools[{i}]"
        if pool.id in seen:
            yield Problem(f"{where}.id", f'duplicate pool id "{pool.id}"')
        seen.add(pool.id)
        for j, pattern in enumerate(pool.domain_patterns):
            owner = pattern_owner.setdefault(pattern, pool.id)
            if owner != pool.id:
                yield Problem(f"{where}.domain_patterns[{j}]", f'pattern "{pattern}" is already used by pool "{owner}"')
            elif pattern in pool.domain_patterns[:j]:
                yield Problem(f"{where}.domain_patterns[{j}]", f'pattern "{pattern}" is listed twice')
        yield from _shadowed_patterns(where, pool, settings.workspaces)
        members: set[str] = set()
        for j, member in enumerate(pool.workspaces):
            if member.workspace_id not in workspace_ids:
                yield Problem(f"{where}.workspaces[{j}].workspace_id", f'unknown workspace "{member.workspace_id}"')
            if member.workspace_id in members:
                yield Problem(
                    f"{where}.workspaces[{j}].workspace_id", f'workspace "{member.workspace_id}" is listed twice'
                )
            members.add(member.workspace_id)
        members |= {w.id for w in settings.workspaces if pool.id in w.load_balancing.pools}
        if len(members) > MAX_POOL_MEMBERS:
            yield Problem(
                f"{where}.workspaces",
                f"at most {MAX_POOL_MEMBERS} workspaces per pool are supported (found {len(members)}, counting the "
                "workspaces that name this pool in load_balancing.pools)",
            )


def _shadowed_patterns(where: str, pool: Pool, workspaces: list[Workspace]) -> Iterator[Problem]:
    """Patterns that can never route anything: every domain they match is served directly (direct mapping
    always wins). A disabled workspace is skipped: it routes nothing, so the pool does get its domains."""
    for j, pattern in enumerate(pool.domain_patterns):
        for workspace in workspaces:
            if not workspace.provider.enabled:
                continue
            covering = next((d for d in workspace.all_domains if _covers(d, pattern)), None)
            if covering is not None:
                through = "" if covering == pattern else f' through "{covering}"'
                yield Problem(
                    f"{where}.domain_patterns[{j}]",
                    f'pattern "{pattern}" never applies: workspace "{workspace.id}" serves it directly{through}, '
                    "and direct mapping always wins over pools",
                )
                break


def _covers(direct: str, pattern: str) -> bool:
    """Whether the direct domain or wildcard `direct` matches every domain that `pattern` matches."""
    if direct == pattern:
        return True
    if not direct.startswith("*."):
        return False
    # "*.example.org" covers "a.example.org", "*.a.example.org" (both subdomains only), not "example.org".
    return pattern.removeprefix("*.").endswith(direct[1:])


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
