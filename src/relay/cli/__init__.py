"""The `relay` command."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings, load_settings
from ..errors import ConfigError, ProviderError, RelayError
from ..logs import configure_logging

app = typer.Typer(
    help="Relay: an SMTP relay that delivers through several provider workspaces.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold settings, passwords and API keys
)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", envvar="RELAY_CONFIG", help="JSON config file", exists=False)
]


def _load(path: Path | None) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        where = f" in {path}" if path else ""
        typer.echo(f"invalid configuration{where}:", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem}", err=True)
        raise typer.Exit(1) from None


def _run(coroutine_factory: object) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coroutine_factory)  # type: ignore[arg-type]


@app.command()
def serve(config: ConfigOption = None) -> None:
    """Run SMTP, the HTTP API and the delivery workers in one process."""
    settings = _load(config)
    configure_logging(settings.log_level, settings.log_format)
    from ..runtime import Relay

    async def main() -> None:
        relay: Relay | None = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # a SIGHUP during start-up must not kill the process
        reloads: set[asyncio.Task[None]] = set()
        try:
            relay = Relay(settings, webhooks_process=True)
            await relay.start()
            loop.add_signal_handler(signal.SIGHUP, lambda: _spawn(reloads, _reload(relay, config)))
        except Exception as exc:
            typer.echo(f"relay: cannot start: {_start_failure(exc)}", err=True)
            # Clean up quietly: "relay.stopped" after a start that never finished would only bury the reason.
            configure_logging("error", settings.log_format)
            if relay is not None:
                with contextlib.suppress(Exception):
                    await relay.stop()
            raise typer.Exit(1) from None
        await stop.wait()
        await relay.stop()

    try:
        _run(main())
    except ProviderError as exc:
        typer.echo(f"relay: {exc}", err=True)
        raise typer.Exit(1) from None


def _spawn(tasks: set[asyncio.Task[None]], coroutine: Any) -> None:
    task = asyncio.create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _reload(relay: Any, path: Path | None) -> None:
    """SIGHUP: read the config file again and apply it; an invalid file changes nothing."""
    import structlog

    log = structlog.get_logger("relay.cli")
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        log.error("config.reload_invalid", problems=[str(p) for p in exc.problems])
        return
    try:
        await relay.reload(settings)
    except Exception as exc:
        log.error("config.reload_failed", error=f"{type(exc).__name__}: {exc}")


def _start_failure(exc: Exception) -> str:
    """One short line for a start-up failure; never a traceback, whose locals may hold secrets."""
    if isinstance(exc, OSError | RelayError):  # already worded for operators: "[Errno 98] address in use"
        text = str(exc)
    else:
        # SQLAlchemy wraps the driver's error (`.orig`), and for asyncpg that is an adapter around the real
        # one: `InvalidCatalogNameError: database "x" does not exist` says more than `DBAPIError: (…) …`.
        cause: BaseException = exc
        for _ in range(3):
            orig = getattr(cause, "orig", None)
            if not isinstance(orig, BaseException):
                break
            cause = orig
        message = str(cause).strip()
        text = f"{type(cause).__name__}: {message}" if message else type(cause).__name__
    return text.splitlines()[0] if text else type(exc).__name__


limits_app = typer.Typer(help="Rate-limit commands.", no_args_is_help=True)
app.add_typer(limits_app, name="limits")


@limits_app.command("show")
def limits_show(
    workspace: Annotated[str | None, typer.Option(help="only this workspace")] = None,
    sender: Annotated[str | None, typer.Option(help="this sender's limits (default: senders of the last day)")] = None,
    config: ConfigOption = None,
) -> None:
    """Print each limit with what is used, what remains and when capacity returns."""
    settings = _load(config)
    configure_logging("error", settings.log_format)
    from rich.console import Console
    from rich.table import Table

    from ..runtime import Relay

    async def main() -> list[tuple[str, Any, Any]] | None:
        relay = Relay(settings, http=False)
        try:
            await relay.open_for_inspection()  # workspaces defined in the database count too
            if workspace is not None and relay.settings.workspace(workspace) is None:
                return None
            return list(await relay.capacity_report(workspace, sender))
        finally:
            await relay.db.dispose()
            await relay.limits.aclose()

    try:
        with asyncio.Runner() as runner:
            rows = runner.run(main())
    except Exception as exc:
        typer.echo(f"relay: cannot read limits: {_start_failure(exc)}", err=True)
        raise typer.Exit(1) from None
    if rows is None:
        typer.echo(f'unknown workspace "{workspace}"', err=True)
        raise typer.Exit(1)
    table = Table("workspace", "limit", "kind", "max", "used", "remaining", "next capacity in", "full reset in")
    for workspace_id, limit, usage in rows:
        table.add_row(
            workspace_id,
            limit.key,
            limit.kind,
            str(usage.limit),
            str(usage.used),
            str(usage.remaining),
            _duration(usage.next_capacity_in),
            _duration(usage.full_reset_in),
        )
    Console(width=200).print(table)


pools_app = typer.Typer(help="Load-balancing pool commands.", no_args_is_help=True)
app.add_typer(pools_app, name="pools")


@pools_app.command("test")
def pools_test(
    pool: Annotated[str, typer.Argument(help="pool id")],
    sender: Annotated[str, typer.Option(help="sender address to decide for")],
    count: Annotated[int, typer.Option(min=0, max=1_000_000, help="also simulate N decisions")] = 0,
    config: ConfigOption = None,
) -> None:
    """Dry run: each member's weight, capacity, reset time, health, score or exclusion; nothing is sent."""
    settings = _load(config)
    configure_logging("error", settings.log_format)
    from rich.console import Console
    from rich.table import Table

    from ..runtime import Relay

    async def main() -> tuple[str, Any, Any, dict[str, int]]:
        relay = Relay(settings, http=False)
        try:
            source = await relay.open_for_inspection()
            decision = await relay.balancer.decide(sender, pool)
            picks: dict[str, int] = {}
            for _ in range(count):
                chosen = (await relay.balancer.decide(sender, pool)).workspace_id
                picks[chosen or "(none)"] = picks.get(chosen or "(none)", 0) + 1
            return source, relay.pools.get(pool), decision, picks
        finally:
            await relay.db.dispose()
            await relay.limits.aclose()

    try:
        with asyncio.Runner() as runner:
            source, view, decision, picks = runner.run(main())
    except Exception as exc:
        typer.echo(f"relay: cannot read the pool: {_start_failure(exc)}", err=True)
        raise typer.Exit(1) from None
    if view is None:
        in_file = any(p.id == pool for p in settings.load_balancing_pools)
        hint = " (it is in the config file but not yet in the database: a running relay applies it on SIGHUP)"
        typer.echo(f'unknown pool "{pool}"{hint if in_file else ""}', err=True)
        raise typer.Exit(1)
    console = Console(width=200)
    console.print(
        f"pool {view.id} ({view.strategy}{'' if view.enabled else ', disabled'}), sender {sender}; "
        f"pools read from the {source}"
    )
    columns = [
        "workspace",
        "weight",
        "health",
        "sends as",
        "remaining",
        "next capacity",
        "full reset",
        "score",
        "status",
    ]
    expected = _expected_shares(view.strategy, decision.members)
    if count:
        columns += ["picks", "share", "expected"]
    table = Table(*columns)
    for m in decision.members:
        row = [
            m.workspace_id,
            f"{m.weight:g}",
            m.health if m.enabled else "disabled",
            m.sender,
            f"{m.remaining}/{m.limit} ({m.remaining_fraction:.0%})",
            _duration(m.next_capacity_in),
            _duration(m.full_reset_in),
            "-" if m.score is None else f"{m.score:.4f}",
            f"excluded: {m.excluded}"
            if m.excluded
            else ("chosen" if m.workspace_id == decision.workspace_id else "eligible"),
        ]
        if count:
            n = picks.get(m.workspace_id, 0)
            share = expected.get(m.workspace_id)
            row += [str(n), f"{n / count:.1%}", "-" if share is None else f"{share:.1%}"]
        table.add_row(*row)
    console.print(table)
    for workspace_id, why in view.skipped:
        console.print(f"not a member here: {workspace_id} ({why})")
    if decision.workspace_id is None:
        console.print("no member can take this sender's mail now: pool_exhausted (fallback or wait)")
    elif decision.spilled:
        console.print("every member is under its min_capacity_threshold: the threshold is ignored")
    if count and picks.get("(none)"):
        console.print(f"{picks['(none)']} of {count} decisions found no member")


