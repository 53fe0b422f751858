"""The Gmail provider against the Gmail emulator, in-process (httpx.ASGITransport) with a ManualClock.

Sources: developers.google.com/identity/protocols/oauth2/service-account (the JWT-bearer grant and its
errors), developers.google.com/gmail/api/guides/uploads (media upload) and /guides/handle-errors (error body and
reasons), and ../shared/notes/provider-apis.md §1 and §5 (the answer → outcome table these tests walk row by row).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.auth.jwt
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.auth.crypt import RSASigner

from relay.clock import ManualClock
from relay.config import GmailSettings, Workspace
from relay.errors import ProviderError
from relay.mime import remove_fields
from relay.providers import OutboundMessage, build_provider
from relay.providers.gmail import GMAIL_SEND_SCOPE, MAX_UPLOAD_BYTES, GmailProvider, with_bcc
from tests.emulators.gmail import JWT_BEARER, GmailState, ServiceAccount, create_app

DOMAIN = "joinmednet.org"
SENDER = "app@joinmednet.org"
TOKEN_URI = "https://oauth2.emulator.test/token"
BASE_URL = "https://gmail.emulator.test"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MESSAGE = (
    b"From: App <app@joinmednet.org>\r\nTo: Someone <to@example.org>\r\nCc: cc@example.org\r\n"
    b"Subject: hello\r\nMessage-ID: <1@joinmednet.org>\r\n\r\nbody line\r\n.leading dot\r\n"
)


@pytest.fixture(scope="session")
def account() -> ServiceAccount:
    return ServiceAccount.generate()


@dataclass
class Gmail:
    state: GmailState
    clock: ManualClock
    client: httpx.AsyncClient
    account: ServiceAccount

    def provider(self, *, domains: tuple[str, ...] = (DOMAIN,), **settings: Any) -> GmailProvider:
        return GmailProvider(
            "gw", key_settings(self.account, **settings), domains=domains, client=self.client, clock=self.clock
        )

    def claims(self) -> list[dict[str, Any] | None]:
        return [call.claims for call in self.state.token_calls]


def key_settings(account: ServiceAccount, **settings: Any) -> GmailSettings:
    return GmailSettings(service_account_json=json.dumps(account.key_file(TOKEN_URI)), base_url=BASE_URL, **settings)


@pytest.fixture
async def gmail(account: ServiceAccount) -> AsyncIterator[Gmail]:
    clock = ManualClock(START)
    state = GmailState([account], domains=[DOMAIN], clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state))) as client:
        yield Gmail(state, clock, client, account)


def outbound(
    data: bytes = MESSAGE, recipients: tuple[str, ...] = ("to@example.org", "cc@example.org"), sender: str = SENDER
) -> OutboundMessage:
    return OutboundMessage(id="01GMAILTEST0000000000000000", mail_from=sender, recipients=recipients, data=data)


# --- the happy path and what the emulator saw -------------------------------------------------------------------------


async def test_a_send_mints_a_delegated_token_and_uploads_the_exact_bytes(gmail: Gmail) -> None:
    outcome = await gmail.provider().send(outbound())

    assert outcome.kind == "sent" and outcome.status == "200"
    [stored] = gmail.state.messages
    assert outcome.provider_message_id == stored.id
    assert stored.raw == MESSAGE and stored.delivered == MESSAGE and stored.user == SENDER
    [token_call] = gmail.state.token_calls
    assert token_call.form["grant_type"] == JWT_BEARER
    assert token_call.header == {"alg": "RS256", "typ": "JWT", "kid": gmail.account.key_id}
    now = int(START.timestamp())
    assert token_call.claims == {
        "iss": gmail.account.client_email,
        "sub": SENDER,
        "scope": GMAIL_SEND_SCOPE,
        "aud": TOKEN_URI,
        "iat": now,
        "exp": now + 3600,
    }
    [send_call] = gmail.state.send_calls
    assert (send_call.path, send_call.query) == ("/upload/gmail/v1/users/me/messages/send", "uploadType=media")
    assert send_call.content_type == "message/rfc822"
    assert send_call.authorization.startswith("Bearer ya29.emu-")
    assert gmail.state.issued[send_call.authorization[7:]].subject == SENDER


# --- notes §5, every Gmail row ---------------------------------------------------------------------------------------

RATE_TEXT = "User-rate limit exceeded.  Retry after 2026-03-02T09:15:00.000Z (Mail sending)"

TABLE: list[tuple[str, Callable[[GmailState], None], str, str, float | None]] = [
    # (row, inject, outcome, status, retry_after)
    (
        "token 401 unauthorized_client",
        lambda s: s.fail_token(401, "unauthorized_client", "Client is unauthorized"),
        "auth",
        "401",
        None,
    ),
    (
        "token 400 invalid_grant",
        lambda s: s.fail_token(400, "invalid_grant", "Invalid JWT Signature."),
        "auth",
        "400",
        None,
    ),
    (
        "token 400 invalid_grant, clock skew",
        lambda s: s.fail_token(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe",
        ),
        "auth",
        "400",
        None,
    ),
    (
        "token 500 internal_failure",
        lambda s: s.fail_token(500, "internal_failure", "Backend Error"),
        "retry",
        "500",
        None,
    ),
    ("token 503", lambda s: s.fail_token(503, "", "Service Unavailable"), "retry", "503", None),
    (
        "send 401 authError after one refresh",
        lambda s: s.fail_send(401, "authError", "Invalid Credentials", times=2),
        "auth",
        "401",
        None,
    ),
    (
        "send 400 failedPrecondition",
        lambda s: s.fail_send(400, "failedPrecondition", "Mail service not enabled"),
        "auth",
        "400",
        None,
    ),
    (
        "send 403 domainPolicy",
        lambda s: s.fail_send(403, "domainPolicy", "The domain administrators have disabled Gmail apps."),
        "auth",
        "403",
        None,
    ),
    (
        "send 403 accessNotConfigured",
        lambda s: s.fail_send(403, "accessNotConfigured", "Gmail API has not been used in project"),
        "auth",
        "403",
        None,
    ),
    (
        "send 403 insufficient scope",
        lambda s: s.fail_send(403, "insufficientPermissions", "Request had insufficient authentication scopes."),
        "auth",
        "403",
        None,
    ),
    (
        "send 403 userRateLimitExceeded",
        lambda s: s.fail_send(403, "userRateLimitExceeded", "User Rate Limit Exceeded", domain="usageLimits"),
        "quota",
        "403",
        None,
    ),
    (
        "send 403 rateLimitExceeded",
        lambda s: s.fail_send(403, "rateLimitExceeded", "Rate Limit Exceeded", domain="usageLimits"),
        "quota",
        "403",
        None,
    ),
    (
        "send 403 dailyLimitExceeded",
        lambda s: s.fail_send(403, "dailyLimitExceeded", "Daily Limit Exceeded", domain="usageLimits"),
        "quota",
        "403",
        None,
    ),
    (
        "send 429 Retry after <time>",
        lambda s: s.fail_send(429, "rateLimitExceeded", RATE_TEXT, domain="usageLimits"),
        "quota",
        "429",
        900.0,
    ),
    (
        "send 429 Retry-After header first",
        lambda s: s.fail_send(429, "rateLimitExceeded", RATE_TEXT, headers={"Retry-After": "120"}),
        "quota",
        "429",
        120.0,
    ),
    (
        "send 429 without a time",
        lambda s: s.fail_send(429, "rateLimitExceeded", "Too many concurrent requests for user"),
        "quota",
        "429",
        None,
    ),
    (
        "send 400 invalidArgument",
        lambda s: s.fail_send(400, "invalidArgument", "Invalid To header"),
        "permanent",
        "400",
        None,
    ),
    ("send 400 badRequest", lambda s: s.fail_send(400, "badRequest", "Bad Request"), "permanent", "400", None),
    ("send 413", lambda s: s.fail_send(413, "uploadTooLarge", "Request Entity Too Large"), "permanent", "413", None),
    ("send 500 backendError", lambda s: s.fail_send(500, "backendError", "Backend Error"), "retry", "500", None),
    ("send 502", lambda s: s.fail_send(502, "backendError", "Bad Gateway"), "retry", "502", None),
    ("send 503", lambda s: s.fail_send(503, "backendError", "Service unavailable"), "retry", "503", None),
    ("send 504", lambda s: s.fail_send(504, "backendError", "Deadline exceeded"), "retry", "504", None),
]


@pytest.mark.parametrize(
    ("inject", "kind", "status", "retry_after"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE]
)
async def test_each_documented_answer_lands_in_its_outcome(
    gmail: Gmail, inject: Callable[[GmailState], None], kind: str, status: str, retry_after: float | None
) -> None:
    inject(gmail.state)
    outcome = await gmail.provider().send(outbound())
    assert (outcome.kind, outcome.status, outcome.retry_after) == (kind, status, retry_after), outcome.response
    assert gmail.state.messages == []


async def test_a_401_refreshes_the_token_once_then_sends(gmail: Gmail) -> None:
    gmail.state.fail_send(401, "authError", "Invalid Credentials")
    outcome = await gmail.provider().send(outbound())
    assert outcome.kind == "sent"
    first, second = (call.authorization for call in gmail.state.send_calls)
    assert first != second
    assert len(gmail.state.token_calls) == 2


async def test_a_401_twice_mints_exactly_one_fresh_token(gmail: Gmail) -> None:
    gmail.state.fail_send(401, "authError", "Invalid Credentials", times=5)
    outcome = await gmail.provider().send(outbound())
    assert outcome.kind == "auth"
    assert (len(gmail.state.token_calls), len(gmail.state.send_calls)) == (2, 2)


async def test_the_emulator_refusals_themselves_map_too(gmail: Gmail) -> None:
    """Not injected: an unknown user is invalid_grant, a scope outside the delegation is unauthorized_client.

    An unknown user fails only that message (permanent); the workspace's key and grant are fine.
    """
    provider = gmail.provider()
    unknown = await provider.send(outbound(sender="app@not-delegated.example"))
    assert (unknown.kind, unknown.status) == ("permanent", "400") and "invalid_grant" in unknown.response
    gmail.state.granted_scopes = frozenset({"https://www.googleapis.com/auth/gmail.readonly"})
    refused = await provider.send(outbound())
    assert (refused.kind, refused.status) == ("auth", "401") and "unauthorized_client" in refused.response
    no_recipient = outbound(data=b"From: app@joinmednet.org\r\nSubject: x\r\n\r\nbody\r\n", recipients=())
    gmail.state.granted_scopes = frozenset({GMAIL_SEND_SCOPE})
    missing = await provider.send(no_recipient)
    assert (missing.kind, missing.status) == ("permanent", "400") and "Recipient address required" in missing.response


async def test_over_the_upload_limit_is_refused_before_any_request(gmail: Gmail) -> None:
    header = b"From: app@joinmednet.org\r\nTo: to@example.org\r\n\r\n"
    big = header + b"x" * (MAX_UPLOAD_BYTES - len(header) + 1)
    outcome = await gmail.provider().send(outbound(data=big, recipients=("to@example.org",)))
    assert (outcome.kind, outcome.status) == ("permanent", "413")
    assert gmail.state.token_calls == [] and gmail.state.send_calls == []


async def test_more_than_100_recipients_is_refused_before_any_request(gmail: Gmail) -> None:
    """Gmail takes at most 100 recipients per message through the API, and the headers decide delivery."""
    recipients = tuple(f"r{n}@example.org" for n in range(101))
    outcome = await gmail.provider().send(outbound(recipients=recipients))
    assert outcome.kind == "permanent"
    assert outcome.response == "103 recipients; the Gmail API takes at most 100"  # 101 + To + Cc
    assert gmail.state.token_calls == [] and gmail.state.send_calls == []
    hundred = await gmail.provider().send(outbound(recipients=recipients[:98]))  # + To and Cc in MESSAGE = 100
    assert hundred.kind == "sent"


class _Broken(httpx.AsyncBaseTransport):
    """Raises `error` for requests whose path contains `where`, passes the rest to the emulator."""

    def __init__(self, inner: httpx.AsyncBaseTransport, error: type[httpx.TransportError], where: str) -> None:
        self.inner, self.error, self.where = inner, error, where

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.where in request.url.path:
            raise self.error("simulated", request=request)
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize(
    "error", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.ConnectError, httpx.RemoteProtocolError]
)
@pytest.mark.parametrize("where", ["/token", "/upload/"])
async def test_timeouts_and_connection_failures_are_retry(
    gmail: Gmail, account: ServiceAccount, error: type[httpx.TransportError], where: str
) -> None:
    transport = _Broken(httpx.ASGITransport(app=create_app(gmail.state)), error, where)
    async with httpx.AsyncClient(transport=transport) as client:
        provider = GmailProvider("gw", key_settings(account), client=client, clock=gmail.clock)
        outcome = await provider.send(outbound())
    assert outcome.kind == "retry" and error.__name__ in outcome.response


# --- tokens: cached per subject until shortly before expiry -----------------------------------------------------------


async def test_tokens_are_cached_per_subject_and_renewed_before_they_expire(gmail: Gmail) -> None:
    provider = gmail.provider()
    for _ in range(3):
        assert (await provider.send(outbound())).kind == "sent"
    assert [c["sub"] for c in gmail.claims() if c] == [SENDER]
    assert (await provider.send(outbound(sender="other@joinmednet.org"))).kind == "sent"
    assert [c["sub"] for c in gmail.claims() if c] == [SENDER, "other@joinmednet.org"]

    gmail.clock.advance(3599 - 300 - 1)  # the emulator's tokens live 3599 s; renewal starts 300 s before
    assert (await provider.send(outbound())).kind == "sent"
    assert len(gmail.state.token_calls) == 2
    gmail.clock.advance(2)
    assert (await provider.send(outbound())).kind == "sent"
    assert len(gmail.state.token_calls) == 3
    renewed = gmail.claims()[-1]
    assert renewed is not None and renewed["sub"] == SENDER and renewed["iat"] == int(gmail.clock.now().timestamp())
    tokens = [call.authorization for call in gmail.state.send_calls]
    assert tokens[0] == tokens[1] == tokens[2] == tokens[4] != tokens[5]


async def test_concurrent_sends_for_one_sender_share_one_token_request(gmail: Gmail) -> None:
    provider = gmail.provider()
    outcomes = await asyncio.gather(*(provider.send(outbound()) for _ in range(6)))
    assert {o.kind for o in outcomes} == {"sent"}
    assert len(gmail.state.token_calls) == 1


async def test_a_token_the_emulator_expired_is_replaced_after_its_401(gmail: Gmail) -> None:
    provider = gmail.provider()
    await provider.send(outbound())
    gmail.state.token_lifetime = 10  # the next token dies long before the provider expects it to
    gmail.state.issued.clear()  # and the current one is revoked
    assert (await provider.send(outbound())).kind == "sent"
    assert [c.status for c in gmail.state.send_calls] == [200, 401, 200]


# --- no envelope: Bcc for envelope-only recipients, nothing else changed ---------------------------------------------


async def test_envelope_only_recipients_travel_in_bcc_and_nothing_else_changes(gmail: Gmail) -> None:
    recipients = ("to@example.org", "CC@example.org", "hidden@example.org", "second@example.net", "hidden@example.org")
    outcome = await gmail.provider().send(outbound(recipients=recipients))

    assert outcome.kind == "sent"
    [stored] = gmail.state.messages
    assert stored.raw == b"Bcc: hidden@example.org,\r\n second@example.net\r\n" + MESSAGE
    assert remove_fields(stored.raw, ["Bcc"]) == MESSAGE
    assert set(stored.recipients) == {"to@example.org", "cc@example.org", "hidden@example.org", "second@example.net"}
    assert stored.delivered == MESSAGE  # what recipients see: the original, without the hidden addresses


async def test_no_bcc_when_every_envelope_recipient_is_in_to_or_cc(gmail: Gmail) -> None:
    await gmail.provider().send(outbound(recipients=("TO@example.org",)))
    assert gmail.state.messages[0].raw == MESSAGE


def test_bcc_follows_the_message_line_ending_and_replaces_an_existing_bcc() -> None:
    lf = b"To: a@example.org\nBcc: stale@example.org,\n other@example.org\nSubject: s\n\nbody\n"
    assert with_bcc(lf, ["a@example.org", "b@example.org"]) == (
        b"Bcc: b@example.org\nTo: a@example.org\nSubject: s\n\nbody\n"
    )
    assert with_bcc(lf, ["a@example.org"]) == b"To: a@example.org\nSubject: s\n\nbody\n"
    quoted = b'To: "Doe, Jane" <jane@example.org>, bob@example.org\r\n\r\nx'
    assert with_bcc(quoted, ["jane@example.org", "bob@example.org"]) == quoted


# --- default_sender and require_valid_sender -------------------------------------------------------------------------


async def test_default_sender_takes_over_when_impersonation_is_refused(gmail: Gmail) -> None:
    provider = gmail.provider(default_sender="postmaster@joinmednet.org")
    gmail.state.fail_token(400, "invalid_grant", "Invalid email or User ID", subject=SENDER)

    outcome = await provider.send(outbound())

    assert outcome.kind == "sent" and "sent as default_sender postmaster@joinmednet.org" in outcome.response
    assert [c.status for c in gmail.state.token_calls] == [400, 200]
    [stored] = gmail.state.messages
    assert stored.user == "postmaster@joinmednet.org" and stored.raw == MESSAGE
    # Gmail rewrites a From that is not the user or its alias: recipients see the default sender.
    assert stored.from_rewritten and stored.delivered.startswith(b"From: postmaster@joinmednet.org\r\n")


async def test_unauthorized_client_also_falls_back_but_a_token_outage_does_not(gmail: Gmail) -> None:
    provider = gmail.provider(default_sender="postmaster@joinmednet.org")
    gmail.state.fail_token(401, "unauthorized_client", "Client is unauthorized", subject=SENDER)
    assert (await provider.send(outbound())).kind == "sent"
    gmail.state.fail_token(503, "", "unavailable", subject="x@joinmednet.org")
    outcome = await provider.send(outbound(sender="x@joinmednet.org"))
    assert outcome.kind == "retry"
    assert [c.claims["sub"] for c in gmail.state.token_calls if c.claims] == [
        SENDER,
        "postmaster@joinmednet.org",
        "x@joinmednet.org",
    ]


async def test_without_default_sender_an_unknown_sender_fails_only_its_message(gmail: Gmail) -> None:
    outcome = await gmail.provider().send(outbound(sender="ghost@elsewhere.example"))
    assert outcome.kind == "permanent" and "invalid_grant" in outcome.response  # not the workspace's fault
    assert gmail.state.send_calls == []
    gmail.state.granted_scopes = frozenset({"https://www.googleapis.com/auth/gmail.readonly"})
    refused = await gmail.provider().send(outbound())
    assert refused.kind == "auth" and "unauthorized_client" in refused.response  # the delegation itself


async def test_require_valid_sender_refuses_foreign_domains_before_any_request(gmail: Gmail) -> None:
    gmail.state.domains |= {"news.mednet.org", "mednet.org", "elsewhere.example"}
    provider = gmail.provider(domains=(DOMAIN, "*.mednet.org"), require_valid_sender=True)
    for sender in ("a@elsewhere.example", "a@mednet.org"):
        outcome = await provider.send(outbound(sender=sender))
        assert outcome.kind == "permanent" and "require_valid_sender" in outcome.response
    bounce = await provider.send(outbound(sender=""))  # a null sender has no one to impersonate
    assert bounce.kind == "permanent" and "null sender" in bounce.response
    assert gmail.state.token_calls == []
    assert (await provider.send(outbound(sender="a@news.mednet.org"))).kind == "sent"
    assert (await provider.send(outbound(sender="a@JoinMednet.org"))).kind == "sent"


# --- key loading ------------------------------------------------------------------------------------------------------


async def test_the_key_loads_from_a_file_an_environment_variable_or_inline(
    gmail: Gmail, account: ServiceAccount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = json.dumps(account.key_file(TOKEN_URI))
    (tmp_path / "key.json").write_text(key)
    monkeypatch.setenv("RELAY_TEST_GMAIL_KEY", key)
    sources: list[dict[str, Any]] = [
        {"service_account_file": tmp_path / "key.json"},
        {"service_account_env": "RELAY_TEST_GMAIL_KEY"},
        {"service_account_json": key},
    ]
    for source in sources:
        provider = GmailProvider(
            "gw", GmailSettings(base_url=BASE_URL, **source), client=gmail.client, clock=gmail.clock
        )
        assert (await provider.send(outbound())).kind == "sent"
    assert len(gmail.state.messages) == 3


def _ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


BAD_KEYS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("not JSON", lambda k: "{not json", r"service_account_json: not JSON \(line 1 column 2\)"),
    ("a JSON array", lambda k: [k], "expected a JSON object"),
    ("another credential type", lambda k: {**k, "type": "authorized_user"}, '"type" is "authorized_user"'),
    ("no private key", lambda k: {**k, "private_key": ""}, "missing private_key"),
    (
        "no client_email or token_uri",
        lambda k: {"type": "service_account", "private_key": k["private_key"]},
        "missing client_email, token_uri",
    ),
    (
        "a broken PEM",
        lambda k: {**k, "private_key": k["private_key"][:200] + "SECRETBITS" + k["private_key"][-100:]},
        "not a PEM-encoded RSA",
    ),
    ("an EC key", lambda k: {**k, "private_key": _ec_pem()}, "not a PEM-encoded RSA"),
    (
        "a token_uri that is no URL",
        lambda k: {**k, "token_uri": "oauth2.googleapis.com/token"},
        "token_uri is not an http",
    ),
]


@pytest.mark.parametrize(("mangle", "message"), [b[1:] for b in BAD_KEYS], ids=[b[0] for b in BAD_KEYS])
def test_a_bad_inline_key_is_refused_at_construction_without_the_secret(
    account: ServiceAccount, mangle: Callable[[dict[str, Any]], Any], message: str
) -> None:
    value = mangle(account.key_file(TOKEN_URI))
    text = value if isinstance(value, str) else json.dumps(value)
    with pytest.raises(ProviderError, match=message) as caught:
        GmailProvider("gw", GmailSettings(service_account_json=text))
    shown = str(caught.value)
    assert shown.startswith('workspace "gw": gmail.service_account_json: ')
    assert "PRIVATE KEY" not in shown and "SECRETBITS" not in shown and account.private_pem[40:80] not in shown
    # No chained exception (a parser's message could quote the key) is shown with it.
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_a_missing_file_or_variable_is_refused_naming_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ProviderError, match=rf"gmail.service_account_file \({missing}\): cannot read the key file"):
        GmailProvider("gw", GmailSettings(service_account_file=missing))
    monkeypatch.delenv("RELAY_TEST_NO_KEY", raising=False)
    with pytest.raises(ProviderError, match=r"service_account_env \(\$RELAY_TEST_NO_KEY\): .* not set"):
        GmailProvider("gw", GmailSettings(service_account_env="RELAY_TEST_NO_KEY"))
    monkeypatch.setenv("RELAY_TEST_NO_KEY", "")
    with pytest.raises(ProviderError, match="is empty"):
        GmailProvider("gw", GmailSettings(service_account_env="RELAY_TEST_NO_KEY"))


# --- check() ----------------------------------------------------------------------------------------------------------


async def test_check_mints_a_fresh_token_for_default_sender(gmail: Gmail) -> None:
    provider = gmail.provider(default_sender="postmaster@joinmednet.org")
    assert await provider.check() == (await provider.check())
    health = await provider.check()
    assert health.ok and "postmaster@joinmednet.org" in health.detail
    assert [c["sub"] for c in gmail.claims() if c] == ["postmaster@joinmednet.org"] * 3


async def test_check_without_default_sender_uses_the_last_sender_else_the_service_account(gmail: Gmail) -> None:
    provider = gmail.provider()
    first = await provider.check()
    assert first.ok and "service account" in first.detail
    minted = gmail.claims()[0]
    assert minted is not None and "sub" not in minted
    await provider.send(outbound(sender="other@joinmednet.org"))
    assert (await provider.check()).ok
    last = gmail.claims()[-1]
    assert last is not None and last["sub"] == "other@joinmednet.org"


async def test_check_reports_a_refused_grant_and_an_unreachable_endpoint(gmail: Gmail, account: ServiceAccount) -> None:
    gmail.state.fail_token(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens")
    health = await gmail.provider(default_sender="postmaster@joinmednet.org").check()
    assert not health.ok and "401 unauthorized_client" in health.detail
    transport = _Broken(httpx.ASGITransport(app=create_app(gmail.state)), httpx.ConnectError, "/token")
    async with httpx.AsyncClient(transport=transport) as client:
        down = await GmailProvider("gw", key_settings(account), client=client, clock=gmail.clock).check()
    assert not down.ok and "ConnectError" in down.detail


# --- the emulator is strict where Google is ---------------------------------------------------------------------------


def _assertion(account: ServiceAccount, signer_account: ServiceAccount | None = None, **claims: Any) -> str:
    now = int(START.timestamp())
    payload = {
        "iss": account.client_email,
        "sub": SENDER,
        "scope": GMAIL_SEND_SCOPE,
        "aud": TOKEN_URI,
        "iat": now,
        "exp": now + 3600,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    signer = RSASigner.from_service_account_info((signer_account or account).key_file(TOKEN_URI))
    return google.auth.jwt.encode(signer, payload).decode()


async def _grant(gmail: Gmail, assertion: str, grant_type: str = JWT_BEARER) -> httpx.Response:
    return await gmail.client.post(TOKEN_URI, data={"grant_type": grant_type, "assertion": assertion})


async def test_the_emulator_checks_signature_claims_and_lifetime(gmail: Gmail, account: ServiceAccount) -> None:
    now = int(START.timestamp())
    assert (await _grant(gmail, _assertion(account))).status_code == 200
    impostor = ServiceAccount(account.client_email, account.key_id, ServiceAccount.generate().private_pem, "")
    cases = {
        "another key": (_assertion(account, impostor), 400, "Invalid JWT Signature."),
        "another audience": (_assertion(account, aud="https://oauth2.googleapis.com/token"), 400, "audience"),
        "over an hour": (_assertion(account, exp=now + 3601), 400, "short-lived"),
        "expired": (_assertion(account, iat=now - 4000, exp=now - 400), 400, "short-lived"),
        "from the future": (_assertion(account, iat=now + 60, exp=now + 3660), 400, "short-lived"),
        "no exp": (_assertion(account, exp=None), 400, "Invalid JWT"),
        "unknown user": (_assertion(account, sub="x@elsewhere.example"), 400, "Invalid email or User ID"),
        "scope not delegated": (_assertion(account, scope="https://mail.google.com/"), 401, "unauthorized"),
        "unknown issuer": (_assertion(account, iss="who@else.iam.gserviceaccount.com"), 400, "Invalid JWT Signature."),
    }
    for name, (assertion, status, text) in cases.items():
        answer = await _grant(gmail, assertion)
        assert answer.status_code == status, name
        assert text in answer.json()["error_description"], (name, answer.json())
    wrong_grant = await _grant(gmail, _assertion(account), grant_type="client_credentials")
    assert wrong_grant.json()["error"] == "unsupported_grant_type"


async def test_the_emulator_requires_the_bearer_token_upload_path_and_media_type(
    gmail: Gmail, account: ServiceAccount
) -> None:
    token = (await _grant(gmail, _assertion(account))).json()["access_token"]
    url = f"{BASE_URL}/upload/gmail/v1/users/me/messages/send"
    good = {"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"}

    async def post(
        headers: dict[str, str], params: dict[str, str] | None = None, body: bytes = MESSAGE
    ) -> httpx.Response:
        return await gmail.client.post(
            url, params={"uploadType": "media"} if params is None else params, headers=headers, content=body
        )

    assert (await post({"Content-Type": "message/rfc822"})).status_code == 401
    assert (await post({**good, "Authorization": "Bearer ya29.forged"})).status_code == 401
    assert (await post({**good, "Content-Type": "application/json"})).status_code == 400
    assert (await post(good, params={"uploadType": "multipart"})).status_code == 400
    assert (await post(good, body=b"x" * (MAX_UPLOAD_BYTES + 1))).status_code == 413
    wrong_user = await gmail.client.post(
        url.replace("/me/", "/other@joinmednet.org/"), params={"uploadType": "media"}, headers=good, content=MESSAGE
    )
    assert wrong_user.status_code == 403
    assert (await post(good)).json()["labelIds"] == ["SENT"]
    gmail.clock.advance(3600)
    expired = await post(good)
    assert expired.status_code == 401 and expired.json()["error"]["errors"][0]["reason"] == "authError"


# --- the registry -----------------------------------------------------------------------------------------------------


async def test_the_registry_builds_a_gmail_provider_for_a_gmail_workspace(account: ServiceAccount) -> None:
    workspace = Workspace.model_validate(
        {"id": "gw", "domains": [DOMAIN], "gmail": {"service_account_json": json.dumps(account.key_file(TOKEN_URI))}}
    )
    provider = build_provider(workspace)
    try:
        assert isinstance(provider, GmailProvider) and provider.kind == "gmail"
    finally:
        await provider.aclose()


async def test_per_user_quota_holds_only_the_sender_and_project_quota_the_workspace(gmail: Gmail) -> None:
    gmail.state.fail_send(429, "rateLimitExceeded", RATE_TEXT)
    per_user = await gmail.provider().send(outbound())
    gmail.state.fail_send(403, "dailyLimitExceeded", "Daily Limit Exceeded")
    project = await gmail.provider().send(outbound())
    assert (per_user.kind, per_user.quota_scope) == ("quota", "sender")
    assert (project.kind, project.quota_scope) == ("quota", "workspace")
