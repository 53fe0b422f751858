"""Mandrill provider against the emulator, in-process (httpx.ASGITransport).

Every Mandrill row of the answer → outcome table (shared/notes/provider-apis.md §5) is exercised here. Sources:
Mailchimp Transactional reference, /messages/send-raw (fields; one result per recipient with `status`,
`reject_reason`, `queued_reason`) and /users/ping2 (`{"PING":"PONG!"}`); "Outbound Email" (the backlog and
its queued reasons); mandrill-api-python `ERROR_MAP` (error names, HTTP 500).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from relay.config import MandrillSettings, load_settings
from relay.errors import ProviderError
from relay.providers import OutboundMessage, build_provider
from relay.providers.mandrill import MandrillProvider, recipient_outcome
from tests.emulators.mandrill import MandrillState, create_app

KEY = "md-test-key-0123456789"
BASE = "http://mandrill.test/api/1.0"
RAW = b"From: app@joinmednet.org\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def state() -> MandrillState:
    return MandrillState(keys={KEY})


def settings(**extra: Any) -> MandrillSettings:
    return MandrillSettings(api_key=extra.pop("api_key", KEY), base_url=extra.pop("base_url", BASE), **extra)


@pytest.fixture
async def make(state: MandrillState) -> AsyncIterator[Callable[..., MandrillProvider]]:
    clients: list[httpx.AsyncClient] = []

    def build(**extra: Any) -> MandrillProvider:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)))
        clients.append(client)
        return MandrillProvider("md", settings(**extra), client=client)

    yield build
    for client in clients:
        await client.aclose()


def message(*recipients: str, data: bytes = RAW, mail_from: str = "app@joinmednet.org") -> OutboundMessage:
    return OutboundMessage(id="01TEST", mail_from=mail_from, recipients=recipients or ("a@example.org",), data=data)


# --- per-recipient answers: one row of the table each ------------------------------------------------------------

ROWS = [
    # (status, reject_reason, queued_reason, outcome, quota-limited seconds)
    ("sent", None, None, "sent", None),
    ("scheduled", None, None, "sent", None),
    ("queued", None, "attachments", "sent", None),
    ("queued", None, "multiple-recipients", "sent", None),
    ("queued", None, "hourly-quota-exhausted", "sent", 3600.0),
    ("queued", None, "sending-backlogged", "sent", 3600.0),
    ("queued", None, "monthly-limit-reached", "sent", 86400.0),
    ("queued", None, "free-trial-sends-exhausted", "sent", 86400.0),
    ("queued", None, "sending-paused", "auth", None),
    ("queued", None, "sending-suspended", "auth", None),
    ("queued", None, "account-suspended", "auth", None),
    ("invalid", None, None, "permanent", None),
    ("rejected", "hard-bounce", None, "permanent", None),
    ("rejected", "spam", None, "permanent", None),
    ("rejected", "unsub", None, "permanent", None),
    ("rejected", "invalid", None, "permanent", None),
    ("rejected", "custom", None, "permanent", None),
    ("rejected", "rule", None, "permanent", None),
    ("rejected", "soft-bounce", None, "retry", None),
    ("rejected", "invalid-sender", None, "auth", None),
    ("rejected", "unsigned", None, "auth", None),
    ("rejected", "test-mode-limit", None, "quota", None),
]


@pytest.mark.parametrize(("status", "reject", "queued", "kind", "hold"), ROWS)
async def test_each_recipient_answer_lands_in_its_outcome(
    state: MandrillState,
    make: Callable[..., MandrillProvider],
    status: str,
    reject: str,
    queued: str,
    kind: str,
    hold: Any,
) -> None:
    state.answer("a@example.org", status, reject_reason=reject, queued_reason=queued)
    outcome = await make().send(message("a@example.org"))
    reason = reject or queued
    text = f"{status}: {reason}" if reason else status
    assert outcome.kind == kind
    assert outcome.status == "200"
    assert outcome.recipient_results == {"a@example.org": text}
    assert outcome.retry_after == hold
    if hold is not None:
        assert outcome.response.startswith(f"quota-limited: Mandrill holds the message ({queued})")
    assert outcome.rejected_recipients == ({"a@example.org": text} if kind == "permanent" else {})
    assert outcome.retry_recipients == (("a@example.org",) if kind in ("retry", "quota", "auth") else ())
    if kind == "sent":
        assert outcome.provider_message_id == state.deliveries[0].results[0]["_id"]


def test_undocumented_answers_are_not_taken_for_sent() -> None:
    assert recipient_outcome("bounced") == ("retry", None)  # unknown status: Mandrill never said it has it
    assert recipient_outcome("rejected", "new-reason") == ("permanent", None)
    assert recipient_outcome("queued", None) == ("sent", None)  # async mode: queued, no reason


# --- several recipients in one answer ------------------------------------------------------------------------------


async def test_one_rejected_and_one_sent_are_both_recorded(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    state.answer("gone@example.org", "rejected", reject_reason="hard-bounce")
    outcome = await make().send(message("ok@example.org", "gone@example.org"))
    assert outcome.kind == "sent"  # not retried: ok@ has its copy
    assert outcome.recipient_results == {"ok@example.org": "sent", "gone@example.org": "rejected: hard-bounce"}
    assert outcome.rejected_recipients == {"gone@example.org": "rejected: hard-bounce"}
    assert outcome.retry_recipients == ()
    assert [d.to for d in state.deliveries] == [["ok@example.org", "gone@example.org"]]


async def test_a_soft_bounce_next_to_a_sent_copy_retries_only_that_recipient(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    state.answer("later@example.org", "rejected", reject_reason="soft-bounce")
    outcome = await make().send(message("ok@example.org", "later@example.org"))
    assert outcome.kind == "sent"
    assert outcome.retry_recipients == ("later@example.org",)
    assert outcome.recipient_results == {"ok@example.org": "sent", "later@example.org": "rejected: soft-bounce"}


async def test_an_account_refusal_next_to_a_sent_copy_does_not_resend_the_sent_one(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    state.answer("b@example.org", "rejected", reject_reason="unsigned")
    outcome = await make().send(message("a@example.org", "b@example.org"))
    assert (outcome.kind, outcome.retry_recipients) == ("sent", ("b@example.org",))


async def test_with_no_copy_taken_the_account_state_decides(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    provider = make()
    state.answer("soft@example.org", "rejected", reject_reason="soft-bounce")
    state.answer("hard@example.org", "rejected", reject_reason="hard-bounce")
    outcome = await provider.send(message("soft@example.org", "hard@example.org"))
    assert outcome.kind == "retry"
    assert outcome.retry_recipients == ("soft@example.org",)
    assert outcome.rejected_recipients == {"hard@example.org": "rejected: hard-bounce"}

    state.answer("quota@example.org", "rejected", reject_reason="test-mode-limit")
    outcome = await provider.send(message("soft@example.org", "quota@example.org"))
    assert outcome.kind == "quota"

    state.answer("paused@example.org", "queued", queued_reason="sending-paused")
    outcome = await provider.send(message("quota@example.org", "paused@example.org", "hard@example.org"))
    assert outcome.kind == "auth"


async def test_all_refused_for_good_is_permanent(state: MandrillState, make: Callable[..., MandrillProvider]) -> None:
    state.answer("spam@example.org", "rejected", reject_reason="spam")
    outcome = await make().send(message("spam@example.org", "not-an-address"))
    assert outcome.kind == "permanent"
    assert outcome.rejected_recipients == {"spam@example.org": "rejected: spam", "not-an-address": "invalid"}
    assert "spam@example.org: rejected: spam" in outcome.response


async def test_quota_held_and_sent_copies_report_the_longest_hold(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    state.answer("a@example.org", "queued", queued_reason="hourly-quota-exhausted")
    state.answer("b@example.org", "queued", queued_reason="monthly-limit-reached")
    outcome = await make().send(message("a@example.org", "b@example.org", "c@example.org"))
    assert (outcome.kind, outcome.retry_after, outcome.retry_recipients) == ("sent", 86400.0, ())
    assert "hourly-quota-exhausted, monthly-limit-reached" in outcome.response


async def test_results_match_recipients_whatever_their_case(make: Callable[..., MandrillProvider]) -> None:
    def lower_cased(request: httpx.Request) -> httpx.Response:
        to = json.loads(request.content)["to"]
        return httpx.Response(200, json=[{"email": a.lower(), "status": "sent", "_id": "x"} for a in to])

    async with httpx.AsyncClient(transport=httpx.MockTransport(lower_cased)) as client:
        outcome = await MandrillProvider("md", settings(), client=client).send(message("Ann@Example.org"))
    assert (outcome.kind, outcome.recipient_results) == ("sent", {"Ann@Example.org": "sent"})


async def test_a_recipient_missing_from_the_answer_is_retried(make: Callable[..., MandrillProvider]) -> None:
    def one_short(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=[{"email": "a@example.org", "status": "sent", "_id": "x"}])

    async with httpx.AsyncClient(transport=httpx.MockTransport(one_short)) as client:
        outcome = await MandrillProvider("md", settings(), client=client).send(message("a@example.org", "b@x.org"))
    assert (outcome.kind, outcome.retry_recipients) == ("sent", ("b@x.org",))
    assert outcome.recipient_results["b@x.org"] == "no result in Mandrill's answer"


async def test_a_malformed_reason_never_raises_after_a_200() -> None:
    """A 200 means Mandrill may hold copies: raising here would make the worker send them all again."""

    def odd(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json=[
                {"email": "a@example.org", "status": "sent", "reject_reason": ["?"], "_id": "x"},
                {"email": "b@x.org", "status": "rejected", "reject_reason": {"a": 1}, "queued_reason": 5},
            ],
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(odd)) as client:
        outcome = await MandrillProvider("md", settings(), client=client).send(message("a@example.org", "b@x.org"))
    assert outcome.kind == "sent"
    assert outcome.recipient_results == {"a@example.org": "sent", "b@x.org": "rejected"}


# --- API errors (HTTP 500 with a name) and transport failures -----------------------------------------------------

ERRORS = [
    ("PaymentRequired", "auth"),
    ("Unknown_Subaccount", "auth"),
    ("ValidationError", "permanent"),
    ("GeneralError", "retry"),
    ("ServiceUnavailable", "retry"),
    ("Some_New_Error", "retry"),
]


@pytest.mark.parametrize(("name", "kind"), ERRORS)
async def test_api_errors_are_mapped_on_their_name(
    state: MandrillState, make: Callable[..., MandrillProvider], name: str, kind: str
) -> None:
    state.fail(name, "what Mandrill said")
    outcome = await make().send(message())
    assert (outcome.kind, outcome.status) == (kind, name)
    assert "what Mandrill said" in outcome.response
    assert state.deliveries == []


async def test_an_unknown_key_is_auth_and_the_key_never_shows(state: MandrillState) -> None:
    wrong = "md-wrong-key-9876543210"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state))) as client:
        provider = MandrillProvider("md", settings(api_key=wrong), client=client)
        outcome = await provider.send(message())
        health = await provider.check()
    assert (outcome.kind, outcome.status) == ("auth", "Invalid_Key")
    assert outcome.response == "Invalid API key (code -1)"
    assert not health.ok and health.detail == "Invalid_Key Invalid API key (code -1)"
    assert wrong not in repr(outcome) and wrong not in repr(health)


async def test_an_echoed_key_is_redacted(state: MandrillState, make: Callable[..., MandrillProvider]) -> None:
    state.fail("ValidationError", f"bad request {{'key': '{KEY}'}}")
    state.fail_raw(503, f"upstream said {KEY}")
    provider = make()
    for outcome in (await provider.send(message()), await provider.send(message())):
        assert KEY not in repr(outcome)
        assert "[api key]" in outcome.response


@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (500, {}, "retry", None),
        (502, {}, "retry", None),
        (503, {"Retry-After": "120"}, "retry", 120.0),
        (429, {"Retry-After": "30"}, "quota", 30.0),
        (404, {}, "auth", None),
    ],
)
async def test_answers_that_are_not_mandrills_error_body(
    state: MandrillState,
    make: Callable[..., MandrillProvider],
    status: int,
    headers: dict[str, str],
    kind: str,
    retry_after: float | None,
) -> None:
    state.fail_raw(status, "<html>gateway</html>", headers=headers)
    outcome = await make().send(message())
    assert (outcome.kind, outcome.status, outcome.retry_after) == (kind, str(status), retry_after)


@pytest.mark.parametrize(
    "error", [httpx.ConnectError("connection refused"), httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("x")]
)
async def test_transport_failures_are_retried(error: Exception) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    async with httpx.AsyncClient(transport=httpx.MockTransport(fail)) as client:
        provider = MandrillProvider("md", settings(), client=client)
        outcome = await provider.send(message())
        health = await provider.check()
    assert outcome.kind == "retry"
    assert not health.ok
    assert KEY not in repr(outcome) + repr(health)


# --- the wire: what is sent, byte for byte ------------------------------------------------------------------------


async def test_the_request_is_send_raw_with_the_envelope() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"email": a, "status": "sent", "_id": "i"} for a in ("a@x.org", "b@y.org")])

    async with httpx.AsyncClient(transport=httpx.MockTransport(record)) as client:
        await MandrillProvider("md", settings(base_url="https://mandrillapp.com/api/1.0/"), client=client).send(
            message("a@x.org", "b@y.org", "a@x.org")
        )
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "https://mandrillapp.com/api/1.0/messages/send-raw.json"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert body == {
        "key": KEY,
        "raw_message": RAW.decode(),
        "from_email": "app@joinmednet.org",
        "to": ["a@x.org", "b@y.org"],
    }


async def test_eight_bit_utf8_bytes_arrive_unchanged(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    raw = (
        "From: app@joinmednet.org\r\nTo: a@example.org\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        "Grüße, naïve café — 東京 🚀\r\n\ttab, trailing space \r\nbare\nlf and a NUL \x00 byte\r\n"
    ).encode()
    outcome = await make().send(message(data=raw))
    assert outcome.kind == "sent"
    assert state.deliveries[0].raw == raw


async def test_eight_bit_bytes_that_are_not_utf8_fail_before_any_call(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    raw = b"From: a@joinmednet.org\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\ncaf\xe9\r\n"
    outcome = await make().send(message(data=raw))
    assert outcome.kind == "permanent"
    assert "not UTF-8" in outcome.response
    assert state.calls == []


async def test_the_null_sender_leaves_from_email_out(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    outcome = await make().send(message(mail_from=""))
    assert outcome.kind == "sent"
    assert state.deliveries[0].from_email is None


async def test_workspace_options_travel_as_x_mc_headers_and_nothing_else_changes(
    state: MandrillState, make: Callable[..., MandrillProvider]
) -> None:
    provider = make(
        subaccount="customer-123",
        default_tags=["invite", "password"],
        tracking={"opens": True, "clicks": True, "url_strip_qs": True},
    )
    outcome = await provider.send(message())
    assert outcome.kind == "sent"
    [delivery] = state.deliveries
    assert delivery.fields == {}  # no `subaccount` field: send-raw has none (the emulator refuses unknown fields)
    assert delivery.raw == (
        b"From: app@joinmednet.org\r\nTo: a@example.org\r\nSubject: hi\r\n"
        b"X-MC-Subaccount: customer-123\r\nX-MC-Tags: invite,password\r\nX-MC-Track: opens,clicks_all\r\n"
        b"X-MC-URLStripQS: true\r\n\r\nbody\r\n"
    )


# --- check(), lifecycle, registry ---------------------------------------------------------------------------------


async def test_check_pings(state: MandrillState, make: Callable[..., MandrillProvider]) -> None:
    health = await make().check()
    assert health.ok and health.detail == "users/ping2: PONG!"
    assert state.calls == ["/api/1.0/users/ping2.json"]
    state.fail("ServiceUnavailable", "down for maintenance")
    health = await make().check()
    assert not health.ok and "ServiceUnavailable" in health.detail


async def test_aclose_closes_only_its_own_client() -> None:
    given = httpx.AsyncClient()
    await MandrillProvider("md", settings(), client=given).aclose()
    assert not given.is_closed
    await given.aclose()
    own = MandrillProvider("md", settings())
    await own.aclose()
    assert own._client.is_closed


def test_the_registry_builds_it_and_refuses_an_empty_key(tmp_path: Any) -> None:
    def workspace(key: str) -> Any:
        path = tmp_path / "relay.json"
        config = {
            "database_url": f"sqlite:///{tmp_path / 'r.db'}",
            "workspaces": [{"id": "md", "domains": ["joinmednet.org"], "mandrill": {"api_key": key}}],
        }
        path.write_text(json.dumps(config))
        return load_settings(path).workspaces[0]

    provider = build_provider(workspace(KEY))
    assert isinstance(provider, MandrillProvider) and provider.kind == "mandrill"
    with pytest.raises(ProviderError, match=r'workspace "md": mandrill.api_key is empty'):
        build_provider(workspace(""))


# --- the emulator is as strict as the documentation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "name", "code"),
    [
        ({"raw_message": "x"}, "application/json", "ValidationError", -1),
        ({"key": KEY, "raw_message": "x"}, "application/x-www-form-urlencoded", "ValidationError", -1),
        ({"key": "nope", "raw_message": "x"}, "application/json", "Invalid_Key", -1),
        ({"key": KEY}, "application/json", "ValidationError", -2),
        ({"key": KEY, "raw_message": RAW.decode(), "to": "a@example.org"}, "application/json", "ValidationError", -2),
        (
            {"key": KEY, "raw_message": RAW.decode(), "to": [{"email": "a@x.org"}]},
            "application/json",
            "ValidationError",
            -2,
        ),
        ({"key": KEY, "raw_message": RAW.decode(), "subaccount": "s"}, "application/json", "ValidationError", -2),
    ],
)
async def test_the_emulator_refuses_what_mandrill_refuses(
    state: MandrillState, body: dict[str, Any], content_type: str, name: str, code: int
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state)), base_url=BASE) as client:
        response = await client.post(
            f"{BASE}/messages/send-raw.json", content=json.dumps(body), headers={"content-type": content_type}
        )
    assert response.status_code == 500
    assert response.json()["status"] == "error"
    assert (response.json()["name"], response.json()["code"]) == (name, code)
    assert state.deliveries == []


async def test_the_emulator_reads_header_recipients_without_to_and_goes_async_over_ten(state: MandrillState) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(state))) as client:
        first = await client.post(f"{BASE}/messages/send-raw", json={"key": KEY, "raw_message": RAW.decode()})
        many = [f"r{i}@example.org" for i in range(11)]
        second = await client.post(f"{BASE}/messages/send-raw.json", json={"key": KEY, "raw_message": "x", "to": many})
    assert [r["email"] for r in first.json()] == ["a@example.org"]
    assert {r["status"] for r in second.json()} == {"queued"}
