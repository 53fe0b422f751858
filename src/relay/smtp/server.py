"""The SMTP listener: aiosmtpd's protocol with Relay's reply texts, TLS and AUTH settings."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import ssl
import sys
from typing import Any, AnyStr, cast

import structlog
from aiosmtpd.smtp import SMTP, syntax

from ..config import SmtpSettings
from ..metrics import Metrics
from .auth import Authenticator
from .handler import RelayHandler

__all__ = ["AUTH_ATTEMPTS_PER_SESSION", "COMMAND_CALL_LIMIT", "ProtocolFactory", "RelaySMTP", "start_smtp_server"]

log = structlog.get_logger(__name__)
logging.getLogger("mail.log").setLevel(logging.ERROR)  # per-command chatter and deprecation notes

# AUTH commands one session may send; the next one gets "421 4.7.0 AUTH sent too many times" and the
# connection is closed, so passwords cannot be guessed at line speed. A real client needs one.
AUTH_ATTEMPTS_PER_SESSION = 5
# aiosmtpd's per-session command budgets. "*" covers every other command and defaults to 20 in aiosmtpd,
# but one session may legitimately send thousands of messages (MAIL, RCPT, DATA, RSET, NOOP …): unlimited.
COMMAND_CALL_LIMIT: dict[str, int] = {"AUTH": AUTH_ATTEMPTS_PER_SESSION, "*": sys.maxsize}


# RFC 5321 §4.2 and §4.5.3.1.5: a reply line is printable US-ASCII or HT, at most 512 octets with its CRLF.
_REPLY_TEXT = re.compile(r"[\t\x20-\x7e]{0,510}")
_NOT_REPLY_TEXT = re.compile(r"[^\t\x20-\x7e]")


class _CommandSizeLimits(dict[str, int]):
    """Command line limits that never change: 512 octets (RFC 5321 §4.5.3.1.4), MAIL 26 more for SIZE (RFC 1870).

    aiosmtpd keeps its limits in one dict shared by every connection, clears it when a connection opens and adds 26
    to MAIL on each EHLO: in a long-running server the MAIL limit grew with every EHLO anywhere (after 30 EHLOs a
    700-octet MAIL line was taken), and each new connection reset it under the sessions in progress.
    """

    def __missing__(self, key: str) -> int:
        return SMTP.command_size_limit

    def __setitem__(self, key: str, value: int) -> None:
        pass

    def clear(self) -> None:
        pass


class RelaySMTP(SMTP):
    # RFC 5321 caps lines at 1000 octets, but real HTML mail often has longer ones; refusing them would
    # bounce legitimate mail, so accept up to 64 KiB like Postfix accepts and re-wraps long lines.
    line_length_limit = 65_536
    command_size_limits = _CommandSizeLimits({"MAIL": SMTP.command_size_limit + 26})

    def __init__(self, handler: Any, *args: Any, metrics: Metrics | None = None, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)
        self._metrics = metrics
        self._counted = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's own parse, remembered: it runs the email package's RFC 5322 parser (and defines a class) on
        # every MAIL and RCPT, a sixth of a session's CPU, for addresses that mostly repeat.
        address, rest = _parse_address(arg)
        if address and self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this again after STARTTLS, on the same connection: count the connection once.
        if self._metrics is not None and not self._counted:
            self._counted = True
            self._metrics.smtp_opened()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._metrics is not None and self._counted:
            self._counted = False
            self._metrics.smtp_closed()
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if self.transport is None or self.transport.is_closing():
            # aiosmtpd reads on after closing a session over a limit (502, 421) and answers lines already received:
            # nobody reads those replies, and a TLS transport closed twice drops its SSL layer, so a write would raise.
            return
        text = status.decode() if isinstance(status, bytes) else str(status)
        code = text[:3]
        if self._metrics is not None and code.isdigit() and code[0] in "45" and text[3:4] in (" ", ""):
            # The final line of every refusal, whichever part of the server or handler wrote it; the code only
            # (never the text, which may quote an address), so the label takes a few dozen values at most.
            self._metrics.smtp_rejected(code)
        if text.startswith("421 4.7.0 ") and text.endswith(" sent too many times"):
            peer = self.session.peer if self.session is not None else None
            log.warning(
                "smtp.command_limit",
                peer=str(peer[0]) if isinstance(peer, tuple) and peer else None,
                command=text.split()[2],
            )
        elif text.startswith("552 Error"):  # aiosmtpd's size refusals carry no enhanced status code
            text = "552 5.3.4 Message size exceeds fixed maximum message size"
        if not _REPLY_TEXT.fullmatch(text):  # aiosmtpd echoes client bytes (a NUL, a CR) in some replies
            text = _NOT_REPLY_TEXT.sub("?", text)[:510]
        await super().push(text)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        # aiosmtpd answers 454 (temporary) without a certificate, though no retry can succeed; and inside TLS it
        # answers 220 and nests a second TLS layer, which kills the session (RFC 3207 §4: one negotiation only).
        if not self.tls_context:
            await self.push("502 5.5.1 STARTTLS not available")
        elif self._tls_protocol is not None:
            await self.push("503 5.5.1 TLS already active")
        else:
            await super().smtp_STARTTLS(arg)


@functools.lru_cache(maxsize=8192)
def _parse_address(arg: str) -> tuple[str | None, str | None]:
    """`SMTP._getaddr` without the local-part limit (a setting, applied by the caller): a pure function of `arg`."""
    parse: Any = SMTP._getaddr
    return cast(tuple[str | None, str | None], parse(_NO_LIMIT, arg))


class _NoLimit:
    local_part_limit = 0


_NO_LIMIT = _NoLimit()


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


class ProtocolFactory:
    """Builds one `RelaySMTP` per connection, without aiosmtpd's per-connection introspection.

    aiosmtpd's `SMTP.__init__` rebuilds its command, hook and AUTH tables with `inspect.getmembers` and `dir` on
    every connection — about a tenth of the CPU of a one-message session. The settings are the same for every
    connection, so the first instance is built by that `__init__` and kept as a template; each connection then
    gets a copy of its attributes with the parts that belong to one connection made afresh: the stream
    protocol's state, and the tables' methods bound to the new instance. `tests/smtp/test_protocol_factory.py`
    checks a copy against a freshly initialised instance, attribute by attribute.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._template: dict[str, Any] | None = None
        self._tables: dict[str, dict[str, Any]] = {}

    def __call__(self) -> RelaySMTP:
        if self._template is None:
            first = RelaySMTP(**self._kwargs)
            self._template = {name: value for name, value in vars(first).items() if name not in _PER_CONNECTION}
            self._tables = {
                table: getattr(first, table) for table in ("_smtp_methods", "_handle_hooks", "_auth_methods")
            }
            return first
        protocol: RelaySMTP = RelaySMTP.__new__(RelaySMTP)
        protocol.__dict__.update(self._template)
        asyncio.StreamReaderProtocol.__init__(
            protocol,
            asyncio.StreamReader(loop=protocol.loop, limit=protocol.line_length_limit),
            client_connected_cb=protocol._cb_client_connected,
            loop=protocol.loop,
        )
        handler = protocol.event_handler
        protocol._smtp_methods = {
            name: getattr(protocol, method.__name__) for name, method in self._methods("_smtp_methods")
        }
        protocol._handle_hooks = {
            name: getattr(handler, hook.__name__) for name, hook in self._methods("_handle_hooks")
        }
        protocol._auth_methods = {
            name: type(entry)(
                getattr(protocol if entry.is_builtin else handler, entry.method.__name__), entry.is_builtin
            )
            for name, entry in self._methods("_auth_methods")
        }
        return protocol

    def _methods(self, table: str) -> Any:
        return self._tables[table].items()


