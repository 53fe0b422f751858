"""Workspace definitions in the database, on SQLite, PostgreSQL and MariaDB: the config file seeds them (audited
as `config-file`, rewritten only when they differ), leaves API-managed ones alone and removes the ones it drops;
`env:NAME` references are stored, never their values; a definition that does not validate here is reported by
its id and field, once, and a running Relay keeps its configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from relay.clock import ManualClock
from relay.config import Settings
from relay.pools import WorkspaceDefinitions
from relay.routing import Route
from relay.store import AuditLog, Database, WorkspaceTables
from tests.support.relay import config, sandbox_workspace, start_relay


def file_settings(tmp_path: Path, *extra: dict[str, object]) -> Settings:
    workspaces = [sandbox_workspace("ws-a", ["a.example"], tmp_path / "a"), *extra]
    return Settings.model_validate({"workspaces": workspaces})


async def test_the_file_seeds_once_and_keeps_api_changes(db: Database, tmp_path: Path) -> None:
    tables = WorkspaceTables(db, ManualClock())
    definitions = WorkspaceDefinitions(tables)
    seeded = file_settings(tmp_path, sandbox_workspace("ws-b", ["b.example"], tmp_path / "b"))
    await definitions.seed(seeded)
    await definitions.seed(seeded)  # the same file again (a restart, a second process): nothing is written
    assert await tables.versions() == {"ws-a": 1, "ws-b": 1}
    entries = await AuditLog(db).entries(target_type="workspace")
    assert sorted((e.actor, e.action, e.target_id) for e in entries) == [
        ("config-file", "create", "ws-a"),
        ("config-file", "create", "ws-b"),
    ]
    # ws-a taken over by the API; then the file drops ws-b and changes ws-a.
    api_version = {**(await tables.get("ws-a")).document, "display_name": "API"}  # type: ignore[union-attr]
    await tables.save(api_version, actor="ops", action="update", before=None)
    changed = file_settings(tmp_path)
    changed = changed.model_copy(
        update={"workspaces": [changed.workspaces[0].model_copy(update={"display_name": "file"})]}
    )
    await definitions.seed(changed)
    assert [(d.id, d.managed_by, d.document.get("display_name")) for d in await tables.load()] == [
        ("ws-a", "api", "API")
    ]
    [dropped, *_] = await AuditLog(db).entries(target_type="workspace", target_id="ws-b")
    assert (dropped.actor, dropped.action, dropped.after) == ("config-file", "delete", None)
    assert [w.display_name for w in (await definitions.read(changed)).settings.workspaces] == ["API"]


async def test_an_env_reference_is_stored_not_its_value(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_TEST_MG_SECRET", "the-value-3c9d")
    tables = WorkspaceTables(db, ManualClock())
    mailgun = {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": "env:RELAY_TEST_MG_SECRET"}}
    await WorkspaceDefinitions(tables).seed(file_settings(tmp_path, mailgun))
    stored = await tables.get("mg")
    assert stored is not None and stored.document["mailgun"] == {"api_key": "env:RELAY_TEST_MG_SECRET"}
    entries = await AuditLog(db).entries(target_id="mg")
    assert "the-value-3c9d" not in repr(entries)


async def test_a_definition_this_process_cannot_use_is_reported_once(db: Database, tmp_path: Path) -> None:
    tables = WorkspaceTables(db, ManualClock())
    definitions = WorkspaceDefinitions(tables)
    seeded = file_settings(tmp_path)
    await definitions.seed(seeded)
    broken = {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": "env:RELAY_TEST_NOT_SET_ANYWHERE"}}
    await tables.save(broken, actor="ops", action="create", before=None)
    assert await definitions.changed()
    reading = await definitions.read(seeded)
    assert [str(p) for p in reading.problems] == [
        'database: workspaces["mg"].mailgun.api_key: environment variable RELAY_TEST_NOT_SET_ANYWHERE is not set'
    ]
    assert [w.id for w in reading.settings.workspaces] == ["ws-a"]  # the others run
    definitions.commit(reading)
    assert not await definitions.changed()  # seen once adopted: not reported again every second


async def test_a_bad_definition_never_stops_the_others(sqlite_url: str, tmp_path: Path) -> None:
    """A workspace changed by hand into a clash keeps running its last good version; one that never ran stays out;
    a process starting on that database starts, runs the rest and names the problems."""
    data = config(
        sqlite_url,
        [
            sandbox_workspace("ws-a", ["a.example"], tmp_path / "a"),
            sandbox_workspace("ws-b", ["b.example"], tmp_path / "b"),
        ],
    )
    relay = await start_relay(data, tmp_path)
    try:
        clash = sandbox_workspace("ws-x", ["a.example"], tmp_path / "x")  # a domain ws-a already serves
        await relay.workspace_tables.save(clash, actor="sql", action="create", before=None)
        moved = sandbox_workspace("ws-b", ["a.example"], tmp_path / "b")  # ws-b changed into the same clash
        await relay.workspace_tables.save(moved, actor="sql", action="update", before=None)
        with structlog.testing.capture_logs() as logs:
            await relay.live.refresh()
        assert [(w.id, w.domains) for w in relay.settings.workspaces] == [
            ("ws-a", ["a.example"]),
            ("ws-b", ["b.example"]),
        ]
        assert relay.router.route("x@b.example") == Route("direct", "ws-b")
        [event] = [e for e in logs if e["event"] == "config.database_invalid"]
        assert sorted(event["problems"]) == [
            'database: workspaces["ws-b"].domains[0]: domain "a.example" is already served by workspace "ws-a"',
            'database: workspaces["ws-x"].domains[0]: domain "a.example" is already served by workspace "ws-a"',
        ]
    finally:
        await relay.stop()
    with structlog.testing.capture_logs() as logs:
        restarted = await start_relay(data, tmp_path)  # ws-b is API-managed now: the file does not restore it
        await restarted.stop()
    assert [w.id for w in restarted.settings.workspaces] == ["ws-a"]  # ws-b never ran here: no good version
    [event] = [e for e in logs if e["event"] == "config.database_invalid"]
    assert len(event["problems"]) == 2


async def test_a_workspace_wrong_in_every_version_is_left_out_without_stopping(db: Database, tmp_path: Path) -> None:
    """A workspace whose new and running versions both break a rule steps down twice (new, running, out): the
    reading ends, the rest runs."""
    tables = WorkspaceTables(db, ManualClock())
    definitions = WorkspaceDefinitions(tables)
    seeded = file_settings(tmp_path)
    await definitions.seed(seeded)
    first = {**sandbox_workspace("ws-x", ["x.example"], tmp_path / "x"), "load_balancing": {"pools": ["gone"]}}
    second = {**first, "display_name": "edited"}
    await tables.save(first, actor="sql", action="create", before=None)
    definitions.commit(reading := await definitions.read(seeded))
    assert [w.id for w in reading.settings.workspaces] == ["ws-a"]
    await tables.save(second, actor="sql", action="update", before=first)
    reading = await definitions.read(seeded)
    assert [w.id for w in reading.settings.workspaces] == ["ws-a"]
    assert any('unknown pool "gone"' in str(p) for p in reading.problems)
