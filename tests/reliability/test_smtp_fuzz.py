"""SMTP fuzzing: hypothesis-generated sessions against a real Relay SMTP server (in-process, real sockets).

1. Command sequences (every verb, bad parameters, over-long lines, NUL, bare CR/LF, 8-bit, garbage, pipelined
   batches, STARTTLS and AUTH): every reply is a well-formed RFC 5321 reply whose code the model in
   `smtp_model.py` allows, every 250 after DATA stored exactly what was sent with the envelope the session built,
   nothing else was stored, and after each example the server still answers a new connection.
2. Malformed MIME: either 250 with the bytes stored and handed to the provider exactly as sent (less the private
   fields), or a correct 5xx; the route is the envelope sender's, whatever the From: field says.
3. Smuggling (`<LF>.<LF>` and the other endings of the 2023 research) and header injection (CR inside MAIL/RCPT,
   private fields hidden behind bare CR/LF in other fields): one DATA is one message, and no private field reaches
   a provider — checked at a real upstream SMTP sink, after the provider's own line-ending repair.
   tests/smtp/test_ingress.py::test_smtp_smuggling_does_not_end_data checks three endings at the database.

Sizes: `report.scale` examples per test (bounded in `make test`, thousands under `make test-reliability`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
import trustme
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from relay.routing import sender_domain
from relay.runtime import Relay
from relay.store import Messages
from relay.store.tables import messages
from tests.reliability import report
from tests.reliability.smtp_findings import (
    ENVELOPE_INJECTIONS,
    FINDINGS,
    PINNED_INJECTED,
    PINNED_MIME,
    PINNED_SESSIONS,
    SESSION_FINDINGS,
    TLS_SESSION_FINDINGS,
)
from tests.reliability.smtp_model import DEVIATIONS, Command, Data, Posture, SessionModel, Stored
from tests.reliability.smtp_session import (
    ServerErrors,
    Stats,
    canonical,
    converse,
    downstream_private_fields,
    probe,
    strip_private,
)
from tests.reliability.smtp_strategies import (
    DEST,
    PASSWORD,
    SERVED,
    USER,
    injected_documents,
    mime_documents,
    sessions,
    smuggling_cases,
    smuggling_payloads,
)
from tests.reliability.smtp_wire import data_end, dot_stuff, dot_unstuff
from tests.support.net import wait_for
from tests.support.relay import config, sandbox_workspace, smtp_workspace, start_relay
from tests.support.sink import SmtpSink

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

T = TypeVar("T")
SECTION = "SMTP fuzzing"
LIMIT = 64 * 1024
OPEN = Posture("allowed network, no TLS", True, False, {}, LIMIT, 3)
LOCKED = Posture("AUTH required, STARTTLS offered", False, True, {USER: PASSWORD}, LIMIT, 3)
MIME = Posture("allowed network", True, False, {}, 256 * 1024, 5)
UPSTREAM = "up.test"  # the workspace that hands mail to the upstream SMTP sink


@dataclass
class Fuzzed:
    """A running Relay and what the fuzz thread needs to inspect it (its loop runs in the test's thread)."""

    relay: Relay
    loop: asyncio.AbstractEventLoop
    outbox: Path
    sink: SmtpSink
    tls: ssl.SSLContext | None
    errors: ServerErrors
    stats: Stats = field(default_factory=Stats)

    @property
    def address(self) -> tuple[str, int]:
        return self.relay.smtp_address

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    async def stored_messages(self) -> int:
        async with self.relay.db.begin() as connection:
            return int((await connection.execute(sa.select(sa.func.count()).select_from(messages))).scalar_one())

    def count(self) -> int:
        """`stored_messages` from the fuzz thread."""
        return self.call(self.stored_messages())

    def check_stored(self, model: SessionModel, before: int) -> None:
        """Each 250 stored exactly the bytes and envelope of its transaction; nothing else was stored."""
        for queue_id, expected in model.stored:
            view = self.call(Messages(self.relay.db).get(queue_id))
            raw = self.call(Messages(self.relay.db).raw(queue_id))
            assert view is not None and raw == expected.content, (queue_id, raw, expected)
            if expected.sender is None:
                assert sender_domain(view.mail_from) == SERVED, view.mail_from
            else:
                assert view.mail_from == expected.sender
            assert len(view.rcpt_to) == len(expected.recipients)
            assert all(want in (None, got) for got, want in zip(view.rcpt_to, expected.recipients, strict=True))
        assert self.count() - before == len(model.stored), "a message was stored that got no 250"

    def check_alive(self) -> None:
        """No session died on an exception, and the server still answers a new connection."""
        probe(self.address)
        died, self.errors.unexpected[:] = list(self.errors.unexpected), []
        assert not died, died


@contextlib.asynccontextmanager
async def running(posture: Posture, tmp_path: Path, sink: SmtpSink, outbox: Path) -> AsyncIterator[Fuzzed]:
    smtp: dict[str, Any] = {
        "max_message_size": posture.max_message_size,
        "max_recipients": posture.max_recipients,
        "allowed_networks": ["127.0.0.0/8"] if posture.open_network else ["10.0.0.0/8"],
        "hostname": posture.hostname,
    }
    client: ssl.SSLContext | None = None
    if posture.tls:
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
        cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        smtp |= {"tls_cert": str(cert), "tls_key": str(key)}
        smtp["users"] = [{"username": u, "password": p} for u, p in posture.users.items()]
        client = ssl.create_default_context()
        ca.configure_trust(client)
    workspaces = [sandbox_workspace("box", [SERVED], outbox), smtp_workspace("upstream", [UPSTREAM], sink.port)]
    relay = await start_relay(config(f"sqlite:///{tmp_path / 'relay.db'}", workspaces, smtp=smtp), tmp_path)
    try:
        with ServerErrors() as errors:
            yield Fuzzed(relay, asyncio.get_running_loop(), outbox, sink, client, errors)
    finally:
        await relay.stop()


def fuzz(check: Callable[[T], None], strategy: st.SearchStrategy[T], examples: int, pinned: Sequence[T] = ()) -> None:
    """Run `check` on the `pinned` values (the cases that found bugs), then on `examples` values from `strategy` with
    a fixed seed. Blocking: call it in a thread."""

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(strategy)
    def run(value: T) -> None:
        check(value)

    for value in pinned:
        run = example(value)(run)
    run()


def transaction(sender: str, recipients: list[str], body: Data) -> list[Command | Data]:
    known = sender if sender_domain(sender) in (SERVED, UPSTREAM) else None
    items: list[Command | Data] = [Command(b"EHLO client.test\r\n", "EHLO", flush=False)]
    items.append(Command(f"MAIL FROM:<{sender}>\r\n".encode(), "MAIL", "ok" if known else "unserved", known, False))
    items += [Command(f"RCPT TO:<{r}>\r\n".encode(), "RCPT", "ok", r, False) for r in recipients]
    return [*items, Command(b"DATA\r\n", "DATA"), body]


def wait_delivered(f: Fuzzed, queue_id: str) -> tuple[bytes, dict[str, Any]]:
    eml = f.outbox / f"{queue_id}.eml"
    wait_for(eml.exists, timeout=30, what=f"{eml.name} in the sandbox outbox")
    return eml.read_bytes(), json.loads((f.outbox / f"{queue_id}.json").read_text())


def record(title: str, f: Fuzzed, what: str, found: list[str], **figures: Any) -> None:
    stats, fixed = f.stats, "\n".join(f"- {FINDINGS[key]}" for key in found) or "- nothing"
    report.record(
        SECTION,
        title,
        f"{what}\n\n{stats.examples} examples, {stats.sessions} sessions, {stats.items} items, "
        f"{stats.bytes_sent:,} bytes sent; {stats.accepted} messages accepted, {stats.refused_data} refused after "
        f"DATA; {stats.tls_sessions} TLS upgrades, {f.errors.tls_failures} failed handshakes (garbage sent instead, "
        f"by design); no session died on an exception.\n\n{stats.code_table()}\n\nFound by this test (its cases are "
        f"replayed first on every run) and fixed in src/:\n{fixed}",
        examples=stats.examples,
        sessions=stats.sessions,
        accepted=stats.accepted,
        tls_failures=f.errors.tls_failures,
        codes=dict(sorted(stats.codes.items())),
        **figures,
    )


# --- 1. command sequences --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("posture_id", ["open", "auth-tls"])
async def test_command_sequences_get_the_codes_rfc_5321_gives(
    posture_id: str, tmp_path: Path, sink: SmtpSink, outbox: Path
) -> None:
    posture = {"open": OPEN, "auth-tls": LOCKED}[posture_id]
    async with running(posture, tmp_path, sink, outbox) as f:

        def example(items: list[Command | Data]) -> None:
            f.stats.examples += 1
            before = f.count()
            model = converse(f.address, posture, items, f.stats, f.tls)
            f.check_stored(model, before)
            f.check_alive()

        await asyncio.to_thread(fuzz, example, sessions(posture), report.scale(40, 3_000), PINNED_SESSIONS[posture_id])

    assert f.stats.accepted > 0 and f.stats.codes[503] > 0 and f.stats.codes[500] > 0, f.stats  # it reached deep
    deviations = "\n".join(f"- {name}: {why}" for name, why in DEVIATIONS.items())
    record(
        f"Command sequences ({posture.name})",
        f,
        "Hypothesis sessions of EHLO/HELO/MAIL/RCPT/DATA/RSET/NOOP/VRFY/EXPN/HELP/QUIT/AUTH/STARTTLS with bad "
        "parameters, over-long lines, NUL, bare CR/LF, 8-bit bytes and garbage, sent in pipelined batches over a raw "
        "socket. Every reply was a well-formed RFC 5321 reply (≤ 512 octets, printable, enhanced code of the same "
        "class) with a code the session model allows; every 250 after DATA stored exactly the bytes and envelope "
        "sent, nothing else was stored, no session died on an exception (aiosmtpd's and asyncio's error logs), and "
        "the server answered a new connection after every example. Where Relay "
        f"departs from RFC 5321 on purpose:\n\n{deviations}",
        SESSION_FINDINGS if posture is OPEN else TLS_SESSION_FINDINGS,
    )


# --- 2. malformed MIME -----------------------------------------------------------------------------------------------


async def test_malformed_mime_is_stored_and_delivered_byte_for_byte_or_refused(
    tmp_path: Path, sink: SmtpSink, outbox: Path
) -> None:
    senders = st.integers(0, 9).map(lambda n: "app@evil.test" if n == 7 else f"app@{SERVED}")  # 1 in 10 unserved
    recipients = st.lists(st.sampled_from([f"r{n}@{DEST}" for n in range(5)]), min_size=1, max_size=3, unique=True)
    big = st.integers(MIME.max_message_size - 2_000, MIME.max_message_size + 2_000).map(
        lambda n: b"From: app@box.test\r\nSubject: big\r\n\r\n" + (b"b" * 98 + b"\r\n") * (n // 100)
    )
    async with running(MIME, tmp_path, sink, outbox) as f:

        def example(case: tuple[str, bytes, list[str]]) -> None:
            sender, document, to = case
            f.stats.examples += 1
            before = f.count()
            model = converse(f.address, MIME, transaction(sender, to, Data(dot_stuff(document))), f.stats, None)
            f.check_stored(model, before)
            f.check_alive()
            for queue_id, stored in model.stored:
                assert stored.content == document + (b"" if document.endswith(b"\r\n") else b"\r\n")
                delivered, envelope = wait_delivered(f, queue_id)
                assert delivered == strip_private(stored.content)
                assert downstream_private_fields(delivered) == [], delivered[:2_000]
                assert (envelope["workspace_id"], envelope["recipients"]) == ("box", to)  # the envelope's route
            assert f.sink.received() == [], "a message took the route of its From: field"

        strategy = st.tuples(senders, st.one_of(mime_documents(), big), recipients)
        await asyncio.to_thread(fuzz, example, strategy, report.scale(50, 3_000), PINNED_MIME)

    record(
        "Malformed MIME",
        f,
        "Hypothesis messages with broken and missing multipart boundaries, nested parts, invalid base64 and "
        "quoted-printable, NUL and 8-bit bytes in headers and bodies, header lines up to 70 KB, odd field names, "
        "folding tricks (whitespace-only continuation lines, LF and CR folds) and private fields hidden in other "
        "fields' values; From: fields of other routes and envelope senders of unserved domains. Each was either "
        "refused with the right 5xx (too big, a line over 64 KiB, a bare CR in the header section, an unserved "
        "sender at MAIL) or stored byte for byte and written to the sandbox outbox exactly as stored less the "
        "Bcc/Resent-Bcc/X-MC-* fields, with no private field visible to Python's email parser, through the workspace "
        "of the envelope sender.",
        ["bare-cr"],
    )


# --- 3. smuggling and header injection -------------------------------------------------------------------------------

SENDERS = {"sandbox": f"app@{SERVED}", "smtp": f"app@{UPSTREAM}"}


def check_provider_copy(f: Fuzzed, via: str, queue_id: str, stored: Stored, sunk: int) -> bytes:
    """What the provider received is the stored message less its private fields (for the upstream SMTP server: with
    line endings repaired, as RFC 5321 clients send it); returns it."""
    if via == "sandbox":
        delivered, envelope = wait_delivered(f, queue_id)
        assert delivered == strip_private(stored.content)
        assert envelope["recipients"] == list(stored.recipients)
        return delivered
    received = wait_for(lambda: f.sink.received()[sunk:], timeout=30, what="the upstream sink to receive it")
    [message] = received
    assert (message.mail_from, message.rcpt_tos) == (stored.sender, list(stored.recipients))
    assert message.data == canonical(strip_private(stored.content))
    return message.data


def smuggled_through(f: Fuzzed) -> list[str]:
    """Recipients of a smuggled command that reached the upstream SMTP server: there must be none."""
    return [r for m in f.sink.received() for r in m.rcpt_tos if r.startswith("victim@")]


@pytest.mark.parametrize("via", ["sandbox", "smtp"])
async def test_smuggled_end_of_data_never_makes_a_second_message(
    via: str, tmp_path: Path, sink: SmtpSink, outbox: Path
) -> None:
    async with running(OPEN, tmp_path, sink, outbox) as f:

        def example(payload: tuple[bytes, bytes]) -> None:
            first, smuggled = payload
            wire = first + smuggled + b"\r\n.\r\n"
            assume(data_end(wire) == len(wire) - 3)  # else it is a real end of data, not a smuggled one
            f.stats.examples += 1
            before, sunk = f.count(), len(f.sink.received())
            items = transaction(SENDERS[via], [f"you@{DEST}"], Data(wire))
            model = converse(f.address, OPEN, [*items, Command(b"NOOP\r\n", "NOOP")], f.stats, None)
            f.check_stored(model, before)
            f.check_alive()
            [(queue_id, stored)] = model.stored
            assert stored.content == dot_unstuff(wire[:-3])
            delivered = check_provider_copy(f, via, queue_id, stored, sunk)
            assert not smuggled_through(f)
            assert delivered.count(b"smuggled body") == 1

        payloads, cases = smuggling_payloads(SENDERS[via]), smuggling_cases(SENDERS[via])
        await asyncio.to_thread(fuzz, example, payloads, report.scale(16, 1_500), cases)

    record(
        f"SMTP smuggling ({via} provider)",
        f,
        "One DATA whose body holds a fake end of data (LF.LF, LF.CRLF, CR.LF, CR.CRLF, CRLF.LF, CRLF.CR, LF.CR, CR.CR, "
        "NUL and space variants) followed by a whole second transaction (MAIL, RCPT to a victim, DATA, headers, body), "
        "with CRLF, bare LF or bare CR after each smuggled command. Every time exactly one message was stored, with "
        "the smuggled transaction as body text, and the provider "
        + (
            "(the upstream SMTP sink, behind Relay's SMTP client, which repairs bare line endings) received one "
            "message for the original envelope and none for the victim."
            if via == "smtp"
            else "(the sandbox outbox) wrote exactly the stored bytes."
        ),
        [],
    )


async def test_header_and_envelope_injection_never_reaches_the_provider(
    tmp_path: Path, sink: SmtpSink, outbox: Path
) -> None:
    async with running(OPEN, tmp_path, sink, outbox) as f:
        for injection in ENVELOPE_INJECTIONS:  # each refused with a 5xx; the session goes on
            verb = injection[:4].decode()
            prefix: list[Command | Data] = [
                Command(b"EHLO client.test\r\n", "EHLO"),
                Command(b"MAIL FROM:<app@up.test>\r\n", "MAIL"),
            ]
            items = [*prefix[: 2 if verb == "RCPT" else 1], Command(injection, verb, "ctl")]
            await asyncio.to_thread(converse, f.address, OPEN, items, f.stats, None)
        assert await f.stored_messages() == 0

        def example(case: tuple[str, bytes]) -> None:
            via, document = case
            f.stats.examples += 1
            before, sunk = f.count(), len(f.sink.received())
            items = transaction(SENDERS[via], [f"you@{DEST}"], Data(dot_stuff(document)))
            model = converse(f.address, OPEN, items, f.stats, None)
            f.check_stored(model, before)
            f.check_alive()
            for queue_id, stored in model.stored:
                delivered = check_provider_copy(f, via, queue_id, stored, sunk)
                assert downstream_private_fields(delivered) == [], delivered
            assert not smuggled_through(f)

        strategy = st.tuples(st.sampled_from(sorted(SENDERS)), injected_documents())
        await asyncio.to_thread(fuzz, example, strategy, report.scale(40, 2_000), PINNED_INJECTED)

    record(
        "Header and envelope injection",
        f,
        f"{len(ENVELOPE_INJECTIONS)} envelope injections (CR or NUL inside MAIL FROM / RCPT TO paths and parameters, "
        "followed by a second command) were each refused with a 5xx, and nothing was stored. Then hypothesis "
        "messages hid Bcc, Resent-Bcc and X-MC-* fields behind CRLF, bare LF, bare CR, CR CR LF and folds inside other "
        "fields (X-MC-Tags, X-MC-Metadata, Subject, …): each was refused (a bare CR in the header section) or "
        "delivered, through the upstream SMTP sink and the sandbox, with no private field that Python's email parser "
        "(which takes a bare CR or LF for a line break) could find.",
        ["address", "bare-cr"],
    )
