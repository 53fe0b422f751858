"""An upstream SMTP server for tests (aiosmtpd in a thread) that records what it receives and can be
told to answer with failures, like KumoMTA's test sink.

    sink.data_replies = ["451 4.3.0 try later", "451 4.3.0 try later"]   # the next two DATA answers
    sink.rcpt_replies["nobody@example.org"] = "550 5.1.1 no such user"  # per recipient, every time
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from .net import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    peer: str
    authenticated_as: str | None

    @property
    def message_id(self) -> str | None:
        return message_from_bytes(self.data).get("Message-ID")


@dataclass
class SinkBehaviour:
    data_replies: list[str] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    mail_replies: list[str] = field(default_factory=list)
    hold_data: threading.Event | None = None  # while set-able and unset, DATA never answers


class SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        with self.sink.lock:
            self.sink.mail_count += 1
            if self.sink.behaviour.mail_replies:
                return self.sink.behaviour.mail_replies.pop(0)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = self.sink.behaviour.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import asyncio

        hold = self.sink.behaviour.hold_data
        if hold is not None:
            while not hold.is_set():
                await asyncio.sleep(0.05)
        with self.sink.lock:
            self.sink.data_count += 1
            if self.sink.behaviour.data_replies:
                return self.sink.behaviour.data_replies.pop(0)
            self.sink.messages.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=envelope.original_content,
                    peer=str(session.peer[0]),
                    authenticated_as=session.auth_data if session.authenticated else None,
                )
            )
            number = len(self.sink.messages)
        return f"250 2.0.0 Ok: queued as SINK{number}"


class SmtpSink:
    def __init__(
        self, *, users: dict[str, str] | None = None, tls_context: ssl.SSLContext | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.messages: list[Received] = []
        self.mail_count = 0
        self.data_count = 0
        self.behaviour = SinkBehaviour()
        self.users = users or {}
        kwargs: dict[str, Any] = {}
        if users is not None:
            kwargs.update(
                authenticator=self._authenticate, auth_require_tls=tls_context is not None, auth_required=True
            )
        if tls_context is not None:
            kwargs["tls_context"] = tls_context
        self._controller = Controller(
            SinkHandler(self), hostname="127.0.0.1", port=self.port, data_size_limit=64 * 1024 * 1024, **kwargs
        )

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword) and self.users.get(data.login.decode()) == data.password.decode():
            return AuthResult(success=True, auth_data=data.login.decode())
        return AuthResult(success=False, handled=False)

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def received(self) -> list[Received]:
        with self.lock:
            return list(self.messages)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
