"""`relay config check | export | apply | rollback`: the configuration file, and the configuration the database
holds (the source of truth of running relays), for operators who keep it in git."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..errors import ConfigError, RelayError
from ..logs import configure_logging
from . import ConfigOption, _load, config_app

T = TypeVar("T")


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="JSON config file")]) -> None:
    """Validate a config file; print one line per problem with its JSON path."""
    settings = _load(file)
    typer.echo(f"{file}: ok ({len(settings.workspaces)} workspaces, {len(settings.load_balancing_pools)} pools)")


@config_app.command("export")
def config_export(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
    config: ConfigOption = None,
) -> None:
    """Print the workspaces and pools the database holds, as a config file fragment. Literal secrets are masked
    (********); `relay config apply` keeps the stored value for a masked secret."""
    from ..pools.config_plan import export

    document = _with_store(config, export)
    text = json.dumps(document, indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(
            f"wrote {output}: {len(document['workspaces'])} workspaces, {len(document['load_balancing_pools'])} pools",
            err=True,
        )


@config_app.command("apply")
def config_apply(
    file: Annotated[Path, typer.Argument(help="config file whose workspaces and load_balancing_pools to apply")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the changes, change nothing")] = False,
    config: ConfigOption = None,
) -> None:
    """Make the database hold exactly FILE's workspaces and pools: print each change, then make it (audited as
    `cli:<user>`). Running relays follow within a second. Other settings in FILE are each process's own and are
    not applied."""
    from ..pools.config_plan import APPLIED_SECTIONS, apply_changes, plan

    data = _read_json(file)
    ignored = sorted(k for k in data if k not in APPLIED_SECTIONS)
    actor = f"cli:{getpass.getuser()}"

    async def run(store: Any) -> int:
        changes = await plan(store, data)
        for change in changes:
            for line in change.describe():
                typer.echo(line)
        if changes and not dry_run:
            await apply_changes(store, data, changes, actor=actor)
        return len(changes)

    try:
        count = _with_store(config, run)
    except ConfigError as exc:
        typer.echo(f"{file}: not applied, the configuration is invalid:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1) from None
    if ignored:
        typer.echo(f"not applied (each process's own settings): {', '.join(ignored)}", err=True)
    if not count:
        typer.echo("no changes: the database already holds this configuration")
    elif dry_run:
        typer.echo(f"{count} changes (dry run: nothing changed)")
    else:
        typer.echo(f"{count} changes applied; running relays follow within a second")


@config_app.command("rollback")
def config_rollback(
    entry: Annotated[int, typer.Argument(help="audit entry id (GET /api/v1/audit)")],
    config: ConfigOption = None,
) -> None:
    """Restore what an audit entry changed (a pool or a workspace) to how it was before, checked like any change
    and itself audited (as `cli:<user>`)."""
    actor = f"cli:{getpass.getuser()}"

    async def run(store: Any) -> str:
        found = await store.audit.get(entry)
        if found is None:
            raise RelayError(f"no audit entry {entry}")
        return str(await store.rollback(found, actor=actor))

    try:
        message = _with_store(config, run)
    except ConfigError as exc:
        typer.echo(f"relay: cannot roll back entry {entry}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{message}; running relays follow within a second")


def _with_store(config: Path | None, action: Callable[[Any], Awaitable[T]]) -> T:
    """Run `action(store)` on a `ConfigStore` over the database of `config`; errors become one line and exit 1."""
    settings = _load(config)
    configure_logging("error", settings.log_format)

    async def main() -> T:
        from ..clock import SystemClock
        from ..pools import ConfigStore
        from ..store import AuditLog, Database, PoolTables, WorkspaceTables

        db = Database(settings.database_url)
        clock = SystemClock()
        store = ConfigStore(
            db, PoolTables(db, clock), WorkspaceTables(db, clock), AuditLog(db), lambda: settings, resolve_env=False
        )
        try:
            return await action(store)
        finally:
            await db.dispose()

    try:
        with asyncio.Runner() as runner:
            return runner.run(main())
    except (ConfigError, typer.Exit):
        raise
    except (RelayError, ValueError) as exc:
        typer.echo(f"relay: {exc}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:
        from . import _start_failure

        typer.echo(f"relay: {_start_failure(exc)} (is the database set up? `relay db upgrade`)", err=True)
        raise typer.Exit(1) from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        typer.echo(f"relay: cannot read {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    except json.JSONDecodeError as exc:
        typer.echo(f"relay: {path}: line {exc.lineno} column {exc.colno}: {exc.msg}", err=True)
        raise typer.Exit(1) from None
    if not isinstance(data, dict):
        typer.echo(f"relay: {path}: the top level must be a JSON object", err=True)
        raise typer.Exit(1)
    return data