# Built afresh for each connection rather than copied from the template: the asyncio stream protocol's state
# (StreamReaderProtocol.__init__ and its flow-control base) and the three method tables.
_PER_CONNECTION = frozenset(
    {
        "_loop",
        "_paused",
        "_drain_waiters",
        "_connection_lost",
        "_stream_reader_wr",
        "_source_traceback",
        "_strong_reader",
        "_reject_connection",
        "_stream_writer",
        "_task",
        "_transport",
        "_client_connected_cb",
        "_over_ssl",
        "_closed",
        "_smtp_methods",
        "_handle_hooks",
        "_auth_methods",
    }
)


async def start_smtp_server(
    settings: SmtpSettings, handler: RelayHandler, metrics: Metrics | None = None
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    factory = ProtocolFactory(
        handler=handler,
        data_size_limit=settings.max_message_size,
        hostname=settings.hostname,
        ident="Relay ESMTP",
        tls_context=tls_context(settings),
        timeout=settings.timeout_seconds,
        auth_require_tls=settings.auth_require_tls,
        authenticator=Authenticator(settings.users),
        command_call_limit=COMMAND_CALL_LIMIT,
        loop=loop,
        metrics=metrics,
    )
    return await loop.create_server(factory, host=settings.host, port=settings.port, reuse_address=True)
