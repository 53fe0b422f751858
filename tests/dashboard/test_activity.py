"""The events and audit page over HTTP (issue 9): the latest events filtered by type, the audit log filtered by
target with each entry's changed fields, and workspace secrets masked everywhere on the page; plus the pure
helpers that shape a payload and a before/after diff."""

from __future__ import annotations

import re
from collections.abc import Mapping
from html import unescape
from typing import Any

from relay.dashboard.activity import Change, changes, compact, parse_target, short
from relay.runtime import Relay
from relay.store import AuditLog
from tests.support.api import api_client
from tests.support.dashboard import ADMIN_KEY, VIEWER_KEY, dashboard_client
from tests.support.pools import submit_many, wait_for_statuses

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PASSWORD = "upstream-password-4f1c9e"
NEW_PASSWORD = "rotated-password-7d20b3"


def event_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-event="([^"]+)"', html)


def audit_rows(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr data-audit="(\d+)"', html)]


def smtp_workspace(port: int, password: str) -> dict[str, object]:
    smtp = {"host": "127.0.0.1", "port": port, "tls": "none", "username": "relay", "password": password}
    return {"id": "ws-smtp", "domains": ["smtp.example"], "smtp": smtp}


async def test_events_show_the_latest_and_filter_by_type(relay: Relay) -> None:
    ids = await submit_many(relay, "brian@invite.com", 3, tag="events")
    await wait_for_statuses(relay, {"sent": 3})
    async with dashboard_client(relay, VIEWER_KEY) as client:
        page = (await client.get("/dashboard/activity")).text
        assert 'id="events-live" data-live' in page
        assert {"message.queued", "message.sent", "load_balancing.workspace_selected", "config.changed"} <= set(
            event_rows(page)
        )
        sent = (await client.get("/dashboard/activity", params={"type": "message.sent"})).text
        assert event_rows(sent) == ["message.sent"] * 3
        assert '<option value="message.sent" selected>' in sent
        for message_id in ids.values():
            assert f'<a href="/dashboard/messages/{message_id}">' in sent
        assert "<b>pool_id</b> invite" in sent and "<b>sender_email</b> brian@invite.com" in sent
        chosen = (await client.get("/dashboard/activity", params={"type": "load_balancing.workspace_selected"})).text
        assert event_rows(chosen) == ["load_balancing.workspace_selected"] * 3
        anything = (await client.get("/dashboard/activity", params={"type": "no.such.type"})).text
        assert set(event_rows(anything)) == set(event_rows(page))  # an unknown type is no filter


async def test_audit_masks_workspace_secrets_and_shows_what_changed(relay: Relay) -> None:
    async with api_client(relay) as client:
        created = await client.post("/api/v1/workspaces", json=smtp_workspace(2525, PASSWORD), headers=ADMIN)
        assert created.status_code == 201, created.text
        changed = await client.put("/api/v1/workspaces/ws-smtp", json=smtp_workspace(2526, NEW_PASSWORD), headers=ADMIN)
        assert changed.status_code == 200, changed.text
    stored = await AuditLog(relay.db).entries(target_type="workspace", target_id="ws-smtp")
    assert [e.action for e in stored] == ["update", "create"]
    assert PASSWORD in str(stored[0].before) and NEW_PASSWORD in str(stored[0].after)  # the database keeps them

    async with dashboard_client(relay, VIEWER_KEY) as client:
        everything = (await client.get("/dashboard/activity")).text
        mine = (await client.get("/dashboard/activity", params={"target": "workspace:ws-smtp"})).text
    for page in (everything, mine):
        assert PASSWORD not in page and NEW_PASSWORD not in page
        assert "********" in page
    assert audit_rows(mine) == [e.id for e in stored]
    update = unescape(mine.split(f'<tr data-audit="{stored[0].id}">')[1].split("</tr>")[0])
    assert "<td>ada</td>" in update and "<td>update</td>" in update
    assert "<code>smtp.port</code> <del>2525</del> → <ins>2526</ins>" in update
    assert "<code>smtp.password</code> <del>********</del> → <ins>********</ins>" in update  # rotated, masked
    create = unescape(mine.split(f'<tr data-audit="{stored[1].id}">')[1].split("</tr>")[0])
    assert "<code>smtp.password</code> <del>—</del> → <ins>********</ins>" in create


async def test_audit_filters_by_target(relay: Relay) -> None:
    async with api_client(relay) as client:
        changed = await client.put("/api/v1/pools/invite/workspaces/ws-b", json={"weight": 2}, headers=ADMIN)
        assert changed.status_code == 200, changed.text
    [entry] = await AuditLog(relay.db).entries(target_type="pool", target_id="invite")
    async with dashboard_client(relay, VIEWER_KEY) as client:
        page = (await client.get("/dashboard/activity", params={"target": "pool:invite"})).text
        assert audit_rows(page) == [entry.id]
        assert "<code>workspaces[ws-b].weight</code> <del>1.0</del> → <ins>2.0</ins>" in page
        assert "for pool:invite" in page
        only_a = (await client.get("/dashboard/activity", params={"target": "workspace:ws-a"})).text
        [created_a] = await AuditLog(relay.db).entries(target_type="workspace", target_id="ws-a")
        assert audit_rows(only_a) == [created_a.id]
        pools = (await client.get("/dashboard/activity", params={"target": "pool"})).text
        assert audit_rows(pools) == [entry.id]
        nothing = (await client.get("/dashboard/activity", params={"target": "pool:nope"})).text
        assert audit_rows(nothing) == [] and "No changes recorded for pool:nope" in nothing


def test_changes_lists_the_differing_fields_with_members_by_name() -> None:
    before = {
        "id": "invite",
        "enabled": True,
        "workspaces": [{"workspace_id": "a", "weight": 1.0}, {"workspace_id": "b", "weight": 1.0}],
    }
    after = {
        "id": "invite",
        "enabled": False,
        "workspaces": [{"workspace_id": "b", "weight": 5.0}, {"workspace_id": "c", "weight": 1.0}],
    }
    found, more = changes(before, after)
    assert more == 0
    assert found == [
        Change("enabled", "true", "false"),
        Change("workspaces[a].weight", "1.0", "—"),
        Change("workspaces[b].weight", "1.0", "5.0"),
        Change("workspaces[c].weight", "—", "1.0"),
    ]
    assert changes(after, after) == ([], 0)
    created, _ = changes(None, {"id": "x", "domains": ["a.example", "b.example"], "smtp": {"port": 25}})
    assert created == [
        Change("id", "—", "x"),
        Change("domains", "—", "a.example, b.example"),
        Change("smtp.port", "—", "25"),
    ]
    deleted, _ = changes({"id": "x"}, None)
    assert deleted == [Change("id", "x", "—")]


def test_changes_compares_stored_documents_but_shows_them_masked() -> None:
    def mask(document: Mapping[str, Any]) -> dict[str, Any]:
        return {k: ("***" if k in ("password", "nested") else v) for k, v in document.items()}

    before = {"password": "old-secret", "port": 25, "nested": {"key": "k1"}}
    after = {"password": "new-secret", "port": 25, "nested": {"key": "k2"}}
    found, _ = changes(before, after, mask=mask)
    assert found == [Change("password", "***", "***"), Change("nested.key", "********", "********")]
    assert "secret" not in repr(found) and "k1" not in repr(found)
    assert changes(before, before, mask=mask) == ([], 0)


def test_changes_shows_at_most_twelve_fields_and_counts_the_rest() -> None:
    found, more = changes({}, {f"f{n}": n for n in range(20)})
    assert len(found) == 12 and more == 8


def test_compact_keeps_an_event_short() -> None:
    payload = {
        "event": "message.sent",
        "data": {
            "message_id": "01ABC",
            "sender_email": "b@invite.com",
            "recipients": ["a@x.org", "b@x.org"],
            "metadata": {},
            "note": None,
            "subject": "s" * 200,
            **{f"extra{n}": n for n in range(10)},
        },
    }
    pairs, more = compact(payload)
    assert pairs[:3] == [
        ("sender_email", "b@invite.com"),
        ("recipients", "a@x.org, b@x.org"),
        ("subject", "s" * 79 + "…"),
    ]
    assert len(pairs) == 8 and more == 13 - 8
    assert compact({"data": "odd"}) == ([("data", "odd")], 0)
    assert short({"a": [1, {"b": None}]}) == '{"a":[1,{"b":null}]}'


def test_parse_target() -> None:
    assert parse_target("pool:invite") == ("pool", "invite")
    assert parse_target("workspace:ws:a") == ("workspace", "ws:a")
    assert parse_target("webhook") == ("webhook", None)
    assert parse_target("") == (None, None)
