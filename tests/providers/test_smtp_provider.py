"""The upstream `smtp` provider against real aiosmtpd sinks on loopback: TLS, AUTH, pooling, reply mapping."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from relay.config import UpstreamSmtpSettings
from relay.providers import OutboundMessage, SmtpProvider
from tests.support.net import free_port
from tests.support.sink import SinkHandler, SmtpSink
from tests.support.tcp_proxy import TcpProxy

# The support sink requires AUTH without TLS when given users but no TLS context; aiosmtpd warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

BODY = b"From: app@up.test\r\nTo: you@dest.test\r\nSubject: hi\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.a leading dot\r\n"


class _TracingHandler(SinkHandler):
    """The sink's handler, also noting which connection (client address and port) each MAIL came on."""

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        with self.sink.lock:
            self.sink.peers.append(tuple(session.peer[:2]))  # type: ignore[attr-defined]
        return await super().handle_MAIL(server, session, envelope, address, options)


class TracingSink(SmtpSink):
    """SmtpSink that records the connection of every transaction and can answer AUTH with scripted replies."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peers: list[tuple[str, int]] = []
        self.auth_replies: list[str] = []
        self._controller.handler = _TracingHandler(self)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        with self.lock:
            scripted = self.auth_replies.pop(0) if self.auth_replies else None
        if scripted is not None:
            return AuthResult(success=False, handled=False, message=scripted)
        return super()._authenticate(server, session, envelope, mechanism, data)

    def connections(self) -> int:
        with self.lock:
            return len(set(self.peers))


class ImplicitTlsSink(TracingSink):
    """TLS from the first byte (port 465 style) instead of STARTTLS."""

    def __init__(self, context: ssl.SSLContext, users: dict[str, str]) -> None:
        super().__init__(users=users)
        self._controller = Controller(
            _TracingHandler(self),
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=context,
            authenticator=self._authenticate,
            auth_required=True,
            auth_require_tls=False,
        )


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def tracing_sink() -> Iterator[TracingSink]:
    with TracingSink() as server:
        yield server


def settings(port: int, **overrides: Any) -> UpstreamSmtpSettings:
    return UpstreamSmtpSettings(
        **{"host": "127.0.0.1", "port": port, "tls": "none", "timeout_seconds": 10, **overrides}
    )


def message(number: int = 1, recipients: tuple[str, ...] = ("you@dest.test",), data: bytes = BODY) -> OutboundMessage:
    return OutboundMessage(id=f"01UPSTREAM{number:016d}", mail_from="app@up.test", recipients=recipients, data=data)


@pytest.fixture
async def provider_for(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """`provider_for(settings)` builds an SmtpProvider that is closed after the test."""
    made: list[SmtpProvider] = []

    def build(upstream: UpstreamSmtpSettings) -> SmtpProvider:
        made.append(SmtpProvider("upstream", upstream))
        return made[-1]

    yield build
    for provider in made:
        await provider.aclose()


# --- TLS and AUTH ---------------------------------------------------------------------------------------------------


async def test_starttls_and_auth_with_a_trusted_ca(
    server_context: ssl.SSLContext, ca_file: Path, provider_for: Any
) -> None:
    with TracingSink(users={"relay": "s3cret"}, tls_context=server_context) as sink:  # AUTH only after STARTTLS
        provider = provider_for(
            settings(sink.port, tls="starttls", ca_file=ca_file, username="relay", password="s3cret")
        )

        outcome = await provider.send(message())

        assert outcome.kind == "sent", outcome
        assert (outcome.status, outcome.provider_message_id) == ("250", "SINK1")
        [received] = sink.received()
        assert received.authenticated_as == "relay"
        assert (received.mail_from, received.rcpt_tos, received.data) == ("app@up.test", ["you@dest.test"], BODY)
        assert (await provider.check()).ok


async def test_starttls_to_an_untrusted_certificate_is_a_retry(
    server_context: ssl.SSLContext, provider_for: Any
) -> None:
    with TracingSink(users={"relay": "s3cret"}, tls_context=server_context) as sink:
        provider = provider_for(settings(sink.port, tls="starttls", username="relay", password="s3cret"))  # no CA

        outcome = await provider.send(message())

        assert outcome.kind == "retry", outcome
        assert sink.received() == []
        assert not (await provider.check()).ok


async def test_implicit_tls_and_auth(server_context: ssl.SSLContext, ca_file: Path, provider_for: Any) -> None:
    with ImplicitTlsSink(server_context, users={"relay": "s3cret"}) as sink:
        provider = provider_for(
            settings(sink.port, tls="implicit", ca_file=ca_file, username="relay", password="s3cret")
        )

        first, second = await provider.send(message(1)), await provider.send(message(2))

        assert (first.kind, second.kind) == ("sent", "sent")
        assert [r.authenticated_as for r in sink.received()] == ["relay", "relay"]
        assert sink.connections() == 1


async def test_wrong_password_at_auth_is_an_auth_outcome(provider_for: Any) -> None:
    with TracingSink(users={"relay": "right"}) as sink:
        provider = provider_for(settings(sink.port, username="relay", password="wrong"))

        outcome = await provider.send(message())

        assert (outcome.kind, outcome.status) == ("auth", "535"), outcome
        assert sink.mail_count == 0


async def test_credentials_for_a_server_without_auth_break_the_workspace(
    tracing_sink: TracingSink, provider_for: Any
) -> None:
    provider = provider_for(settings(tracing_sink.port, username="relay", password="secret"))

    outcome = await provider.send(message())

    assert outcome.kind == "auth", outcome
    assert outcome.response == "the upstream server does not offer AUTH before TLS (check `tls` and `port`)"
    assert tracing_sink.mail_count == 0


async def test_temporary_auth_failure_454_is_a_retry(provider_for: Any) -> None:
    with TracingSink(users={"relay": "right"}) as sink:
        # aiosmtplib tries each advertised mechanism in turn, so script the answer for both (LOGIN, PLAIN).
        sink.auth_replies = ["454 4.7.0 Temporary authentication failure"] * 2
        provider = provider_for(settings(sink.port, username="relay", password="right"))

        outcome = await provider.send(message())

        assert (outcome.kind, outcome.status) == ("retry", "454"), outcome
        assert (await provider.send(message(2))).kind == "sent"  # the next connection authenticates


# --- connection pool ------------------------------------------------------------------------------------------------


async def test_connections_are_reused_across_sends(tracing_sink: TracingSink, provider_for: Any) -> None:
    provider = provider_for(settings(tracing_sink.port))

    outcomes = [await provider.send(message(n)) for n in range(1, 5)]

    assert [o.kind for o in outcomes] == ["sent"] * 4
    assert len(tracing_sink.received()) == 4
    assert tracing_sink.connections() == 1


async def test_a_refused_transaction_leaves_the_connection_reusable(
    tracing_sink: TracingSink, provider_for: Any
) -> None:
    tracing_sink.behaviour.rcpt_replies["nobody@dest.test"] = "550 5.1.1 no such user"
    provider = provider_for(settings(tracing_sink.port))

    refused = await provider.send(message(1, ("nobody@dest.test",)))
    sent = await provider.send(message(2))

    assert (refused.kind, sent.kind) == ("permanent", "sent")
    assert tracing_sink.connections() == 1


async def test_a_dropped_pooled_connection_is_replaced_transparently(
    tracing_sink: TracingSink, provider_for: Any
) -> None:
    proxy = TcpProxy("127.0.0.1", tracing_sink.port).start()
    try:
        provider = provider_for(settings(proxy.port))
        assert (await provider.send(message(1))).kind == "sent"

        # Reset the pooled connection and listen again on the same port. No await in between: the provider
        # has not seen the reset yet, so it reuses the dead connection and must notice and reconnect itself.
        proxy.cut()
        proxy.start()
        outcome = await provider.send(message(2))

        assert outcome.kind == "sent", outcome
        assert len(tracing_sink.received()) == 2
        assert tracing_sink.connections() == 2
    finally:
        proxy.cut()


# --- reply mapping --------------------------------------------------------------------------------------------------


async def test_451_after_data_is_a_retry(tracing_sink: TracingSink, provider_for: Any) -> None:
    tracing_sink.behaviour.data_replies.append("451 4.3.0 try later")

    outcome = await provider_for(settings(tracing_sink.port)).send(message())

    assert (outcome.kind, outcome.status, outcome.response) == ("retry", "451", "4.3.0 try later")
    assert tracing_sink.received() == []


async def test_550_511_at_rcpt_is_permanent_with_the_rejected_recipient(
    tracing_sink: TracingSink, provider_for: Any
) -> None:
    tracing_sink.behaviour.rcpt_replies["nobody@dest.test"] = "550 5.1.1 no such user"

    outcome = await provider_for(settings(tracing_sink.port)).send(message(recipients=("nobody@dest.test",)))

    assert outcome.kind == "permanent", outcome
    assert outcome.rejected_recipients == {"nobody@dest.test": "550 5.1.1 no such user"}
    assert outcome.retry_recipients == ()
    assert tracing_sink.data_count == 0


async def test_mixed_rcpt_replies_send_to_the_accepted_and_retry_the_deferred(
    tracing_sink: TracingSink, provider_for: Any
) -> None:
    tracing_sink.behaviour.rcpt_replies["later@dest.test"] = "450 4.2.0 mailbox busy"

    outcome = await provider_for(settings(tracing_sink.port)).send(
        message(recipients=("later@dest.test", "now@dest.test"))
    )

    assert outcome.kind == "sent", outcome
    assert outcome.retry_recipients == ("later@dest.test",)
    assert outcome.rejected_recipients == {}
    [received] = tracing_sink.received()
    assert received.rcpt_tos == ["now@dest.test"]


async def test_one_unknown_one_accepted_recipient_is_sent_with_the_rejection(
    tracing_sink: TracingSink, provider_for: Any
) -> None:
    tracing_sink.behaviour.rcpt_replies["nobody@dest.test"] = "550 5.1.1 no such user"

    outcome = await provider_for(settings(tracing_sink.port)).send(
        message(recipients=("nobody@dest.test", "you@dest.test"))
    )

    assert outcome.kind == "sent", outcome
    assert outcome.rejected_recipients == {"nobody@dest.test": "550 5.1.1 no such user"}
    assert outcome.retry_recipients == ()
    assert [r.rcpt_tos for r in tracing_sink.received()] == [["you@dest.test"]]


@pytest.mark.parametrize(
    ("where", "reply", "kind"),
    [
        ("mail", "454 Throttling failure: Maximum sending rate exceeded.", "quota"),
        ("data", "454 Throttling failure: Daily message quota exceeded.", "quota"),
        ("data", "550 5.4.5 Daily user sending quota exceeded.", "quota"),
        ("mail", "550 5.7.1 Daily SMTP relay limit exceeded for customer.", "quota"),
        ("data", "552 5.3.4 Message size exceeds fixed maximum message size", "permanent"),
        ("mail", "530 5.7.0 Authentication Required", "auth"),
        ("mail", "451 4.3.0 try later", "retry"),
    ],
)
async def test_replies_map_to_outcomes(
    tracing_sink: TracingSink, provider_for: Any, where: str, reply: str, kind: str
) -> None:
    behaviour = tracing_sink.behaviour
    (behaviour.mail_replies if where == "mail" else behaviour.data_replies).append(reply)

    outcome = await provider_for(settings(tracing_sink.port)).send(message())

    assert (outcome.kind, outcome.status) == (kind, reply[:3]), outcome
    assert tracing_sink.received() == []


async def test_quota_refusal_at_rcpt_stops_the_transaction(tracing_sink: TracingSink, provider_for: Any) -> None:
    tracing_sink.behaviour.rcpt_replies["you@dest.test"] = "450 4.2.1 Peak SMTP relay limit exceeded for customer."

    outcome = await provider_for(settings(tracing_sink.port)).send(message(recipients=("you@dest.test", "b@dest.test")))

    assert outcome.kind == "quota", outcome
    assert tracing_sink.data_count == 0


async def test_connection_refused_is_a_retry(provider_for: Any) -> None:
    provider = provider_for(settings(free_port()))  # nothing listens there

    outcome = await provider.send(message())

    assert outcome.kind == "retry", outcome
    assert not (await provider.check()).ok
