"""SMTP metrics move with a real smtplib session: the connection is counted (and open while it lasts), an
accepted message is counted, and each refusal is counted under its reply code — a suppressed recipient, a
recipient without a domain, one recipient too many, a sender domain the relay does not serve."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from datetime import UTC, datetime
from pathlib import Path

import trustme

from relay.store import Suppression
from tests.metrics.scrape import scrape, total, value
from tests.support.net import async_wait_for
from tests.support.relay import config, sandbox_workspace, start_relay

SENDER = "app@joinmednet.org"


async def test_a_session_its_message_and_its_refusals_are_counted(sqlite_url: str, tmp_path: Path) -> None:
    data = config(
        sqlite_url,
        [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "outbox")],
        smtp={"max_recipients": 2},
    )
    relay = await start_relay(data, tmp_path)
    try:
        at = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
        assert await relay.suppressions.add(Suppression("gone@example.org", "hard_bounce", None, "test", None, at))
        before = await scrape(relay)
        assert value(before, "relay_smtp_sessions_total") == 0
        assert value(before, "relay_smtp_sessions_active") == 0
        assert value(before, "relay_smtp_messages_accepted_total") == 0
        assert total(before, "relay_smtp_rejections_total") == 0

        host, port = relay.smtp_address
        client = await asyncio.to_thread(smtplib.SMTP, host, port, timeout=30)
        try:
            during = await scrape(relay)
            assert value(during, "relay_smtp_sessions_total") == 1
            assert value(during, "relay_smtp_sessions_active") == 1

            def converse() -> list[int]:
                client.ehlo()
                codes = [client.mail("someone@elsewhere.example")[0], client.rset()[0], client.mail(SENDER)[0]]
                for recipient in ("gone@example.org", "nodomain", "ann@example.org", "bob@example.org", "cy@x.org"):
                    codes.append(client.rcpt(recipient)[0])
                codes.append(client.data(b"Subject: counted\r\n\r\nhello\r\n")[0])
                return codes

            codes = await asyncio.to_thread(converse)
            assert codes == [550, 250, 250, 550, 550, 250, 250, 452, 250]
        finally:
            await asyncio.to_thread(client.quit)

        async def closed() -> bool:
            return value(await scrape(relay), "relay_smtp_sessions_active") == 0

        await async_wait_for(closed, what="the session to be counted as closed")
        after = await scrape(relay)
        assert value(after, "relay_smtp_sessions_total") == 1
        assert value(after, "relay_smtp_messages_accepted_total") == 1
        # MAIL from an unserved domain, RCPT to a suppressed address and to one without a domain: 550; the third
        # recipient with max_recipients 2: 452. Nothing else was refused.
        assert value(after, "relay_smtp_rejections_total", code="550") == 3
        assert value(after, "relay_smtp_rejections_total", code="452") == 1
        assert total(after, "relay_smtp_rejections_total") == 4
    finally:
        await relay.stop()


async def test_a_starttls_session_is_one_session(sqlite_url: str, tmp_path: Path) -> None:
    """aiosmtpd sets a connection up a second time after STARTTLS: it must still count once, and close once."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    data = config(
        sqlite_url,
        [sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "outbox")],
        smtp={"tls_cert": str(cert), "tls_key": str(key)},
    )
    relay = await start_relay(data, tmp_path)
    try:
        host, port = relay.smtp_address

        def session() -> None:
            with smtplib.SMTP(host, port, timeout=30) as client:
                client.starttls(context=trusted)
                client.ehlo()
                assert client.noop()[0] == 250

        await asyncio.to_thread(session)

        async def closed() -> bool:
            return value(await scrape(relay), "relay_smtp_sessions_active") == 0

        await async_wait_for(closed, what="the TLS session to be counted as closed")
        assert value(await scrape(relay), "relay_smtp_sessions_total") == 1
    finally:
        await relay.stop()
