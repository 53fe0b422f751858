"""Upstream SMTP provider (aiosmtplib): STARTTLS or implicit TLS, AUTH, reused connections."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiosmtplib

from ..config import UpstreamSmtpSettings
from .smtp_replies import classify_reply
from .types import Health, OutboundMessage, Outcome, OutcomeKind

__all__ = ["SmtpProvider"]

_IDLE_SECONDS = 30.0  # close a pooled connection unused this long rather than trust it


class _RejectedError(Exception):
    """The transaction ended with an outcome before any data was accepted."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class _StaleConnectionError(Exception):
    """A pooled connection turned out to be closed at MAIL, before any of the message was sent."""


class SmtpProvider:
    kind = "smtp"

    def __init__(self, workspace_id: str, settings: UpstreamSmtpSettings) -> None:
        self.workspace_id = workspace_id
        self.concurrency = settings.max_connections
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    async def send(self, message: OutboundMessage) -> Outcome:
        async with self._slots:
            client: aiosmtplib.SMTP | None = None
            try:
                client, reused = await self._acquire()
                try:
                    outcome = await self._transaction(client, message, reused=reused)
                except _StaleConnectionError:
                    # The server had dropped this pooled connection before our MAIL: nothing of the message
                    # reached it, so one try on a fresh connection cannot deliver it twice.
                    _close(client)
                    client, reused = await self._acquire(fresh=True)
                    outcome = await self._transaction(client, message, reused=False)
            except _RejectedError as rejected:
                return self._release(client, rejected.outcome)
            except (aiosmtplib.SMTPException, OSError) as exc:
                _close(client)
                return _exception_outcome(exc)
            except BaseException:  # cancelled mid-transaction: the connection is in an unknown state
                _close(client)
                raise
            return self._release(client, outcome)

    async def check(self) -> Health:
        try:
            client = await self._connect()
        except (aiosmtplib.SMTPException, OSError) as exc:
            outcome = _exception_outcome(exc)
            detail = f"{outcome.status} {outcome.response}".strip() if outcome.status else outcome.response
            return Health(False, detail, auth=outcome.kind == "auth")
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
        return Health(True, "connected" + (" and authenticated" if self._settings.username else ""))

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()

    async def _acquire(self, *, fresh: bool = False) -> tuple[aiosmtplib.SMTP, bool]:
        now = time.monotonic()
        while self._idle and not fresh:
            client, since = self._idle.pop()
            if client.is_connected and now - since < _IDLE_SECONDS:
                return client, True
            _close(client)
        return await self._connect(), False

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self._settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            use_tls=s.tls == "implicit",
            start_tls=s.tls == "starttls",
            validate_certs=s.tls_verify,
            cert_bundle=str(s.ca_file) if s.ca_file else None,
            timeout=s.timeout_seconds,
            local_hostname=s.helo_name,
        )
        await client.connect()
        if s.username is not None and s.password is not None:
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()
            if not client.supports_extension("auth"):
                hint = "" if client.get_transport_info("sslcontext") else " before TLS (check `tls` and `port`)"
                _close(client)
                raise _RejectedError(Outcome("auth", response=f"the upstream server does not offer AUTH{hint}"))
            try:
                await client.login(s.username, s.password.get_secret_value())
            except aiosmtplib.SMTPAuthenticationError as exc:
                _close(client)
                # 454 4.7.0 is a temporary failure (retry) and SES throttles with 454 (quota); a refusal that
                # would be permanent for a message means the workspace's credentials or settings are wrong.
                outcome = _reply_outcome(exc.code, exc.message)
                if outcome.kind == "permanent":
                    outcome = Outcome("auth", outcome.status, outcome.response)
                raise _RejectedError(outcome) from None
        return client

    async def _transaction(self, client: aiosmtplib.SMTP, message: OutboundMessage, *, reused: bool) -> Outcome:
        options = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(message.data)}")
        if client.supports_extension("8bitmime") and not message.data.isascii():
            options.append("BODY=8BITMIME")
        try:
            await client.mail(message.mail_from, options=options)
        except aiosmtplib.SMTPServerDisconnected:
            if reused:
                raise _StaleConnectionError from None
            raise
        except aiosmtplib.SMTPSenderRefused as exc:
            await _reset(client)
            raise _RejectedError(_reply_outcome(exc.code, exc.message)) from None
        accepted, temporary, rejected = [], [], {}
        refusal: Outcome | None = None
        for recipient in message.recipients:
            try:
                await client.rcpt(recipient)
                accepted.append(recipient)
            except aiosmtplib.SMTPRecipientRefused as exc:
                outcome = _reply_outcome(exc.code, exc.message)
                if outcome.kind in ("auth", "quota"):
                    refusal = refusal or outcome
                if outcome.kind == "permanent":
                    rejected[recipient] = f"{exc.code} {exc.message}"
                else:
                    temporary.append(recipient)
        if refusal is not None or not accepted:
            await _reset(client)
            if refusal is not None:
                raise _RejectedError(refusal)
            kind: OutcomeKind = "retry" if temporary else "permanent"
            detail = "; ".join(f"{r}: {why}" for r, why in rejected.items()) or "recipients refused for now"
            raise _RejectedError(
                Outcome(kind, response=detail, retry_recipients=tuple(temporary), rejected_recipients=rejected)
            )
        try:
            response = await client.data(message.data)
        except aiosmtplib.SMTPDataError as exc:
            await _reset(client)
            raise _RejectedError(_reply_outcome(exc.code, exc.message)) from None
        return Outcome(
            "sent",
            status=str(response.code),
            response=response.message,
            provider_message_id=_queue_id(response.message),
            retry_recipients=tuple(temporary),
            rejected_recipients=rejected,
        )

    def _release(self, client: aiosmtplib.SMTP | None, outcome: Outcome) -> Outcome:
        if client is not None and client.is_connected:
            self._idle.append((client, time.monotonic()))
        return outcome


def _reply_outcome(code: int, text: str) -> Outcome:
    return Outcome(classify_reply(code, text), status=str(code), response=text)


def _exception_outcome(exc: BaseException) -> Outcome:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _reply_outcome(exc.code, exc.message)
    return Outcome("retry", response=f"{type(exc).__name__}: {exc}")


async def _reset(client: aiosmtplib.SMTP) -> None:
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        _close(client)


def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()


def _queue_id(reply: str) -> str | None:
    """Postfix and most MTAs end a 250 after DATA with `queued as <id>`."""
    marker = "queued as "
    index = reply.lower().rfind(marker)
    if index == -1:
        return None
    rest = reply[index + len(marker) :].split()
    return rest[0] if rest else None
