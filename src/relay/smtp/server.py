"""The SMTP listener: aiosmtpd's protocol with Relay's reply texts, TLS and AUTH settings."""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from typing import Any, AnyStr

import structlog
from aiosmtpd.smtp import SMTP

from ..config import SmtpSettings
from ..metrics import Metrics
from .auth import Authenticator
from .handler import RelayHandler

__all__ = ["AUTH_ATTEMPTS_PER_SESSION", "COMMAND_CALL_LIMIT", "RelaySMTP", "start_smtp_server"]

log = structlog.get_logger(__name__)
logging.getLogger("mail.log").setLevel(logging.ERROR)  # per-command chatter and deprecation notes

# AUTH commands one session may send; the next one gets "421 4.7.0 AUTH sent too many times" and the
# connection is closed, so passwords cannot be guessed at line speed. A real client needs one.
AUTH_ATTEMPTS_PER_SESSION = 5
# aiosmtpd's per-session command budgets. "*" covers every other command and defaults to 20 in aiosmtpd,
# but one session may legitimately send thousands of messages (MAIL, RCPT, DATA, RSET, NOOP …): unlimited.
COMMAND_CALL_LIMIT: dict[str, int] = {"AUTH": AUTH_ATTEMPTS_PER_SESSION, "*": sys.maxsize}


class RelaySMTP(SMTP):
    # RFC 5321 caps lines at 1000 octets, but real HTML mail often has longer ones; refusing them would
    # bounce legitimate mail, so accept up to 64 KiB like Postfix accepts and re-wraps long lines.
    line_length_limit = 65_536

    def __init__(self, handler: Any, *args: Any, metrics: Metrics | None = None, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)
        self._metrics = metrics
        self._counted = False

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
        await super().push(text)


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


async def start_smtp_server(
    settings: SmtpSettings, handler: RelayHandler, metrics: Metrics | None = None
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    authenticator = Authenticator(settings.users)
    context = tls_context(settings)

    def protocol() -> Any:
        return RelaySMTP(
            handler,
            data_size_limit=settings.max_message_size,
            hostname=settings.hostname,
            ident="Relay ESMTP",
            tls_context=context,
            timeout=settings.timeout_seconds,
            auth_require_tls=settings.auth_require_tls,
            authenticator=authenticator,
            command_call_limit=COMMAND_CALL_LIMIT,
            loop=loop,
            metrics=metrics,
        )

    return await loop.create_server(protocol, host=settings.host, port=settings.port, reuse_address=True)
