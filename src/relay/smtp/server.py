"""The SMTP listener: aiosmtpd's protocol with Relay's reply texts, TLS and AUTH settings."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from ..config import SmtpSettings
from .auth import Authenticator
from .handler import RelayHandler

__all__ = ["RelaySMTP", "start_smtp_server"]

logging.getLogger("mail.log").setLevel(logging.ERROR)  # per-command chatter and deprecation notes


class RelaySMTP(SMTP):
    # RFC 5321 caps lines at 1000 octets, but real HTML mail often has longer ones; refusing them would
    # bounce legitimate mail, so accept up to 64 KiB like Postfix accepts and re-wraps long lines.
    line_length_limit = 65_536

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("552 Error"):  # aiosmtpd's size refusals carry no enhanced status code
            text = "552 5.3.4 Message size exceeds fixed maximum message size"
        await super().push(text)


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


async def start_smtp_server(settings: SmtpSettings, handler: RelayHandler) -> asyncio.Server:
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
            loop=loop,
        )

    return await loop.create_server(protocol, host=settings.host, port=settings.port, reuse_address=True)
