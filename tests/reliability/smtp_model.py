"""A client's model of one SMTP session with Relay: which reply codes each line may get, and what a 250 stored.

The codes come from RFC 5321 (and RFC 1870 SIZE, 2920 PIPELINING, 3207 STARTTLS, 4954 AUTH). Where the RFC allows
several diagnoses the model accepts each of them, and when a line has several problems any one of their codes is a
correct answer. A line is described by how the strategy built it (`Command.kind`), so the model never re-parses
addresses. Where Relay answers differently from the RFC on purpose, `DEVIATIONS` says so and the model follows
Relay. State advances on the code actually received, so a lenient acceptance is followed faithfully.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from relay.smtp.server import AUTH_ATTEMPTS_PER_SESSION

from .smtp_wire import crlf_lines, data_end, dot_unstuff

__all__ = ["DEVIATIONS", "VERBS", "Command", "Data", "Expect", "Posture", "SessionModel", "Stored", "classify_line"]

VERBS = frozenset(
    {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "AUTH", "STARTTLS"}
)
DATA_LINE_LIMIT = 65_536  # RelaySMTP.line_length_limit: Relay takes lines far past RFC 5321's 1000 octets
BOGUS_LIMIT = 5  # aiosmtpd: the 5th unrecognised command closes the session (502)

DEVIATIONS = {
    "null sender": "MAIL FROM:<> is refused with 550 5.7.1: Relay relays for its own senders and sends no bounces.",
    "postmaster": "RCPT TO:<postmaster> (no domain) is refused with 550 5.1.3: Relay is a relay, not a mailbox host.",
    "long lines": "DATA lines up to 64 KiB are accepted (RFC 5321: 1000 octets), like Postfix, for real HTML mail.",
    "lenient paths": "aiosmtpd accepts some malformed paths (`<a@b` without `>`, a bare address, a source route).",
    "VRFY syntax": "VRFY with an unparsable argument gets 502 (aiosmtpd), where RFC 5321 would suggest 501.",
    "AUTH mechanism case": "AUTH mechanisms are matched case-sensitively (`plain` gets 504).",
}

# What the arguments of MAIL/RCPT can be, and the codes each problem may get (RFC 5321 §4.2.2, §4.5.3.1.10).
SYNTAX = frozenset({501, 553})
ARG_CODES: dict[str, frozenset[int]] = {
    "ok": frozenset(),
    "syntax": SYNTAX,
    "ctl": SYNTAX,  # a control character in the path: it could never be sent on (nor stored on PostgreSQL)
    "long-path": SYNTAX,  # over RFC 5321 §4.5.3.1.3's 256 octets
    "unknown-param": frozenset({555, 501}),
    "bad-param": frozenset({501, 555}),
    "smtputf8": frozenset({501, 555}),
    "size-over": frozenset({552}),
    "no-domain": frozenset({550, 553, 501}),
}
MAYBE = {"lenient": SYNTAX}  # problems the server may or may not see
POLICY = {"unserved": frozenset({550}), "null": frozenset({550})}
CLOSING = frozenset({221, 421})  # and 502 after too many unrecognised commands


@dataclass(frozen=True)
class Command:
    line: bytes  # one command line: its only LF is the last byte
    verb: str  # the verb it was built for ("" for garbage)
    kind: str = "ok"
    address: str | None = None  # MAIL/RCPT "ok": the mailbox a 250 records
    flush: bool = True  # wait for the replies before sending the next item (False: pipeline it, RFC 2920)


@dataclass(frozen=True)
class Data:
    wire: bytes  # what the client sends after 354, terminator included


@dataclass(frozen=True)
class Posture:
    name: str
    open_network: bool  # the client may send without AUTH
    tls: bool  # a certificate is configured: STARTTLS is offered and AUTH needs it
    users: dict[str, str]
    max_message_size: int
    max_recipients: int
    hostname: str = "relay.test"


@dataclass(frozen=True)
class Expect:
    codes: frozenset[int]  # empty: no reply for this item


@dataclass(frozen=True)
class Stored:
    sender: str | None  # None: accepted through a lenient path the model does not parse
    recipients: tuple[str | None, ...]
    content: bytes


def classify_line(line: bytes) -> str:
    """How the server reads a line the strategy did not build as a command: "empty", "8bit", "toolong", "garbage"
    (an unknown verb), or "verb" (it happens to start with a known one)."""
    text = line.rstrip(b"\r\n")
    if not text:
        return "empty"
    if not text.isascii():
        return "8bit"
    if len(text) > 512:
        return "toolong"
    verb = text.partition(b" ")[0].upper().decode()
    return "verb" if verb in VERBS else "garbage"


@dataclass
class SessionModel:
    posture: Posture
    greeted: str | None = None
    tls: bool = False
    user: str | None = None
    in_mail: bool = False
    sender: str | None = None
    recipients: list[str | None] = field(default_factory=list)
    bogus: int = 0
    auth_commands: int = 0
    challenge: str | None = None  # "plain", "login-user", "login-pass": the next line answers a 334
    login: bytes = b""
    data: bytearray | None = None  # after 354: the data so far
    closed: bool = False
    handshake: bool = False  # STARTTLS got 220: the client must now negotiate TLS
    stored: list[tuple[str, Stored]] = field(default_factory=list)
    _pending: Stored | None = None

    # --- expectations ---------------------------------------------------------------------------------------------

    def expect(self, item: Command | Data) -> Expect:
        """The codes the next reply may have once `item` is sent, or no reply. Call `advance` with what came."""
        if self.data is not None:
            return self._feed(item.wire if isinstance(item, Data) else item.line)
        assert isinstance(item, Command), "a body is only sent after 354"
        if self.challenge is not None:
            return Expect(self._auth_response(item.line))
        if not item.verb:  # garbage, or an AUTH response sent when no challenge is open: read as the server does
            kind = classify_line(item.line)
            assert kind != "verb", f"the strategies never send a known verb as garbage: {item.line!r}"
            if kind != "garbage":
                return Expect(frozenset({500}))
            self.bogus += 1
            return Expect(frozenset({502} if self.bogus >= BOGUS_LIMIT else {500}))
        return Expect(self._command(item))

    def _command(self, item: Command) -> frozenset[int]:
        verb, kind = item.verb, item.kind
        if kind == "toolong":
            return frozenset({500})
        if kind == "8bit":  # no SMTPUTF8 offered: 8-bit bytes are a syntax error wherever they are
            return frozenset({500, 501, 553})
        if verb == "AUTH":
            self.auth_commands += 1
            if self.auth_commands > AUTH_ATTEMPTS_PER_SESSION:
                return frozenset({421})
        handler = getattr(self, f"_{verb.lower()}")
        codes: frozenset[int] = handler(kind)
        return codes

    def _helo(self, kind: str) -> frozenset[int]:
        return {"ok": _ok(250), "empty": _ok(501), "junk": _ok(250, 501)}[kind]

    _ehlo = _helo

    def _mail(self, kind: str) -> frozenset[int]:
        problems: set[int] = set()
        if self.greeted is None or self.in_mail:
            problems.add(503)
        problems |= ARG_CODES.get(kind, frozenset())
        if kind in ("ok-params", "size-over") and self.greeted == "HELO":
            problems |= {501, 555}  # ESMTP parameters after HELO
        if not self.posture.open_network and self.user is None:
            problems.add(530)
        problems |= POLICY.get(kind, frozenset())
        if kind in MAYBE:
            return frozenset(problems | MAYBE[kind] | (set() if problems else {250}))
        return frozenset(problems or {250})

    def _rcpt(self, kind: str) -> frozenset[int]:
        problems: set[int] = set()
        if self.greeted is None or not self.in_mail:
            problems.add(503)
        problems |= ARG_CODES.get(kind, frozenset())
        if len(self.recipients) >= self.posture.max_recipients:
            problems.add(452)  # RFC 5321 §4.5.3.1.10: too many recipients is temporary
        if kind in MAYBE:
            return frozenset(problems | MAYBE[kind] | (set() if problems else {250}))
        return frozenset(problems or {250})

    def _data(self, kind: str) -> frozenset[int]:
        problems: set[int] = set()
        if self.greeted is None:
            problems.add(503)
        if not self.recipients:
            problems |= {503, 554}  # RFC 5321 §3.3: no valid recipients
        if kind == "arg":
            problems.add(501)
        return frozenset(problems or {354})

    def _rset(self, kind: str) -> frozenset[int]:
        return _ok(250) if kind == "ok" else _ok(501)

    def _noop(self, kind: str) -> frozenset[int]:
        return _ok(250)

    def _quit(self, kind: str) -> frozenset[int]:
        return _ok(221) if kind == "ok" else _ok(501)

    def _vrfy(self, kind: str) -> frozenset[int]:
        return {"ok": _ok(252, 250, 251), "empty": _ok(501), "bad": _ok(501, 502, 553)}[kind]

    def _expn(self, kind: str) -> frozenset[int]:
        return _ok(502, 252, 550)

    def _help(self, kind: str) -> frozenset[int]:
        return _ok(214, 250, 501, 502, 504)

    def _starttls(self, kind: str) -> frozenset[int]:
        if not self.posture.tls:
            return _ok(500, 502) | ({501} if kind == "arg" else set())  # never available here: no 454
        if self.tls:
            return _ok(503, 554)  # RFC 3207 §4: no second negotiation
        return _ok(501) if kind == "arg" else _ok(220)

    def _auth(self, kind: str) -> frozenset[int]:
        problems: set[int] = set()
        if self.greeted is None:
            problems.add(503)
        elif self.greeted == "HELO":
            problems |= {500, 502, 503}  # AUTH is an ESMTP extension
        if (self.posture.tls and not self.tls) or not self.posture.users:
            problems.add(538)  # RFC 4954 §4: encryption required (and never available without a certificate)
        if self.user is not None:
            problems.add(503)
        problems |= {"empty": {501}, "too-many": {501}, "unknown-mech": {504}, "bad-b64": {501}}.get(kind, set())
        if kind == "mech-case":
            return frozenset(problems | {504} if problems else {504, 235, 535})
        if problems:
            return frozenset(problems)
        return {
            "plain-ok": _ok(235),
            "plain-bad": _ok(535),
            "no-split": _ok(501, 535),
            "empty-response": _ok(501, 535),
            "challenge": _ok(334),
        }[kind]

    def _auth_response(self, line: bytes) -> frozenset[int]:
        blob = line.strip()
        if len(line) > 1000:
            return _ok(500, 501)
        if blob == b"*":
            return _ok(501)  # RFC 4954 §4: the client cancelled
        try:
            decoded = base64.b64decode(blob, validate=True)
        except binascii.Error:
            return _ok(501)
        if self.challenge == "login-user":
            return _ok(334)
        if self.challenge == "login-pass":
            return _ok(235 if self._valid(self.login, decoded) else 535)
        parts = decoded.split(b"\x00")
        if len(parts) != 3:
            return _ok(501, 535)
        return _ok(235 if self._valid(parts[1], parts[2]) else 535)

    def _valid(self, login: bytes, password: bytes) -> bool:
        return self.posture.users.get(login.decode(errors="replace")) == password.decode(errors="replace")

    def _feed(self, chunk: bytes) -> Expect:
        assert self.data is not None
        self.data += chunk
        end = data_end(bytes(self.data))
        if end is None:
            return Expect(frozenset())
        assert end + 3 == len(self.data), "the strategies never send bytes after the end of the data"
        wire = bytes(self.data[:end])
        content = dot_unstuff(wire)
        limit = self.posture.max_message_size
        problems: set[int] = set()
        if any(len(line) > DATA_LINE_LIMIT for line in crlf_lines(wire)):
            problems.add(500)  # RFC 5321 §4.5.3.1.10: "500 Line too long"
        if len(content) > limit:
            problems.add(552)
        if bare_cr_in_header(content):
            problems |= {550, 554}
        self._pending = Stored(self.sender, tuple(self.recipients), content)
        if problems:
            return Expect(frozenset(problems))
        # The size may be counted on the wire (dot-stuffed) or on the message: between the two, either answer.
        return Expect(_ok(250, 552) if len(wire) > limit else _ok(250))

    # --- state ----------------------------------------------------------------------------------------------------

    def advance(self, item: Command | Data, code: int, text: bytes = b"") -> None:
        """Move to the state the server is in after answering `item` with `code`."""
        if self.data is not None:
            if self._pending is not None:  # the data ended
                if code == 250:
                    self.stored.append((text.split()[-1].decode(), self._pending))
                self.data, self._pending = None, None
                self._reset_transaction()
            return
        assert isinstance(item, Command)
        if self.challenge is not None:
            self._advance_auth_response(item.line, code)
            return
        if code in CLOSING or (code == 502 and self.bogus >= BOGUS_LIMIT and not item.verb):
            self.closed = True
            return
        verb = item.verb
        if verb in ("HELO", "EHLO") and code == 250:
            self.greeted = verb
            self._reset_transaction()
        elif verb == "MAIL" and code == 250:
            self.in_mail, self.sender = True, item.address
        elif verb == "RCPT" and code == 250:
            self.recipients.append(item.address)
        elif verb == "DATA" and code == 354:
            self.data = bytearray()
        elif verb == "RSET" and code == 250:
            self._reset_transaction()
        elif verb == "STARTTLS" and code == 220:
            self.handshake = True
        elif verb == "AUTH" and code == 235:
            self.user = "authenticated"
        elif verb == "AUTH" and code == 334:
            args = item.line.split()
            if args[1] != b"LOGIN":
                self.challenge = "plain"
            elif len(args) > 2:  # AUTH LOGIN <username>: the password is asked for at once
                self.challenge, self.login = "login-pass", base64.b64decode(args[2])
            else:
                self.challenge = "login-user"

    def _advance_auth_response(self, line: bytes, code: int) -> None:
        if self.challenge == "login-user" and code == 334:
            self.challenge, self.login = "login-pass", base64.b64decode(line.strip())
            return
        self.challenge = None
        if code == 235:
            self.user = "authenticated"

    def tls_started(self) -> None:
        """RFC 3207 §4.2: after the handshake the server forgets everything the client said before it."""
        self.handshake, self.tls = False, True
        self.greeted, self.user = None, None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        self.in_mail, self.sender, self.recipients = False, None, []


def bare_cr_in_header(content: bytes) -> bool:
    """A CR that is not part of a CRLF in the top-level header section (as `relay.mime` delimits it): refused,
    because a downstream parser that takes a bare CR for a line break would read header fields Relay never saw."""
    ends = [i + n for i, n in ((content.find(b"\r\n\r\n"), 4), (content.find(b"\n\n"), 2)) if i != -1]
    header = content[: min(ends)] if ends else content
    return b"\r" in header.replace(b"\r\n", b"")


def _ok(*codes: int) -> frozenset[int]:
    return frozenset(codes)
