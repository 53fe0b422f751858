"""Hypothesis strategies for the SMTP fuzz tests: command lines tagged with what they are (`Command.kind`, which
`SessionModel` turns into reply codes), message bodies, malformed MIME documents and smuggling sequences.

Every command line has exactly one LF, its last byte; anything else (CR, NUL, 8-bit, 70 KB) may be anywhere.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from hypothesis import strategies as st

from .smtp_model import VERBS, Command, Data, Posture, classify_line
from .smtp_wire import dot_stuff

__all__ = [
    "DEST",
    "GOOD_PLAIN",
    "PASSWORD",
    "SERVED",
    "USER",
    "bodies",
    "injected_documents",
    "mime_documents",
    "sessions",
    "smuggling_cases",
    "smuggling_payloads",
]

SERVED, DEST = "box.test", "dest.test"
UNSERVED = ("evil.test", "box.test.evil", "sub.box.test", "xbox.test")
USER, PASSWORD = "app", "s3cret-pw!"
CONTROLS = "\x00\x01\x08\x0b\x0c\x1b\x1f\x7f\r"
SMUGGLING_ENDINGS = (
    b"\n.\n", b"\n.\r\n", b"\r.\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n.\r", b"\r.\r",
    b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n .\r\n", b"\r\n.\r\r\n", b"\r\n.\n\r\n", b"\n\r\n.\n",
)  # fmt: skip

locals_ = st.from_regex(r"[a-z0-9]{1,10}(?:[._+-][a-z0-9]{1,6}){0,2}", fullmatch=True)
ends = st.sampled_from([b"\r\n"] * 5 + [b"\n"])  # a bare LF ends a command line too (aiosmtpd, like Postfix)
flushes = st.sampled_from([True, False])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@st.composite
def _line(draw: st.DrawFn, verb: str, arg: str | bytes | None, kind: str, address: str | None = None) -> Command:
    word = draw(st.sampled_from([verb, verb.lower(), verb.title()])).encode()
    data = arg.encode("latin-1") if isinstance(arg, str) else arg
    line = word + (b"" if data is None else b" " + data) + draw(ends)
    return Command(line, verb, kind, address, draw(flushes))


def _toolong(draw: st.DrawFn, verb: str) -> Command:
    n = draw(st.sampled_from([600, 1_500, 70_000]))
    return draw(_line(verb, "X" * n, "toolong"))


def _path(draw: st.DrawFn, verb: str, keyword: str, domain: str, limit: int) -> Command:
    kinds = ["ok"] * 4 + ["syntax", "lenient", "ctl", "long-path", "8bit", "toolong", "unknown-param", "bad-param"]
    kinds += ["ok-params", "size-over", "smtputf8", "unserved", "null"] if verb == "MAIL" else ["no-domain"]
    kind = draw(st.sampled_from(kinds))
    if kind == "toolong":
        return _toolong(draw, verb)
    local = draw(locals_)
    address = f"{local}@{domain}"
    choices: dict[str, list[str]] = {
        "ok": [f"{keyword}<{address}>", f"{keyword} <{address}>"],
        "syntax": [
            keyword.rstrip(":"),
            keyword,
            f"TX:<{address}>",
            f"{keyword}{address}>",
            f"{keyword}<<{address}>>",
            f"{keyword}<{local}@@{domain}>",
            f"{keyword}<@{domain}>",
            f"{keyword}<{local}@>",
            f"{keyword}<{address}.>",
            f"{keyword}<{address}>,<{address}>",
        ],
        "lenient": [
            f"{keyword}<{address}",
            f"{keyword}{address}",
            f"{keyword}<@x.test:{address}>",
            f"{keyword}<{local}.@{domain}>",
            f"{keyword}<{local}(c)@{domain}>",
            f"{keyword}<{local}@{domain[:2]}\r{domain[2:]}>",  # the parser drops the CR (CFWS)
            f"{keyword}<{'l' * 100}@{domain}>",
        ],
        "ctl": [f"{keyword}<{local}{c}x@{domain}>" for c in CONTROLS],
        "long-path": [f"{keyword}<{'a' * draw(st.integers(246, 440))}@{domain}>"],
        "8bit": [f"{keyword}<{local}\xe9@{domain}>"],
        "unknown-param": [f"{keyword}<{address}> {p}" for p in ("RET=HDRS", "ENVID=abc", "XFOO", "NOTIFY=SUCCESS")],
        "bad-param": [f"{keyword}<{address}> {p}" for p in ("SIZE=abc", "SIZE=", "=1", "X-Y=1", "SIZE=-1")],
        "ok-params": [f"{keyword}<{address}> {p}" for p in (f"SIZE={limit}", "SIZE=0", "BODY=8BITMIME", "body=7bit")],
        "size-over": [f"{keyword}<{address}> SIZE={draw(st.integers(limit + 1, 10**12))}"],
        "smtputf8": [f"{keyword}<{address}> {p}" for p in ("SMTPUTF8", "SMTPUTF8=yes")],
        "unserved": [f"{keyword}<{local}@{other}>" for other in UNSERVED],
        "null": [f"{keyword}<>"],
        "no-domain": [f"{keyword}<{name}>" for name in ("postmaster", "Postmaster", local, "")],
    }
    known = address if kind in ("ok", "ok-params") else None
    return draw(_line(verb, draw(st.sampled_from(choices[kind])), kind, known))


@st.composite
def _mail(draw: st.DrawFn, limit: int) -> Command:
    return _path(draw, "MAIL", "FROM:", SERVED, limit)


@st.composite
def _rcpt(draw: st.DrawFn, limit: int) -> Command:
    return _path(draw, "RCPT", "TO:", DEST, limit)


GOOD_PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
WRONG_PLAIN = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
UNKNOWN_PLAIN = base64.b64encode(b"\0nobody\0x").decode()


@st.composite
def _auth(draw: st.DrawFn) -> Command:
    choices: dict[str, list[str | None]] = {
        "plain-ok": [f"PLAIN {GOOD_PLAIN}"],
        "plain-bad": [f"PLAIN {WRONG_PLAIN}", f"PLAIN {UNKNOWN_PLAIN}"],
        "challenge": ["PLAIN", "LOGIN", f"LOGIN {_b64(USER.encode())}"],
        "bad-b64": ["PLAIN !!!!", "LOGIN @@@@"],
        "no-split": [f"PLAIN {_b64(b'abcdef')}"],
        "empty-response": ["PLAIN ="],
        "unknown-mech": ["CRAM-MD5", "XOAUTH2 abc", "GSSAPI"],
        "mech-case": [f"plain {GOOD_PLAIN}", "login"],
        "empty": [None],
        "too-many": ["PLAIN a b"],
    }
    kind = draw(st.sampled_from(sorted(choices)))
    return draw(_line("AUTH", draw(st.sampled_from(choices[kind])), kind))


@st.composite
def _auth_response(draw: st.DrawFn) -> Command:
    text = draw(
        st.one_of(
            st.sampled_from([GOOD_PLAIN, WRONG_PLAIN, _b64(USER.encode()), _b64(PASSWORD.encode()), "*", "!!!!"]),
            st.binary(min_size=4, max_size=40).map(_b64),
        )
    )
    return Command(text.encode() + draw(ends), "", "auth-response", flush=draw(flushes))


@st.composite
def _garbage(draw: st.DrawFn) -> Command:
    raw = draw(
        st.one_of(
            st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
            st.sampled_from(
                [b"", b"\x00", b"\xff\xfe", b"MAIL\tFROM:<a@box.test>", b" NOOP", b"\r", b".", b"..", b"-"]
            ),
        )
    )
    line = raw + draw(ends)
    if classify_line(line) == "verb":
        line = b"X" + line
    return Command(line, "", "garbage", flush=draw(flushes))


def _simple(verb: str, choices: dict[str, list[str | None]]) -> Callable[[], st.SearchStrategy[Command]]:
    @st.composite
    def build(draw: st.DrawFn) -> Command:
        kind = draw(st.sampled_from([*sorted(choices), "toolong", "8bit"]))
        if kind == "toolong":
            return _toolong(draw, verb)
        arg = "\xe9t\xe9" if kind == "8bit" else draw(st.sampled_from(choices[kind]))
        return draw(_line(verb, arg, kind))

    return build


_helo: dict[str, list[str | None]] = {
    "ok": ["client.test", "[127.0.0.1]", "localhost"],
    "empty": [None],
    "junk": ["a b", "\x00", "x\ry", "-"],
}
_SIMPLE = {
    "HELO": _simple("HELO", _helo),
    "EHLO": _simple("EHLO", _helo),
    "DATA": _simple("DATA", {"ok": [None], "arg": ["now"]}),
    "RSET": _simple("RSET", {"ok": [None], "arg": ["now"]}),
    "NOOP": _simple("NOOP", {"ok": [None, "anything \x00 at \r all"]}),
    "QUIT": _simple("QUIT", {"ok": [None], "arg": ["now"]}),
    "VRFY": _simple("VRFY", {"ok": ["<a@dest.test>", "postmaster"], "empty": [None], "bad": ["<<>", "@@"]}),
    "EXPN": _simple("EXPN", {"ok": ["staff"]}),
    "HELP": _simple("HELP", {"ok": [None, "MAIL", "FOO"]}),
    "STARTTLS": _simple("STARTTLS", {"ok": [None], "ok-garbage": [None], "arg": ["now"]}),
}
assert set(_SIMPLE) | {"MAIL", "RCPT", "AUTH"} == VERBS


def _messages(limit: int) -> st.SearchStrategy[bytes]:
    text = st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from([b".", b"..", b".\r", b"\x00", b"\xff\xfe", b"From x", b"\r\n.\r", *SMUGGLING_ENDINGS]),
        ),
        max_size=12,
    ).map(lambda parts: b"\r\n".join(parts))
    big = st.integers(limit + 1, limit + 4_096).map(
        lambda n: b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * (n // 1000 + 1)
    )
    odd = st.one_of(
        big,
        st.just(b"Subject: long line\r\n\r\n" + b"z" * 70_000 + b"\r\n"),
        st.just(b"Subject: nearly long\r\n\r\n" + b"z" * 60_000 + b"\r\n"),
    )
    return st.one_of(text, mime_documents(), text, mime_documents(), odd)  # hypothesis picks a branch uniformly


def bodies(limit: int) -> st.SearchStrategy[Data]:
    """What a client sends after 354: a message dot-stuffed, or (rarely) an empty message."""
    return st.one_of(_messages(limit).map(lambda m: Data(dot_stuff(m))), st.just(Data(b".\r\n")))


@st.composite
def _transaction(draw: st.DrawFn, posture: Posture) -> list[Command | Data]:
    sender = draw(locals_)
    items: list[Command | Data] = [
        Command(f"MAIL FROM:<{sender}@{SERVED}>\r\n".encode(), "MAIL", "ok", f"{sender}@{SERVED}", False)
    ]
    for rcpt in draw(st.lists(locals_, min_size=1, max_size=posture.max_recipients + 1)):
        items.append(Command(f"RCPT TO:<{rcpt}@{DEST}>\r\n".encode(), "RCPT", "ok", f"{rcpt}@{DEST}", False))
    items.append(Command(b"DATA\r\n", "DATA", "ok", None, draw(st.sampled_from([True] * 5 + [False]))))
    items.append(draw(bodies(posture.max_message_size)))
    return items


def _opening(posture: Posture) -> st.SearchStrategy[list[Command]]:
    """How the session starts; mostly a greeting (and, where AUTH is required, TLS and AUTH) so that the rest can
    reach a transaction."""
    ehlo = Command(b"EHLO client.test\r\n", "EHLO")
    helo = Command(b"HELO client.test\r\n", "HELO")
    if not posture.tls:
        return st.sampled_from([[ehlo], [ehlo], [ehlo], [helo], []])
    tls = [ehlo, Command(b"STARTTLS\r\n", "STARTTLS"), ehlo]
    authenticated = [*tls, Command(f"AUTH PLAIN {GOOD_PLAIN}\r\n".encode(), "AUTH", "plain-ok")]
    return st.sampled_from([authenticated, authenticated, authenticated, tls, [ehlo], [helo], []])


def sessions(posture: Posture) -> st.SearchStrategy[list[Command | Data]]:
    """One connection's worth of items: an opening, a few commands of any kind, one or two transactions (which those
    commands may have broken), and a few more commands."""
    limit = posture.max_message_size
    single = st.one_of(
        *(strategy() for strategy in _SIMPLE.values()),
        _garbage(),
        _mail(limit),
        _rcpt(limit),
        _auth(),
        _auth_response(),
    )
    return st.tuples(
        _opening(posture),
        st.lists(single, max_size=6),
        st.lists(_transaction(posture), min_size=1, max_size=2),
        st.lists(single, max_size=6),
    ).map(lambda t: [*t[0], *t[1], *(item for items in t[2] for item in items), *t[3]])


# --- malformed MIME --------------------------------------------------------------------------------------------------

HEADER_NAMES = (
    "From", "To", "Cc", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
    "X-MC-Tags", "X-MC-Metadata", "X-MC-Subaccount", "x-mc-track", "Bcc", "BCC", "Resent-Bcc", "Reply-To", "X-Custom",
)  # fmt: skip
ODD_NAMES = (b"X-\xff\xfe", b"", b"Bad Name", b"X-MC-Tags ", b" Bcc", b"\x00", b"X" * 2_000)
LINE_ENDS = (b"\r\n",) * 8 + (b"\n", b"\r", b"\r\r\n")
FOLDS = (b"\r\n ", b"\r\n\t", b"\n ", b"\r\n \r\n ", b"\r ", b"\n\t")
INJECTIONS = (b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r\n", b"\r\n ", b"\r\n\x00")
PRIVATE_INJECTED = (
    b"Bcc: injected@dest.test",
    b"X-MC-Subaccount: stolen",
    b"X-MC-Tags: injected",
    b"Resent-Bcc: x@dest.test",
)
VALUES = (
    b"=?utf-8?B?!!!?=", b"=?bogus?Q?=ZZ=?=", b"=?utf-8?q?caf=C3=A9?=", b'{"a": NaN}', b"[1, 2]", b'{"a": "\\u0000"}',
    b"{" * 300, b'{"a":', b"welcome, onboarding", b'["a", "b"]', b"app@box.test", b"ceo@up.test", b"x@evil.test",
    b"<a@box.test>, <b@evil.test>", b"multipart/mixed; boundary=", b'multipart/mixed; boundary="=_b"', b"base64",
)  # fmt: skip


@st.composite
def _header_value(draw: st.DrawFn) -> bytes:
    value = draw(
        st.one_of(
            st.sampled_from(VALUES),
            st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
            st.integers(900, 3_000).map(lambda n: b"v" * n),
            st.sampled_from([b"w" * 60_000, b"w" * 70_000]),
        )
    )
    if draw(st.integers(0, 4)) == 0:  # folded, sometimes with a continuation line of whitespace only
        cut = draw(st.integers(0, len(value)))
        value = value[:cut] + draw(st.sampled_from(FOLDS)) + value[cut:]
    if draw(st.integers(0, 5)) == 0:  # a private field smuggled inside another field's value
        value += draw(st.sampled_from(INJECTIONS)) + draw(st.sampled_from(PRIVATE_INJECTED))
    return value


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    name = draw(st.one_of(st.sampled_from(HEADER_NAMES).map(str.encode), st.sampled_from(ODD_NAMES)))
    separator = draw(st.sampled_from([b": ", b":", b" : ", b"", b":\t"]))
    value: bytes = draw(_header_value())
    end: bytes = draw(st.sampled_from(LINE_ENDS))
    return bytes(name) + separator + value + end


BASE64_JUNK = (b"QUJD", b"QUJ", b"@@@@", b"YWJj=ZGVm", b"====", b"QUJD\x00REVG", b"\xff\xfe")
QP_JUNK = (b"caf=C3=A9", b"=ZZ", b"=", b"=\r\n", b"soft=\n", b"=0", b"\xe9t\xe9")


@st.composite
def _part(draw: st.DrawFn, boundary: bytes, depth: int) -> bytes:
    encoding = draw(st.sampled_from([b"base64", b"quoted-printable", b"8bit", b"7bit", b"x-bogus"]))
    head = b"Content-Type: text/plain; charset=" + draw(st.sampled_from([b"utf-8", b"x-unknown", b"\xff"]))
    head += b"\r\nContent-Transfer-Encoding: " + encoding + b"\r\n\r\n"
    junk = BASE64_JUNK if encoding == b"base64" else QP_JUNK
    body = b"\r\n".join(draw(st.lists(st.one_of(st.sampled_from(junk), st.binary(max_size=40)), max_size=4)))
    if depth < 2 and draw(st.booleans()):
        body = draw(_multipart(depth + 1))
    return b"--" + boundary + draw(st.sampled_from([b"\r\n", b"\n", b" \r\n", b"--\r\n"])) + head + body + b"\r\n"


@st.composite
def _multipart(draw: st.DrawFn, depth: int = 0) -> bytes:
    boundary = draw(st.sampled_from([b"=_b", b"b", b"", b"\xff\xfe", b"a b", b"-" * 75, b"x" * 200]))
    declared = draw(st.sampled_from([boundary, boundary, b"other", b""]))
    head = b'Content-Type: multipart/mixed; boundary="' + declared + b'"\r\n\r\n'
    parts = draw(st.lists(_part(boundary, depth), max_size=3))
    closing = draw(st.sampled_from([b"--" + boundary + b"--\r\n", b"", b"--" + boundary + b"\r\n", b"--\r\n"]))
    return head + b"preamble\r\n" + b"".join(parts) + closing


@st.composite
def mime_documents(draw: st.DrawFn) -> bytes:
    """A message with odd header fields and a broken body: the shapes that break parsers."""
    headers = b"".join(draw(st.lists(_header(), max_size=7)))
    separator = draw(st.sampled_from([b"\r\n"] * 4 + [b"\n", b""]))
    body = draw(
        st.one_of(
            _multipart(),
            st.binary(max_size=200),
            st.lists(
                st.sampled_from([b".", b"..x", b"From me", b"\x00", b"\r", b"\n", *SMUGGLING_ENDINGS]), max_size=8
            ).map(b"\r\n".join),
        )
    )
    return headers + separator + body


# --- smuggling -------------------------------------------------------------------------------------------------------


def smuggling_cases(sender: str) -> list[tuple[bytes, bytes]]:
    """One plain case per ending in SMUGGLING_ENDINGS, as in the 2023 research: the second transaction right after."""
    first = b"From: " + sender.encode() + b"\r\nTo: you@dest.test\r\nSubject: first\r\n\r\nfirst body"
    second = (
        b"MAIL FROM:<admin@" + sender.split("@")[1].encode() + b">\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\n"
        b"From: admin@x\r\nTo: victim@dest.test\r\nSubject: smuggled\r\n\r\nsmuggled body"
    )
    return [(first, ending + second) for ending in SMUGGLING_ENDINGS]


@st.composite
def smuggling_payloads(draw: st.DrawFn, sender: str) -> tuple[bytes, bytes]:
    """(first message's body text, what follows it): a fake end of data, then a whole second transaction."""
    first = b"From: " + sender.encode() + b"\r\nTo: you@dest.test\r\nSubject: first\r\n\r\nfirst body"
    first += draw(st.sampled_from([b"", b"\r\nmore", b"\r", b"\n"]))
    smuggled = b"".join(
        [
            draw(st.sampled_from(SMUGGLING_ENDINGS)),
            draw(st.sampled_from([b"", b"RSET\r\n", b"EHLO evil.test\r\n"])),
            b"MAIL FROM:<admin@"
            + sender.split("@")[1].encode()
            + b">"
            + draw(st.sampled_from([b"\r\n", b"\n", b"\r"])),
            b"RCPT TO:<victim@dest.test>" + draw(st.sampled_from([b"\r\n", b"\n", b"\r"])),
            b"DATA" + draw(st.sampled_from([b"\r\n", b"\n", b"\r"])),
            b"From: admin@x\r\nTo: victim@dest.test\r\nSubject: smuggled\r\n\r\nsmuggled body",
            draw(st.sampled_from([b"", *SMUGGLING_ENDINGS])),
        ]
    )
    return first, smuggled


@st.composite
def injected_documents(draw: st.DrawFn) -> bytes:
    """A short message with a private field hidden behind a line break inside another field's value."""
    carrier = draw(st.sampled_from([b"X-MC-Tags", b"X-MC-Metadata", b"Subject", b"X-Custom", b"To", b"Bcc"]))
    field = carrier + b": " + draw(st.sampled_from([b"welcome", b'{"a": 1}', b""]))
    field += draw(st.sampled_from(INJECTIONS)) + draw(st.sampled_from(PRIVATE_INJECTED))
    field += draw(st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n "]))
    fields = [b"From: app@x.test\r\n", b"To: you@dest.test\r\n", b"Subject: hello\r\n"]
    fields.insert(draw(st.integers(0, len(fields))), field)
    return b"".join(fields) + b"\r\nBody text\r\nBcc: in the body, and stays there\r\n"
