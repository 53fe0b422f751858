"""An admin key cannot read a workspace's secrets by moving them: `********` keeps a stored secret only while it
goes to the same place, and `env:NAME` through the API names only `RELAY_SECRET_*` variables — except a
reference the config file already gave, kept while it goes to the same place."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.runtime import Relay
from tests.support.api import api_client, viewer_and_admin
from tests.support.relay import config, sandbox_workspace, start_relay

VIEWER_KEY = secrets.token_hex(12)
ADMIN_KEY = secrets.token_hex(12)
VIEWER = {"Authorization": f"Bearer {VIEWER_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

NO_CHECKS = {"checks_enabled": False}  # no health check sends a key anywhere during these tests
LEGIT_URL = "http://127.0.0.1:9/legit"  # the discard port: nothing is sent there either
ATTACKER_URL = "https://attacker.example"


def file_key() -> str:
    return secrets.token_hex(16)


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Relay]:
    monkeypatch.setenv("RELAY_TEST_FILE_KEY", file_key())  # set before the relay reads its config file
    filed = {
        "id": "filed",
        "domains": ["filed.example"],
        "health": NO_CHECKS,
        "mailgun": {"api_key": "env:RELAY_TEST_FILE_KEY", "base_url": LEGIT_URL},
    }
    data = config(
        sqlite_url,
        [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a"), filed],
        http=viewer_and_admin(VIEWER_KEY, ADMIN_KEY),
    )
    started = await start_relay(data, tmp_path)
    yield started
    await started.stop()


@pytest.fixture
async def api(relay: Relay) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(relay) as client:
        yield client


async def stored(relay: Relay, workspace_id: str) -> dict[str, Any]:
    definition = await relay.workspace_tables.get(workspace_id)
    assert definition is not None
    return dict(definition.document)


async def shown(api: httpx.AsyncClient, workspace_id: str) -> dict[str, Any]:
    answer = await api.get(f"/api/v1/workspaces/{workspace_id}", headers=VIEWER)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["definition"])


def refused_on(answer: httpx.Response, field: str) -> str:
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["field"]) == ("invalid", field), error
    return str(error["message"])


async def test_the_mask_refuses_a_moved_mailgun_key_and_keeps_it_for_harmless_edits(
    relay: Relay, api: httpx.AsyncClient
) -> None:
    key = secrets.token_hex(16)
    body = {
        "id": "mg",
        "domains": ["mg.example"],
        "health": NO_CHECKS,
        "mailgun": {"api_key": key, "base_url": LEGIT_URL},
    }
    assert (await api.post("/api/v1/workspaces", json=body, headers=ADMIN)).status_code == 201
    current = await shown(api, "mg")
    assert current["mailgun"]["api_key"] == "********"

    for change in ({"base_url": ATTACKER_URL}, {"region": "eu"}, {"domain": "other.example"}):
        moved = {**current, "mailgun": {**current["mailgun"], **change}}
        message = refused_on(await api.put("/api/v1/workspaces/mg", json=moved, headers=ADMIN), "mailgun.api_key")
        assert message == (
            f'"********" keeps the stored secret only while it is sent to the same place; {next(iter(change))} '
            "changed: give the secret again"
        )
        assert (await stored(relay, "mg"))["mailgun"] == {"api_key": key, "base_url": LEGIT_URL}
    # Dropping base_url falls back to the region's URL: that moves the key too.
    dropped = {**current, "mailgun": {"api_key": "********"}}
    assert "base_url changed" in refused_on(
        await api.put("/api/v1/workspaces/mg", json=dropped, headers=ADMIN), "mailgun.api_key"
    )

    # Knowing the key, the writer may send it anywhere.
    new_key = secrets.token_hex(16)
    moved = {**current, "mailgun": {**current["mailgun"], "api_key": new_key, "base_url": ATTACKER_URL}}
    assert (await api.put("/api/v1/workspaces/mg", json=moved, headers=ADMIN)).status_code == 200
    assert (await stored(relay, "mg"))["mailgun"]["api_key"] == new_key

    # Harmless edits keep the masked key.
    current = await shown(api, "mg")
    edited = {
        **current,
        "display_name": "Mailgun",
        "mailgun": {
            **current["mailgun"],
            "tracking": {"opens": True},
            "header_rewrite": {"enabled": True, "rules": [{"header_name": "X-Team", "new_value": "ops"}]},
        },
    }
    answer = await api.put("/api/v1/workspaces/mg", json=edited, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    after = await stored(relay, "mg")
    assert after["display_name"] == "Mailgun" and after["mailgun"]["api_key"] == new_key
    assert after["mailgun"]["tracking"] == {"opens": True}


async def test_the_mask_refuses_a_moved_smtp_password(relay: Relay, api: httpx.AsyncClient) -> None:
    password = secrets.token_hex(16)
    body = {
        "id": "up",
        "domains": ["up.example"],
        "health": NO_CHECKS,
        "smtp": {"host": "127.0.0.1", "port": 9, "username": "relay", "password": password},
    }
    assert (await api.post("/api/v1/workspaces", json=body, headers=ADMIN)).status_code == 201
    current = await shown(api, "up")
    assert current["smtp"]["password"] == "********"
    for change in ({"host": "attacker.example"}, {"port": 2525}, {"tls": "none"}, {"username": "other"}):
        moved = {**current, "smtp": {**current["smtp"], **change}}
        message = refused_on(await api.put("/api/v1/workspaces/up", json=moved, headers=ADMIN), "smtp.password")
        assert f"{next(iter(change))} changed: give the secret again" in message
    assert (await stored(relay, "up"))["smtp"]["password"] == password
    harmless = {**current, "smtp": {**current["smtp"], "timeout_seconds": 5, "helo_name": "relay.example"}}
    assert (await api.put("/api/v1/workspaces/up", json=harmless, headers=ADMIN)).status_code == 200
    assert (await stored(relay, "up"))["smtp"]["password"] == password


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"mailgun": {"api_key": "env:RELAY_DATABASE_URL", "base_url": ATTACKER_URL}}, "mailgun.api_key"),
        ({"mandrill": {"api_key": "env:PATH", "base_url": ATTACKER_URL}}, "mandrill.api_key"),
        ({"gmail": {"service_account_env": "HOME", "base_url": ATTACKER_URL}}, "gmail.service_account_env"),
        ({"gmail": {"service_account_json": "env:HOME"}}, "gmail.service_account_json"),
    ],
)
async def test_env_references_through_the_api_name_only_relay_secret_variables(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, section: dict[str, Any], field: str
) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"postgresql://relay:{secrets.token_hex(8)}@db/relay")
    monkeypatch.setenv("HOME", "/root")
    body = {"id": "leak", "domains": ["leak.example"], "health": NO_CHECKS, **section}
    message = refused_on(await api.post("/api/v1/workspaces", json=body, headers=ADMIN), field)
    assert "through the API, env: may only name variables starting with RELAY_SECRET_" in message
    assert "other variables are readable only from the config file" in message
    assert (await api.get("/api/v1/workspaces/leak", headers=VIEWER)).status_code == 404


async def test_a_relay_secret_variable_is_accepted(
    relay: Relay, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = secrets.token_hex(16)
    monkeypatch.setenv("RELAY_SECRET_TEST_X", value)
    body = {
        "id": "ok",
        "domains": ["ok.example"],
        "health": NO_CHECKS,
        "mailgun": {"api_key": "env:RELAY_SECRET_TEST_X", "base_url": LEGIT_URL},
    }
    created = await api.post("/api/v1/workspaces", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert value not in created.text
    assert (await stored(relay, "ok"))["mailgun"]["api_key"] == "env:RELAY_SECRET_TEST_X"
    # Such a reference may go anywhere: the operator made the variable readable through the API.
    moved = {**(await shown(api, "ok")), "mailgun": {"api_key": "env:RELAY_SECRET_TEST_X", "base_url": ATTACKER_URL}}
    assert (await api.put("/api/v1/workspaces/ok", json=moved, headers=ADMIN)).status_code == 200


async def test_a_file_seeded_reference_can_be_written_back_while_it_goes_to_the_same_place(
    relay: Relay, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", f"postgresql://relay:{secrets.token_hex(8)}@db/relay")
    current = await shown(api, "filed")
    assert current["mailgun"]["api_key"] == "env:RELAY_TEST_FILE_KEY"  # a name, shown as is
    edited = {**current, "display_name": "From the file"}
    answer = await api.put("/api/v1/workspaces/filed", json=edited, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    after = await stored(relay, "filed")
    assert after["display_name"] == "From the file"
    assert after["mailgun"]["api_key"] == "env:RELAY_TEST_FILE_KEY"
    # The same reference sent elsewhere would read the file's variable for the writer: refused.
    moved = {**edited, "mailgun": {**current["mailgun"], "base_url": ATTACKER_URL}}
    message = refused_on(await api.put("/api/v1/workspaces/filed", json=moved, headers=ADMIN), "mailgun.api_key")
    assert "base_url changed" in message and "RELAY_SECRET_" in message
    # So would another of the file's variables, even to the same place.
    other = {**edited, "mailgun": {**current["mailgun"], "api_key": "env:RELAY_DATABASE_URL"}}
    refused_on(await api.put("/api/v1/workspaces/filed", json=other, headers=ADMIN), "mailgun.api_key")
    assert (await stored(relay, "filed"))["mailgun"] == {"api_key": "env:RELAY_TEST_FILE_KEY", "base_url": LEGIT_URL}
    everything = json.dumps([(await api.get(p, headers=VIEWER)).text for p in ("/api/v1/workspaces", "/api/v1/audit")])
    assert "attacker.example" not in everything
