"""SMTP replies: each aiosmtpd hook asks one question of routing or the store and answers one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..clock import Clock
from ..errors import StoreError
from ..logs import log_context
from ..metrics import Metrics
from ..mime import bare_cr_in_header, extract_metadata
from ..routing import Router, sender_domain
from ..store import Ingest, NewMessage, Suppression, new_message_id
from .auth import NetworkPolicy

__all__ = ["RelayHandler"]

log = structlog.get_logger(__name__)

# RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its angle brackets.
MAX_ADDRESS_LENGTH = 254


def _address_problem(address: str) -> str | None:
    """Why `address` can never be relayed, or None. aiosmtpd's parser keeps a CR or a NUL inside a local part: an
    SMTP provider cannot put it on its command line (so the message would be retried until it expired), and
    PostgreSQL cannot store a NUL; a path over the limit does not fit `messages.mail_from` either."""
    if len(address) > MAX_ADDRESS_LENGTH:
        return "path too long"
    if not address.isprintable():
        return "control character in the address"
    return None


class RelayHandler:
    def __init__(
        self,
        *,
        router: Router,
        ingest: Ingest,
        networks: NetworkPolicy,
        max_recipients: int,
        clock: Clock,
        suppressed: Callable[[str], Suppression | None] = lambda _address: None,
        metrics: Metrics | None = None,
    ) -> None:
        """`suppressed(address)`: the suppression listing that refuses mail to `address`, if any. It must not do
        I/O: it runs for every RCPT."""
        self.router = router
        self._ingest = ingest
        self._networks = networks
        self._max_recipients = max_recipients
        self._clock = clock
        self._suppressed = suppressed
        self._metrics = metrics

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if not session.authenticated and not self._networks.allows(session.peer):
            return "530 5.7.0 Authentication required"
        if (problem := _address_problem(address)) is not None:
            return f"501 5.1.7 Bad sender address syntax: {problem}"
        if not self.router.serves(address):
            domain = sender_domain(address)
            what = f'sender domain "{domain}" is not served by this relay' if domain else "a sender address is required"
            log.info("smtp.sender_refused", sender=address, peer=session.peer[0])
            return f"550 5.7.1 Relay access denied: {what}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return f"452 4.5.3 Too many recipients (at most {self._max_recipients} per message)"
        if (problem := _address_problem(address)) is not None:
            return f"501 5.1.3 Bad recipient address syntax: {problem}"
        if "@" not in address:
            return "550 5.1.3 Recipient address must include a domain"
        listed = self._suppressed(address)
        if listed is not None:
            # 5.7.1 (RFC 3463: "delivery not authorized, message refused … per-recipient filtering"): Relay's own
            # policy refuses, and the mailbox may well exist (a complaint, an unsubscribe, a manual entry).
            log.info("smtp.recipient_suppressed", reason=listed.reason, peer=session.peer[0])
            return f"550 5.7.1 <{address}>: {listed.refusal}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if bare_cr_in_header(envelope.original_content):  # see relay.mime.bare_cr_in_header: a field smuggled past
            return "554 5.6.0 Bare CR in the message header; header lines must end with CRLF"
        message_id = new_message_id()
        # Every line logged while this message is stored (the store's own included) names it.
        with log_context(message_id=message_id):
            try:
                reply = await self._enqueue(message_id, session, envelope)
            except Exception:  # whatever went wrong, the client keeps the message and retries: never a 5xx
                log.exception("smtp.data_failed", sender=envelope.mail_from)
                return "451 4.3.0 Local error, message not accepted; try again later"
        if self._metrics is not None and reply.startswith("250"):
            self._metrics.smtp_accepted()
        return reply

    async def _enqueue(self, message_id: str, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content
        message = NewMessage(
            id=message_id,
            mail_from=envelope.mail_from,
            rcpt_to=tuple(envelope.rcpt_tos),
            raw=raw,
            received_at=self._clock.now(),
            metadata=extract_metadata(raw),
            source="smtp",
            client_address=str(session.peer[0]),
            authenticated_user=session.auth_data if session.authenticated else None,
        )
        try:
            await self._ingest.store(message)
        except StoreError:
            return "451 4.3.0 Local storage error, message not accepted; try again later"
        log.info(
            "smtp.queued",
            message_id=message.id,
            sender=message.mail_from,
            recipients=len(message.rcpt_to),
            size=len(raw),
        )
        return f"250 2.0.0 Ok: queued as {message.id}"
