"""What the SMTP fuzz tests found in Relay, and the cases that found it, pinned so every run replays them first
(hypothesis `@example`s) whatever the generator draws. Each fix is in src/; the report quotes `FINDINGS`."""

from __future__ import annotations

from .smtp_model import Command, Data
from .smtp_strategies import GOOD_PLAIN

__all__ = [
    "ENVELOPE_INJECTIONS",
    "FINDINGS",
    "PINNED_INJECTED",
    "PINNED_MIME",
    "PINNED_SESSIONS",
    "SESSION_FINDINGS",
    "TLS_SESSION_FINDINGS",
]

FINDINGS = {
    "starttls-454": "STARTTLS without a certificate got 454 (temporary), though no retry can succeed: now "
    "`502 5.5.1` (src/relay/smtp/server.py, `RelaySMTP.smtp_STARTTLS`).",
    "starttls-nested": "STARTTLS inside TLS got 220 and nested a second TLS layer, which killed the session with a "
    "traceback in asyncio's SSL code: now `503 5.5.1` (RFC 3207 §4; same method).",
    "reply-text": 'Replies echoed the client\'s control characters (`500 Error: command "<NUL>" not recognized`, '
    "a bare CR), so reply lines broke RFC 5321's grammar: reply text is now printable ASCII of at most 510 "
    "characters (`RelaySMTP.push`).",
    "address": "MAIL FROM and RCPT TO took paths with a CR, NUL or other control character inside the local part "
    "(aiosmtpd's parser keeps them) and paths over RFC 5321's 256 octets. No upstream SMTP server can be given them "
    "and PostgreSQL cannot store a NUL, so the message would have been retried until it expired: now `501 5.1.7` / "
    "`501 5.1.3` (src/relay/smtp/handler.py, `_address_problem`).",
    "command-size": "The command line limits lived in one dict shared by every connection: each EHLO added 26 "
    "octets to MAIL's (a 700-octet MAIL line was taken after 30 EHLOs) and each new connection reset it under the "
    "sessions in progress. Now fixed at 512, MAIL 538 (RFC 5321 §4.5.3.1.4, RFC 1870; `_CommandSizeLimits`).",
    "closed-tls-write": "After closing a session over a limit (the 5th unknown command: 502; a 6th AUTH: 421), "
    "aiosmtpd reads on and answers the lines the client had already pipelined. Over TLS the next over-limit line "
    "closed the transport a second time, which makes asyncio drop its SSL layer, and the following reply raised "
    "`AttributeError` (a traceback logged as an SMTP session exception). Nothing is written once the transport is "
    "closing now (`RelaySMTP.push`). Found by the full run (a race there: 1 session in 3,000).",
    "bare-cr": "A bare CR in the header section (`Subject: x<CR>Bcc: y`) hid a field from Relay's LF-based header "
    "handling, and the SMTP provider's line-ending repair then delivered it as a real `Bcc:` (or `X-MC-*`) field. "
    "Such messages are now refused with `554 5.6.0` (src/relay/mime/headers.py `bare_cr_in_header`, called in "
    "`RelayHandler.handle_DATA`).",
}

_EHLO = Command(b"EHLO client.test\r\n", "EHLO")
_STARTTLS = Command(b"STARTTLS\r\n", "STARTTLS")
_AUTHENTICATED = [_EHLO, _STARTTLS, _EHLO, Command(b"AUTH PLAIN " + GOOD_PLAIN.encode() + b"\r\n", "AUTH", "plain-ok")]

# Command-sequence sessions, by posture (the test's ids).
PINNED_SESSIONS: dict[str, list[list[Command | Data]]] = {
    "open": [
        [_EHLO, _STARTTLS],
        [Command(b"NO\x00OP\r\n", "", "garbage"), Command(b"X\rY\x1b[0m\r\n", "", "garbage")],
        [
            _EHLO,
            Command(b"MAIL FROM:<a\rb@box.test>\r\n", "MAIL", "ctl"),
            Command(b"MAIL FROM:<a\x00b@box.test>\r\n", "MAIL", "ctl"),
        ],
        [*[_EHLO] * 6, Command(b"MAIL " + b"X" * 600 + b"\r\n", "MAIL", "toolong")],
        [
            _EHLO,
            Command(b"MAIL FROM:<app@box.test>\r\n", "MAIL", "ok", "app@box.test"),
            Command(b"RCPT TO:<" + b"r" * 250 + b"@dest.test>\r\n", "RCPT", "long-path"),
            Command(b"RCPT TO:<you\r@dest.test>\r\n", "RCPT", "ctl"),
        ],
    ],
    "auth-tls": [
        [*_AUTHENTICATED, _STARTTLS, Command(b"NOOP\r\n", "NOOP")],
        [*_AUTHENTICATED, *[Command(b"FOO\r\n", "", "garbage", flush=False)] * 7, Command(b"NOOP\r\n", "NOOP")],
    ],
}
SESSION_FINDINGS = ["starttls-454", "starttls-nested", "reply-text", "address", "command-size", "bare-cr"]
TLS_SESSION_FINDINGS = ["starttls-nested", "closed-tls-write"]

# (envelope sender, message, recipients) for the malformed-MIME test.
PINNED_MIME = [("app@box.test", b"Subject: x\rBcc: hidden@dest.test\r\n\r\nbody\r\n", ["r0@dest.test"])]

# (provider, message) for the header-injection test.
PINNED_INJECTED = [
    ("smtp", b"From: app@x.test\r\nX-MC-Tags: a\rX-MC-Subaccount: stolen\r\nSubject: s\rBcc: v@dest.test\r\n\r\nb\r\n")
]

# Each must be refused with a 5xx and leave the session usable.
ENVELOPE_INJECTIONS = (
    b"MAIL FROM:<app@up.test>\rRCPT TO:<victim@dest.test>\r\n",
    b"MAIL FROM:<app\r@up.test>\r\n",
    b"MAIL FROM:<app@up.test> SIZE=10\rRCPT TO:<victim@dest.test>\r\n",
    b"MAIL FROM:<app@up.test>\x00RCPT TO:<victim@dest.test>\r\n",
    b'MAIL FROM:<"app\rRCPT TO:<victim@dest.test>"@up.test>\r\n',
    b"RCPT TO:<victim\r@dest.test>\r\n",
    b'RCPT TO:<"you\rBcc: victim@dest.test"@dest.test>\r\n',
    b"RCPT TO:<you@dest.test> NOTIFY=SUCCESS\rRCPT TO:<victim@dest.test>\r\n",
    b"RCPT TO:<you@dest.test>\x00RCPT TO:<victim@dest.test>\r\n",
    b"RCPT TO:<you\x00@dest.test>\r\n",
)
