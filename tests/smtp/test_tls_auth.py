"""SMTP ingress EHLO, STARTTLS and AUTH: what is advertised when, and who may send.

Certificates come from a throwaway trustme CA made in the test; clients are stdlib smtplib in a thread.
All clients here connect from 127.0.0.1 while `allowed_networks` is 10.0.0.0/8, so only AUTH lets them send.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from relay.errors import ConfigError
from relay.runtime import Relay
from relay.store import Messages
from tests.support.relay import config, sandbox_workspace, start_relay

USER, PASSWORD = "app", "s3cret-pw!"
MESSAGE = b"From: app@box.test\r\nTo: you@dest.test\r\nSubject: authenticated\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certificate(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """smtp.tls_cert / smtp.tls_key files for 127.0.0.1, written for this test only."""
    issued = ca.issue_cert("127.0.0.1", "localhost", "relay.test")
    cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return {"tls_cert": str(cert), "tls_key": str(key)}


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def relay_with(sqlite_url: str, outbox: Path, tmp_path: Path) -> Callable[..., Any]:
    """`async with relay_with(**smtp_settings) as relay:` — Relay with one sandbox workspace for box.test."""
    import contextlib

    @contextlib.asynccontextmanager
    async def running(**smtp: Any) -> AsyncIterator[Relay]:
        settings = {"users": [{"username": USER, "password": PASSWORD}], "allowed_networks": ["10.0.0.0/8"], **smtp}
        relay = await start_relay(
            config(sqlite_url, [sandbox_workspace("box", ["box.test"], outbox)], smtp=settings), tmp_path
        )
        try:
            yield relay
        finally:
            await relay.stop()

    return running


async def in_session(relay: Relay, steps: Callable[[smtplib.SMTP], Any]) -> Any:
    def run() -> Any:
        with smtplib.SMTP(*relay.smtp_address, local_hostname="client.test", timeout=10) as client:
            client.ehlo()
            return steps(client)

    return await asyncio.to_thread(run)


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def send(client: smtplib.SMTP) -> tuple[int, bytes]:
    code, reply = client.mail("app@box.test")
    assert code == 250, (code, reply)
    code, reply = client.rcpt("you@dest.test")
    assert code == 250, (code, reply)
    return client.data(MESSAGE)


async def test_ehlo_advertises_extensions_and_auth_only_after_starttls(
    relay_with: Any, certificate: dict[str, str], client_context: ssl.SSLContext
) -> None:
    def steps(client: smtplib.SMTP) -> tuple[dict[str, str], dict[str, str]]:
        before = dict(client.esmtp_features)
        client.starttls(context=client_context)
        client.ehlo()
        return before, dict(client.esmtp_features)

    async with relay_with(max_message_size=1_048_576, **certificate) as relay:
        before, after = await in_session(relay, steps)

    assert before["size"] == "1048576"
    assert {"8bitmime", "pipelining", "starttls"} <= before.keys()
    assert "auth" not in before
    assert after["size"] == "1048576"
    assert {"8bitmime", "pipelining"} <= after.keys()
    assert "starttls" not in after  # already encrypted
    assert {"PLAIN", "LOGIN"} <= set(after["auth"].split())


async def test_no_starttls_without_a_certificate(relay_with: Any) -> None:
    def steps(client: smtplib.SMTP) -> tuple[dict[str, str], tuple[int, bytes]]:
        return dict(client.esmtp_features), client.docmd("STARTTLS")

    # No users: with users, auth_require_tls (the default) and no certificate the config is refused, see below.
    async with relay_with(users=[]) as relay:
        features, (code, _) = await in_session(relay, steps)

    assert {"size", "8bitmime", "pipelining"} <= features.keys()
    assert "starttls" not in features
    assert "auth" not in features  # auth_require_tls defaults to true and there is no TLS to be had
    assert code != 220


async def test_users_who_could_never_log_in_are_a_config_problem(relay_with: Any) -> None:
    # auth_require_tls defaults to true, and without a certificate AUTH would never be offered.
    with pytest.raises(ConfigError) as caught:
        async with relay_with():
            pass
    assert [p.path for p in caught.value.problems] == ["smtp.users"]
    assert "smtp.tls_cert" in caught.value.problems[0].message
    assert "auth_require_tls" in caught.value.problems[0].message


async def test_auth_before_starttls_is_refused(relay_with: Any, certificate: dict[str, str]) -> None:
    def steps(client: smtplib.SMTP) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        return client.docmd("AUTH", f"PLAIN {plain(USER, PASSWORD)}"), client.mail("app@box.test")

    async with relay_with(**certificate) as relay:
        (auth_code, auth_reply), (mail_code, _) = await in_session(relay, steps)

    assert auth_code == 538, auth_reply  # RFC 4954: encryption required for the mechanism
    assert mail_code == 530


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_after_starttls_valid_credentials_may_send_from_outside_allowed_networks(
    relay_with: Any, certificate: dict[str, str], client_context: ssl.SSLContext, mechanism: str
) -> None:
    def steps(client: smtplib.SMTP) -> tuple[tuple[int, bytes], tuple[int, bytes], tuple[int, bytes]]:
        client.starttls(context=client_context)
        client.ehlo()
        refused = client.mail("app@box.test")
        client.rset()
        client.user, client.password = USER, PASSWORD
        auth = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"), initial_response_ok=False)
        return refused, auth, send(client)

    async with relay_with(**certificate) as relay:
        (refused_code, _), (auth_code, _), (code, reply) = await in_session(relay, steps)
        assert refused_code == 530  # before AUTH, 127.0.0.1 is outside 10.0.0.0/8
        assert auth_code == 235
        assert code == 250, reply
        queue_id = reply.decode().rsplit(" ", 1)[1]
        stored = await Messages(relay.db).get(queue_id)
        assert stored is not None
        assert stored.mail_from == "app@box.test"


@pytest.mark.parametrize(("user", "password"), [(USER, "wrong"), ("nobody", PASSWORD), (USER, "")])
async def test_wrong_credentials_get_535_and_no_mail(
    relay_with: Any, certificate: dict[str, str], client_context: ssl.SSLContext, user: str, password: str
) -> None:
    def steps(client: smtplib.SMTP) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        client.starttls(context=client_context)
        client.ehlo()
        return client.docmd("AUTH", f"PLAIN {plain(user, password)}"), client.mail("app@box.test")

    async with relay_with(**certificate) as relay:
        (auth_code, auth_reply), (mail_code, _) = await in_session(relay, steps)

    assert auth_code == 535, auth_reply
    assert auth_reply.startswith(b"5.7.8")
    assert mail_code == 530


async def test_auth_without_tls_when_auth_require_tls_is_false(relay_with: Any) -> None:
    def steps(client: smtplib.SMTP) -> tuple[dict[str, str], tuple[int, bytes], tuple[int, bytes]]:
        features = dict(client.esmtp_features)
        return features, client.login(USER, PASSWORD), send(client)

    async with relay_with(auth_require_tls=False) as relay:
        features, (auth_code, _), (code, reply) = await in_session(relay, steps)

    assert {"PLAIN", "LOGIN"} <= set(features["auth"].split())
    assert "starttls" not in features
    assert auth_code == 235
    assert code == 250, reply
