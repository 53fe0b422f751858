"""The Mailgun provider against the Mailgun emulator, in-process through `httpx.ASGITransport`.

Facts under test come from Mailgun's documentation, collected in shared/notes/provider-apis.md §2 and §5:
- POST /v3/{domain}/messages.mime, basic auth `api:<key>`, multipart `to` (every recipient, Mailgun does not read
  the MIME headers) and `message` as a file upload (documentation.mailgun.com … post-v3--domain-name--messages-mime);
- https://api.mailgun.net (US) and https://api.eu.mailgun.net (EU) (the API reference's "Servers");
- 200 "Queued. Thank you." with an `id`; 400 bad parameter, 401/402/403, 404 "Domain not found", 413, 429, 5xx
  (documentation.mailgun.com/en/latest/api-intro.html status table).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from relay.clock import ManualClock
from relay.config import MailgunSettings, Workspace
from relay.errors import ProviderError
from relay.providers import OutboundMessage, Outcome, build_provider
from relay.providers.mailgun import EU_BASE_URL, MAX_MESSAGE_BYTES, US_BASE_URL, MailgunProvider
from tests.emulators.mailgun import INVALID_ADDRESS, MailgunState, create_app
from tests.emulators.server import ServedApp
from tests.support.net import free_port

DOMAIN = "mg.example.org"
KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
BASE_URL = "http://mailgun.test"

# CRLF and bare LF mixed, 8-bit bytes that are not UTF-8, a leading dot, no final newline: all must arrive as is.
MIME = (
    b"From: app@example.org\r\nTo: a@dest.test\r\nCc: c@dest.test\r\nSubject: mailgun\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n"
    b"Gr\xfc\xdfe\r\n.leading dot\nbare LF\n\xff\xfe\r\n\r\n\ttrailing"
)
# Bcc recipients are envelope-only: the delivery worker has already removed the Bcc header.
RECIPIENTS = ("a@dest.test", "c@dest.test", "hidden@dest.test")


def message(data: bytes = MIME, recipients: tuple[str, ...] = RECIPIENTS) -> OutboundMessage:
    return OutboundMessage(
        id="01MAILGUN0000000000000001", mail_from="app@example.org", recipients=recipients, data=data
    )


@pytest.fixture
def state() -> MailgunState:
    return MailgunState(api_key=KEY, domains={DOMAIN: "active", "unverified.example.org": "unverified"})


@pytest.fixture
async def make(state: MailgunState) -> AsyncIterator[Callable[..., MailgunProvider]]:
    """Build providers talking to the emulator in-process; `settings` override the MailgunSettings fields."""
    clients: list[httpx.AsyncClient] = []

    def build(domain: str = DOMAIN, clock: ManualClock | None = None, **settings: Any) -> MailgunProvider:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)))
        clients.append(client)
        config = MailgunSettings(**{"api_key": KEY, "base_url": BASE_URL, **settings})
        return MailgunProvider("mg", config, domain, client=client, clock=clock)

    yield build
    for client in clients:
        await client.aclose()


def no_key(outcome: Outcome | object) -> None:
    text = repr(outcome)
    assert KEY not in text
    assert base64.b64encode(f"api:{KEY}".encode()).decode() not in text


# --- what goes over the wire ------------------------------------------------------------------------------------------


async def test_sends_the_mime_unchanged_as_a_file_with_every_envelope_recipient_as_to(
    make: Callable[..., MailgunProvider], state: MailgunState
) -> None:
    outcome = await make().send(message())

    [delivery] = state.deliveries
    assert outcome == Outcome("sent", status="200", response="Queued. Thank you.", provider_message_id=delivery.id)
    assert delivery.id.startswith("<") and delivery.id.endswith(f"@{DOMAIN}>")
    assert delivery.mime == MIME  # byte for byte, bare LFs and 8-bit bytes included
    # One `to` field per envelope recipient, the Bcc-only one included: Mailgun never reads To/Cc/Bcc headers.
    assert delivery.to_fields == list(RECIPIENTS)
    assert delivery.to == list(RECIPIENTS)
    assert delivery.options == []
    [request] = state.requests
    assert (request.method, request.path, request.status, request.username) == (
        "POST",
        f"/v3/{DOMAIN}/messages.mime",
        200,
        "api",
    )


async def test_default_tags_and_configured_tracking_switches_become_o_options(
    make: Callable[..., MailgunProvider], state: MailgunState
) -> None:
    provider = make(default_tags=["invite", "welcome"], tracking={"opens": True, "clicks": False})
    assert (await provider.send(message())).kind == "sent"
    # Switches the operator did not set (unsubscribe) are not sent, so the domain's own setting applies.
    assert state.deliveries[0].options == [
        ("o:tag", "invite"),
        ("o:tag", "welcome"),
        ("o:tracking-opens", "yes"),
        ("o:tracking-clicks", "no"),
    ]


def test_options_over_16_kb_are_refused_when_the_provider_is_built() -> None:
    settings = MailgunSettings(api_key=KEY, default_tags=["t" * 1000] * 17)
    with pytest.raises(ProviderError, match="at most 16384"):
        MailgunProvider("mg", settings, DOMAIN)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, US_BASE_URL),
        ({"region": "us"}, "https://api.mailgun.net"),
        ({"region": "eu"}, "https://api.eu.mailgun.net"),
        ({"region": "eu", "base_url": "https://mailgun-proxy.internal:8443/"}, "https://mailgun-proxy.internal:8443"),
    ],
)
async def test_default_base_url_follows_the_region(settings: dict[str, Any], expected: str) -> None:
    assert EU_BASE_URL == "https://api.eu.mailgun.net"
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "<1@mg.example.org>", "message": "Queued. Thank you."})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        provider = MailgunProvider("mg", MailgunSettings(api_key=KEY, **settings), DOMAIN, client=client)
        assert provider.base_url == expected
        assert (await provider.send(message())).kind == "sent"
        await provider.check()
    assert [str(r.url) for r in seen] == [f"{expected}/v3/{DOMAIN}/messages.mime", f"{expected}/v3/domains/{DOMAIN}"]


# --- every Mailgun row of the notes' answer -> outcome table ------------------------------------------------------


ROWS: list[tuple[str, Callable[[MailgunState], None], str, str]] = [
    ("400 invalid parameter", lambda s: s.fail_bad_request("from parameter is missing"), "permanent", "400"),
    ("401 bare", lambda s: s.fail_unauthorized(), "auth", "401"),
    ("402 account refusal", lambda s: s.fail_payment_required(), "auth", "402"),
    ("403 forbidden", lambda s: s.fail_forbidden(), "auth", "403"),
    ("404 Domain not found", lambda s: s.fail_domain_not_found(), "auth", "404"),
    ("413 too large", lambda s: s.fail_too_large(), "permanent", "413"),
    ("429 rate limited", lambda s: s.fail_rate_limited(), "quota", "429"),
    ("500", lambda s: s.fail_server_error(500), "retry", "500"),
    ("502 not JSON", lambda s: s.fail_server_error(502), "retry", "502"),
    ("503", lambda s: s.fail_server_error(503), "retry", "503"),
]


@pytest.mark.parametrize(("row", "inject", "kind", "status"), ROWS, ids=[r[0] for r in ROWS])
async def test_each_documented_answer_lands_in_its_outcome(
    make: Callable[..., MailgunProvider],
    state: MailgunState,
    row: str,
    inject: Callable[[MailgunState], None],
    kind: str,
    status: str,
) -> None:
    inject(state)
    outcome = await make().send(message())
    assert (outcome.kind, outcome.status) == (kind, status)
    assert outcome.provider_message_id is None
    assert state.deliveries == []
    no_key(outcome)


async def test_an_invalid_recipient_is_a_permanent_400_with_mailguns_reason(
    make: Callable[..., MailgunProvider], state: MailgunState
) -> None:
    outcome = await make().send(message(recipients=("a@dest.test", "not-an-address")))
    assert outcome == Outcome("permanent", status="400", response=INVALID_ADDRESS)
    assert state.deliveries == []


async def test_a_wrong_key_is_a_bare_401_and_auth(make: Callable[..., MailgunProvider], state: MailgunState) -> None:
    provider = make(api_key="key-wrong")
    outcome = await provider.send(message())
    assert outcome == Outcome("auth", status="401", response="Forbidden")
    assert state.requests[0].username == "api"


async def test_an_unknown_domain_or_wrong_region_is_404_and_auth(make: Callable[..., MailgunProvider]) -> None:
    outcome = await make(domain="elsewhere.example.org").send(message())
    assert outcome == Outcome("auth", status="404", response="Domain not found")


async def test_a_message_over_25_mb_is_permanent_without_calling_mailgun(
    make: Callable[..., MailgunProvider], state: MailgunState
) -> None:
    big = MIME + b"x" * (MAX_MESSAGE_BYTES - len(MIME) + 1)
    outcome = await make().send(message(big))
    assert outcome.kind == "permanent"
    assert str(MAX_MESSAGE_BYTES) in outcome.response
    assert state.requests == []
    # Exactly 25 MB still goes (the emulator measures the same way).
    exact = big[:-1]
    assert (await make().send(message(exact))).kind == "sent"
    assert len(state.deliveries[0].mime) == MAX_MESSAGE_BYTES


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("30", 30.0),
        (format_datetime(datetime(2026, 1, 1, 0, 2, tzinfo=UTC), usegmt=True), 120.0),  # 2 min after the clock
        (format_datetime(datetime(2025, 12, 31, tzinfo=UTC), usegmt=True), 0.0),  # already past
        ("soon", None),
    ],
)
async def test_429_is_quota_and_honours_retry_after(
    make: Callable[..., MailgunProvider], state: MailgunState, header: str | None, seconds: float | None
) -> None:
    state.fail_rate_limited(retry_after=header)
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    outcome = await make(clock=clock).send(message())
    assert outcome == Outcome("quota", status="429", response="Too many requests", retry_after=seconds)


async def test_503_with_retry_after_is_retry_with_that_wait(
    make: Callable[..., MailgunProvider], state: MailgunState
) -> None:
    state.fail_server_error(503, retry_after="7")
    outcome = await make().send(message())
    assert (outcome.kind, outcome.status, outcome.retry_after) == ("retry", "503", 7.0)


async def test_a_200_that_is_not_a_send_is_never_taken_for_sent(make: Callable[..., MailgunProvider]) -> None:
    # A path Mailgun does not route answers 200 "Mailgun Magnificent API" and sends nothing (anymail).
    outcome = await make(base_url=f"{BASE_URL}/v2").send(message())
    assert outcome.kind == "auth"
    assert outcome.status == "200"
    assert "Mailgun Magnificent API" in outcome.response
    assert outcome.provider_message_id is None


async def test_a_timeout_is_retry(state: MailgunState) -> None:
    state.hang(2.0)
    with ServedApp(create_app(state)) as served:
        async with httpx.AsyncClient(timeout=0.3) as client:
            settings = MailgunSettings(api_key=KEY, base_url=served.url)
            outcome = await MailgunProvider("mg", settings, DOMAIN, client=client).send(message())
    assert outcome.kind == "retry"
    assert outcome.response.startswith("ReadTimeout")
    no_key(outcome)


async def test_a_connection_error_is_retry() -> None:
    settings = MailgunSettings(api_key=KEY, base_url=f"http://127.0.0.1:{free_port()}")
    provider = MailgunProvider("mg", settings, DOMAIN)
    try:
        outcome = await provider.send(message())
        health = await provider.check()
    finally:
        await provider.aclose()
    assert outcome.kind == "retry"
    assert outcome.response.startswith("ConnectError")
    assert not health.ok
    no_key(outcome)
    no_key(health)


async def test_the_key_never_reaches_an_outcome_even_when_an_answer_echoes_it(
    make: Callable[..., MailgunProvider], state: MailgunState
) -> None:
    credential = base64.b64encode(f"api:{KEY}".encode()).decode()
    state.inject(400, {"message": f"bad request with key {KEY}"})
    state.inject(502, f"upstream said Authorization: Basic {credential}")
    first = await make().send(message())
    second = await make().send(message())
    assert first.response == "bad request with key [api key]"
    assert second.response == "upstream said Authorization: Basic [credential]"
    no_key(first)
    no_key(second)


# --- check() --------------------------------------------------------------------------------------------------------


async def test_check_reads_the_domain_and_is_ok_when_active(
    make: Callable[..., MailgunProvider], state: MailgunState
) -> None:
    health = await make().check()
    assert health.ok
    assert health.detail == f"domain {DOMAIN} is active"
    assert [(r.method, r.path) for r in state.requests] == [("GET", f"/v3/domains/{DOMAIN}")]


@pytest.mark.parametrize(
    ("build", "detail"),
    [
        ({"domain": "unverified.example.org"}, "domain unverified.example.org is unverified"),
        ({"api_key": "key-wrong"}, f"domain {DOMAIN}: HTTP 401 the API key was refused; Forbidden"),
        (
            {"domain": "elsewhere.example.org", "region": "eu"},
            "domain elsewhere.example.org: HTTP 404 domain not found (is it in the EU region?); Domain not found",
        ),
    ],
)
async def test_check_is_not_ok_for_an_inactive_domain_a_wrong_key_or_an_unknown_domain(
    make: Callable[..., MailgunProvider], build: dict[str, Any], detail: str
) -> None:
    health = await make(**build).check()
    assert not health.ok
    assert health.detail == detail
    no_key(health)


async def test_check_is_not_ok_when_mailgun_fails(make: Callable[..., MailgunProvider], state: MailgunState) -> None:
    state.fail_server_error(503)
    state.inject(503, "down", endpoint="domains")
    health = await make().check()
    assert not health.ok
    assert "HTTP 503" in health.detail
    assert len(state.pending) == 1  # the messages failure was left for a send


async def test_check_is_ok_when_rate_limited(make: Callable[..., MailgunProvider], state: MailgunState) -> None:
    # A 429 storm is a quota, which sends handle by pausing the workspace; a check must not also count it as a
    # failure towards opening the breaker (tests/reliability/test_provider_faults.py saw the breaker open).
    state.inject(429, "Too many requests", endpoint="domains")
    health = await make().check()
    assert health.ok
    assert health.detail == f"domain {DOMAIN}: rate limited (HTTP 429); reachable"


# --- the registry ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workspace", "domain"),
    [
        ({"domains": ["mail.joinmednet.org", "joinmednet.org"]}, "mail.joinmednet.org"),
        ({"domains": ["*.joinmednet.org", "invite.com"]}, "invite.com"),  # wildcard patterns are skipped
        ({"domain": "legacy.org"}, "legacy.org"),
        ({"domains": ["invite.com"], "mailgun_domain": "mg.invite.com"}, "mg.invite.com"),
    ],
)
async def test_build_provider_defaults_the_domain_to_the_workspaces_first_domain(
    workspace: dict[str, Any], domain: str
) -> None:
    explicit = workspace.pop("mailgun_domain", None)
    section = {"api_key": KEY, **({"domain": explicit} if explicit else {})}
    provider = build_provider(Workspace.model_validate({"id": "mg", **workspace, "mailgun": section}))
    try:
        assert isinstance(provider, MailgunProvider)
        assert provider.kind == "mailgun"
        assert provider.domain == domain
        assert provider.base_url == US_BASE_URL
    finally:
        await provider.aclose()


def test_build_provider_refuses_a_workspace_with_only_wildcard_domains() -> None:
    workspace = Workspace.model_validate({"id": "mg", "domains": ["*.joinmednet.org"], "mailgun": {"api_key": KEY}})
    with pytest.raises(ProviderError, match='workspace "mg": mailgun needs a sending domain'):
        build_provider(workspace)


async def test_aclose_closes_only_a_client_the_provider_made() -> None:
    settings = MailgunSettings(api_key=KEY)
    async with httpx.AsyncClient() as client:
        await MailgunProvider("mg", settings, DOMAIN, client=client).aclose()
        assert not client.is_closed
    own = MailgunProvider("mg", settings, DOMAIN)
    await own.aclose()
    assert own._client.is_closed


# --- the emulator is as strict as the documentation, so a pass above means something -----------------------------


@pytest.fixture
async def raw_client(state: MailgunState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(state))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, auth=("api", KEY)) as client:
        yield client


SEND = f"/v3/{DOMAIN}/messages.mime"
FILE = {"message": ("m.eml", MIME, "message/rfc822")}


@pytest.mark.parametrize(
    ("request_kwargs", "status", "reason"),
    [
        ({"data": {"to": "a@dest.test"}, "files": FILE, "auth": None}, 401, "Forbidden"),
        ({"data": {"to": "a@dest.test"}, "files": FILE, "auth": ("postmaster", KEY)}, 401, "Forbidden"),
        ({"data": {"to": "a@dest.test", "message": MIME.decode("latin-1")}}, 400, "Content-Type must be multipart"),
        ({"data": {"to": "a@dest.test"}, "files": {"message": (None, b"not a file upload")}}, 400, "file upload"),
        ({"data": {}, "files": FILE}, 400, "to parameter is missing"),
        ({"data": {"to": "a@dest.test"}, "files": {"attachment": ("a", b"x")}}, 400, "message parameter is missing"),
        ({"data": {"to": "Ann <a@dest.test>, b@"}, "files": FILE}, 400, INVALID_ADDRESS),
        ({"data": {"to": "a@dest.test", "v:big": "x" * 16384}, "files": FILE}, 400, "limited to 16 KB"),
        (
            {"data": {"to": "a@dest.test"}, "files": {"message": ("m", b"x" * (MAX_MESSAGE_BYTES + 1))}},
            413,
            "25 MB",
        ),
    ],
)
async def test_the_emulator_refuses_what_mailgun_refuses(
    raw_client: httpx.AsyncClient, state: MailgunState, request_kwargs: dict[str, Any], status: int, reason: str
) -> None:
    kwargs = dict(request_kwargs)
    auth = kwargs.pop("auth", raw_client.auth)
    response = await raw_client.post(SEND, auth=auth, **kwargs)
    assert response.status_code == status
    assert reason in response.text
    assert state.deliveries == []


async def test_the_emulator_reads_comma_lists_and_friendly_names_and_drops_duplicates(
    raw_client: httpx.AsyncClient, state: MailgunState
) -> None:
    response = await raw_client.post(
        SEND, data={"to": ["Ann <a@dest.test>, b@dest.test", "A@dest.test"], "o:tag": "t"}, files=FILE
    )
    assert response.status_code == 200
    assert response.json() == {"id": state.deliveries[0].id, "message": "Queued. Thank you."}
    assert state.deliveries[0].to == ["a@dest.test", "b@dest.test"]
    assert state.deliveries[0].options == [("o:tag", "t")]