def _expected_shares(strategy: str, members: Any) -> dict[str, float]:
    """The share each eligible member should get: by score for capacity_weighted, by weight for round_robin and
    random_weighted; least_used follows load, not a fixed share."""
    if strategy == "least_used":
        return {}
    eligible = [m for m in members if m.excluded is None and m.score is not None]
    if strategy == "capacity_weighted":
        values = {m.workspace_id: m.score for m in eligible}
    else:
        values = {m.workspace_id: m.weight for m in eligible}
    total = sum(values.values())
    return {k: v / total for k, v in values.items()} if total > 0 else {}


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply database migrations up to the latest version."""
    settings = _load(config)
    from ..store import Database

    async def main() -> None:
        db = Database(settings.database_url)
        try:
            await db.upgrade()
        finally:
            await db.dispose()

    _run(main())
    typer.echo(f"database upgraded ({Database(settings.database_url).dialect})")


@app.command()
def send(
    mail_from: Annotated[str, typer.Option("--from", help="sender address")],
    to: Annotated[list[str], typer.Option("--to", help="recipient (repeat for several)")],
    subject: Annotated[str, typer.Option(help="subject line")] = "Relay test message",
    body: Annotated[str, typer.Option(help="text body")] = "This is a test message sent by `relay send`.\n",
    server: Annotated[str | None, typer.Option(help="host:port (default: the config's smtp listener)")] = None,
    username: Annotated[str | None, typer.Option(help="SMTP AUTH user")] = None,
    password: Annotated[str | None, typer.Option(envvar="RELAY_SEND_PASSWORD", help="SMTP AUTH password")] = None,
    config: ConfigOption = None,
) -> None:
    """Send a test message through a running Relay over SMTP."""
    settings = _load(config)
    host, port = settings.smtp.host, settings.smtp.port
    if server:
        host, _, port_text = server.rpartition(":")
        port = int(port_text)
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = mail_from, ", ".join(to), subject
    message["Message-ID"] = make_msgid(domain=mail_from.rpartition("@")[2] or None)
    message.set_content(body)
    try:
        with smtplib.SMTP(host, port, timeout=30) as client:
            client.ehlo()
            if username and password:
                client.login(username, password)
            client.send_message(message, from_addr=mail_from, to_addrs=to)
    except smtplib.SMTPResponseException as exc:
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        typer.echo(f"refused: {exc.smtp_code} {reply}", err=True)
        raise typer.Exit(1) from None
    except (smtplib.SMTPException, OSError) as exc:
        typer.echo(f"cannot send through {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"sent {message['Message-ID']} to {', '.join(to)} through {host}:{port}")


from . import config_commands  # noqa: E402, F401 (registers `relay config …` on config_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
