"""Run one fuzzed SMTP conversation against a live server, checking every reply against `SessionModel`; and the
oracles for what a provider must receive (`strip_private`, `downstream_private_fields`, `canonical`)."""

from __future__ import annotations

import email
import email.policy
import logging
import re
import ssl
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .smtp_model import Command, Data, Posture, SessionModel
from .smtp_wire import Reply, Wire

__all__ = [
    "ServerErrors",
    "Stats",
    "canonical",
    "converse",
    "downstream_private_fields",
    "probe",
    "strip_private",
]

PRIVATE = (b"bcc", b"resent-bcc")  # and every x-mc-* field (relay.mime.PRIVATE_PREFIXES)


@dataclass
class Stats:
    examples: int = 0
    sessions: int = 0
    items: int = 0
    bytes_sent: int = 0
    accepted: int = 0
    refused_data: int = 0
    tls_sessions: int = 0
    codes: Counter[int] = field(default_factory=Counter)

    def code_table(self) -> str:
        rows = " | ".join(f"{code}: {count}" for code, count in sorted(self.codes.items()))
        return f"Replies by code: {rows}." if rows else "No replies."


class ServerErrors(logging.Handler):
    """ERROR records from aiosmtpd ("mail.log": a session that died on an exception) and asyncio (its transports)
    while the fuzz runs. The one expected kind is a client sending garbage instead of a TLS handshake."""

    LOGGERS = ("mail.log", "asyncio")

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.tls_failures = 0
        self.unexpected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        kind = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        if kind == "TLSSetupException":
            self.tls_failures += 1
        else:
            self.unexpected.append(f"{record.name}: {record.getMessage()} ({kind})")

    def __enter__(self) -> ServerErrors:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)


def converse(
    address: tuple[str, int],
    posture: Posture,
    items: Sequence[Command | Data],
    stats: Stats,
    tls: ssl.SSLContext | None,
) -> SessionModel:
    """Send `items` (pipelined where `flush` is False, bodies only after 354) and check each reply's code against
    the model; end with QUIT. Returns the model, whose `stored` lists what each 250 after DATA must have stored."""
    model = SessionModel(posture)
    wire = Wire(address)
    transcript: list[tuple[bytes, Reply | None]] = []
    stats.sessions += 1

    def read(item: Command | Data) -> None:
        sent = item.wire if isinstance(item, Data) else item.line
        expected = model.expect(item)
        if not expected.codes:
            transcript.append((sent, None))
            return
        reply = wire.reply()
        transcript.append((sent, reply))
        stats.codes[reply.code] += 1
        if reply.code not in expected.codes:
            lines = "\n".join(f"  C: {s[:200]!r}\n  S: {r}" for s, r in transcript[-12:])
            raise AssertionError(f"{reply.code} not among {sorted(expected.codes)} for {sent[:200]!r}:\n{lines}")
        if model.data is not None and reply.code != 250:
            stats.refused_data += 1
        if isinstance(item, Command) and item.verb == "EHLO" and reply.code == 250 and model.challenge is None:
            _check_ehlo(model, reply)
        model.advance(item, reply.code, reply.text)

    pending: list[Command | Data] = []

    def flush() -> None:
        if not pending:
            return
        wire.send(b"".join(i.wire if isinstance(i, Data) else i.line for i in pending))
        starttls = next((i for i in pending if isinstance(i, Command) and i.verb == "STARTTLS"), None)
        for item in pending:
            if not model.closed:
                read(item)
        pending.clear()
        if model.handshake and not model.closed:
            assert starttls is not None and tls is not None
            if starttls.kind == "ok-garbage":  # not a TLS ClientHello: the server must give up on this client only
                wire.send(b"this is not TLS\r\n" * 4)
                wire.closed_by_server(strict=False)
                model.closed = True
            else:
                wire.starttls(tls, "127.0.0.1")
                model.tls_started()
                stats.tls_sessions += 1

    try:
        greeting = wire.reply()
        assert greeting.code == 220, greeting
        for item in items:
            stats.items += 1
            if isinstance(item, Data):
                flush()
                if model.data is not None and not model.closed:  # a body goes out only after 354
                    pending.append(item)
                    flush()
                continue
            if model.closed:
                break
            pending.append(item)
            if item.flush or item.verb in ("STARTTLS", "QUIT"):
                flush()
        flush()
        if not model.closed:
            if model.data is not None:  # commands pipelined after DATA became data: end it
                read(Command(b"\r\n.\r\n", "", "end of data"))
            pending.append(Command(b"QUIT\r\n", "QUIT"))
            flush()
            assert model.closed
            assert wire.closed_by_server() == [], "the server answered after 221"
        else:
            wire.closed_by_server(strict=False)  # replies to lines pipelined after the closing one are not modelled
    finally:
        stats.bytes_sent += wire.sent
        wire.close()
    stats.accepted += len(model.stored)
    return model


def _check_ehlo(model: SessionModel, reply: Reply) -> None:
    """RFC 5321 §4.1.1.1 plus what Relay must offer: STARTTLS only before TLS, AUTH only once it is allowed."""
    posture = model.posture
    assert reply.lines[0][4:].split()[0].decode() == posture.hostname, reply
    keywords = {line[4:].split()[0].upper().decode(): line[4:].strip() for line in reply.lines[1:]}
    assert keywords.get("SIZE") == f"SIZE {posture.max_message_size}".encode(), reply
    assert {"PIPELINING", "8BITMIME"} <= set(keywords), reply
    assert ("STARTTLS" in keywords) == (posture.tls and not model.tls), reply
    assert ("AUTH" in keywords) == (posture.tls and model.tls), reply


def probe(address: tuple[str, int]) -> None:
    """The server still takes a new connection and answers it: 220, NOOP 250, QUIT 221."""
    wire = Wire(address)
    try:
        assert wire.reply().code == 220
        wire.send(b"NOOP\r\nQUIT\r\n")
        assert wire.reply().code == 250
        assert wire.reply().code == 221
    finally:
        wire.close()


_FIELD_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")


def strip_private(raw: bytes) -> bytes:
    """`raw` without its top-level Bcc, Resent-Bcc and X-MC-* fields (folded lines included), every other byte
    kept: what Relay promises a provider receives. The header section ends at the first CRLFCRLF or LFLF."""
    ends = [i + n for i, n in ((raw.find(b"\r\n\r\n"), 4), (raw.find(b"\n\n"), 2)) if i != -1]
    end = min(ends) if ends else len(raw)
    kept, dropping, seen = [], False, False
    for line in _FIELD_LINE.findall(raw[:end]):
        if not (seen and line[:1] in (b" ", b"\t")):  # not a continuation: a field of its own
            name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
            dropping = name in PRIVATE or name.startswith(b"x-mc-")
        seen = True
        if not dropping:
            kept.append(line)
    return b"".join(kept) + raw[end:]


def downstream_private_fields(data: bytes) -> list[str]:
    """Private fields a downstream parser finds in `data`: Python's, which (like many) takes a bare CR or LF for a
    line break. Relay must have removed every one of them."""
    message = email.message_from_bytes(data, policy=email.policy.compat32)
    names = [name.strip().lower() for name in message]
    return [name for name in names if name.encode() in PRIVATE or name.startswith("x-mc-")]


def canonical(data: bytes) -> bytes:
    """What an RFC 5321 client puts on the wire for stored bytes: every lone CR or LF made a CRLF, a final CRLF."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"
