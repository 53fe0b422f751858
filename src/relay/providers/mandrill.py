"""Mandrill (Mailchimp Transactional) provider: the raw MIME to `POST {base_url}/messages/send-raw.json`.

Wire format (Mailchimp Transactional reference for /messages/send-raw; rubydoc mandrill-api
`Mandrill::Messages#send_raw`): a JSON body with `key`, `raw_message` (the whole MIME document as a string),
`from_email` (the envelope sender; left out for the null sender, so Mandrill uses the From header) and `to`
(every envelope recipient, as strings). With `to` given Mandrill does not read recipients from To/Cc/Bcc, so a
Bcc recipient, whose header the worker already removed, still gets the message.

send-raw has no `subaccount`, `tags` or tracking fields: like Mandrill's SMTP integration it reads them from
`X-MC-*` header fields of the message ("How to Use SMTP Headers to Customize Your Messages", which Mandrill
removes before delivery). So the workspace's `subaccount`, `default_tags` and `tracking` become
`X-MC-Subaccount`, `X-MC-Tags`, `X-MC-Track`, `X-MC-Autotext`, `X-MC-AutoHtml`, `X-MC-InlineCSS` and
`X-MC-URLStripQS` fields, set byte-exactly in the top-level header block; no other byte of the message changes.

8-bit bytes: a JSON string carries text, not bytes. A message whose bytes are valid UTF-8 (all 7-bit mail, and
8BITMIME/SMTPUTF8 mail in UTF-8) is decoded as UTF-8, and Mandrill's JSON decoder gives back exactly the same
bytes. Other 8-bit bytes (a Latin-1 body sent as `8bit`, say) have no faithful JSON form: decoding them as
Latin-1 would turn each byte into two, and surrogate escapes are not valid Unicode for Mandrill's decoder. Such
a message fails permanently before any call, and the reason says so.

Answers map to outcomes as in the notes' table (shared/notes/provider-apis.md §5), per recipient and then
combined (`_combine`). A 200 for which Mandrill holds a recipient's copy for a quota (`queued` with
`hourly-quota-exhausted`, `sending-backlogged`, `monthly-limit-reached`, `free-trial-sends-exhausted`) is
`sent` for that recipient; the workspace is then quota-limited, which the Outcome signals with `retry_after`
(seconds: how long the workspace should be left alone; the worker ignores it on a fully sent message, and on a
partly sent one waits at least that long before retrying the rest) and a `quota-limited:` note in `response`.
`queued` for `sending-paused`/`-suspended`/`account-suspended` is `auth` as the table says, although Mandrill
keeps that copy in its backlog: if the account resumes, the retry that follows may deliver a second copy.
Errors are HTTP 500 bodies `{"status":"error","code","name","message"}`, mapped on `name`.
The API key never appears in an Outcome or a Health.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from ..clock import Clock, SystemClock
from ..config import MandrillSettings
from ..errors import ProviderError
from ..mime import rewrite_headers
from .tls import tls_context
from .types import Health, OutboundMessage, Outcome, OutcomeKind

__all__ = ["MandrillProvider", "instruction_headers", "recipient_outcome"]

# Mailchimp Transactional "Outbound Email" (the backlog): over the hourly quota "we'll begin processing the
# backlog in the next hour"; a monthly or free-trial cap lasts until the plan changes, so a day is a re-check
# interval rather than a promise.
_QUOTA_HOLDS: dict[str, float] = {
    "hourly-quota-exhausted": 3600.0,
    "sending-backlogged": 3600.0,
    "monthly-limit-reached": 86400.0,
    "free-trial-sends-exhausted": 86400.0,
}
_AUTH_QUEUED = frozenset({"sending-paused", "sending-suspended", "account-suspended"})
_PERMANENT_REJECTS = frozenset({"hard-bounce", "spam", "unsub", "invalid", "custom", "rule"})
_AUTH_REJECTS = frozenset({"invalid-sender", "unsigned"})
_ERROR_KINDS: dict[str, OutcomeKind] = {
    "Invalid_Key": "auth",
    "PaymentRequired": "auth",
    "Unknown_Subaccount": "auth",
    "ValidationError": "permanent",
    "GeneralError": "retry",
    "ServiceUnavailable": "retry",
}
_PRECEDENCE: tuple[OutcomeKind, ...] = ("auth", "quota", "retry")  # when Mandrill took no copy at all
_MAX_RESPONSE_CHARS = 1000


def recipient_outcome(
    status: str, reject_reason: str | None = None, queued_reason: str | None = None
) -> tuple[OutcomeKind, float | None]:
    """One entry of a send-raw answer → (its outcome, seconds the workspace is quota-limited when Mandrill
    holds the copy for a quota, else None). No I/O."""
    if status in ("sent", "scheduled"):
        return "sent", None
    if status == "queued":
        if queued_reason in _AUTH_QUEUED:
            return "auth", None
        # attachments, multiple-recipients, async mode (no reason) or a quota: Mandrill has the message.
        return "sent", _QUOTA_HOLDS.get(queued_reason or "")
    if status == "invalid":
        return "permanent", None
    if status == "rejected":
        if reject_reason == "soft-bounce":
            return "retry", None
        if reject_reason in _AUTH_REJECTS:
            return "auth", None
        if reject_reason == "test-mode-limit":
            return "quota", None
        # The documented permanent reasons, and any undocumented one: Mandrill did not take this copy.
        return "permanent", None
    return "retry", None  # an undocumented status: Mandrill did not say it has the message


def instruction_headers(settings: MandrillSettings) -> tuple[tuple[str, str], ...]:
    """The `X-MC-*` header fields that carry the workspace's send options; only options that are set."""
    rules: list[tuple[str, str]] = []
    if settings.subaccount:
        rules.append(("X-MC-Subaccount", settings.subaccount))
    if settings.default_tags:
        rules.append(("X-MC-Tags", ",".join(settings.default_tags)))
    tracking = settings.tracking
    track = [name for name, on in (("opens", tracking.opens), ("clicks_all", tracking.clicks)) if on]
    if track:
        rules.append(("X-MC-Track", ",".join(track)))
    for header, on in (
        ("X-MC-Autotext", tracking.auto_text),
        ("X-MC-AutoHtml", tracking.auto_html),
        ("X-MC-InlineCSS", tracking.inline_css),
        ("X-MC-URLStripQS", tracking.url_strip_qs),
    ):
        if on:
            rules.append((header, "true"))
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class _Result:
    recipient: str
    text: str  # what goes into Outcome.recipient_results
    kind: OutcomeKind
    hold: float | None = None
    message_id: str | None = None


class MandrillProvider:
    kind = "mandrill"

    def __init__(
        self,
        workspace_id: str,
        settings: MandrillSettings,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.concurrency = 16
        self._key = settings.api_key.get_secret_value()
        if not self._key:
            # Mandrill would answer every send with ValidationError, which is permanent: refuse to start instead.
            raise ProviderError(f'workspace "{workspace_id}": mandrill.api_key is empty')
        self._base_url = str(settings.base_url).rstrip("/")
        self._headers = instruction_headers(settings)
        self._clock = clock or SystemClock()
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(90.0, connect=10.0),
            limits=httpx.Limits(max_connections=self.concurrency),
            headers={"User-Agent": "relay"},
            verify=tls_context(),
        )

    async def send(self, message: OutboundMessage) -> Outcome:
        raw = rewrite_headers(message.data, self._headers)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Outcome(
                "permanent",
                response=f"byte {exc.start} of the message is 8-bit but not UTF-8; Mandrill's JSON API carries "
                "text only, so it cannot be sent unchanged (use a 7-bit transfer encoding or UTF-8)",
            )
        to = list(dict.fromkeys(message.recipients))
        body: dict[str, Any] = {"key": self._key, "raw_message": text, "to": to}
        if message.mail_from:
            body["from_email"] = message.mail_from
        answer = await self._post("/messages/send-raw.json", body)
        if isinstance(answer, Outcome):
            return answer
        if not isinstance(answer, list):
            return Outcome("retry", status="200", response=self._clip(f"unexpected answer: {answer!r}"))
        return _combine(_results(message.recipients, answer))

    async def check(self) -> Health:
        """`users/ping2`: proves the key works, sends nothing."""
        answer = await self._post("/users/ping2.json", {"key": self._key})
        if isinstance(answer, Outcome):
            detail = f"{answer.status} {answer.response}".strip() if answer.status else answer.response
            return Health(False, detail, auth=answer.kind == "auth")
        if isinstance(answer, dict) and answer.get("PING") == "PONG!":
            return Health(True, "users/ping2: PONG!")
        return Health(False, self._clip(f"users/ping2: unexpected answer {answer!r}"))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        """The decoded JSON of a 200, or the Outcome that any other answer or failure means."""
        try:
            response = await self._client.post(self._base_url + path, json=body)
        except httpx.TimeoutException as exc:
            return Outcome("retry", response=self._clip(f"Mandrill did not answer in time ({type(exc).__name__})"))
        except httpx.HTTPError as exc:
            return Outcome("retry", response=self._clip(f"{type(exc).__name__}: {exc}"))
        try:
            decoded = response.json()
        except ValueError:
            decoded = None
        if response.status_code == 200 and decoded is not None:
            return decoded
        if isinstance(decoded, dict) and decoded.get("status") == "error" and isinstance(decoded.get("name"), str):
            name = decoded["name"]
            detail = f"{decoded.get('message', '')} (code {decoded.get('code')})"
            return Outcome(_ERROR_KINDS.get(name, "retry"), status=name[:32], response=self._clip(detail))
        return self._http_outcome(response)

    def _http_outcome(self, response: httpx.Response) -> Outcome:
        """An answer that is not Mandrill's error body: a proxy, a gateway, or the wrong base_url."""
        status = response.status_code
        text = self._clip(f"HTTP {status}: {response.text[:200]}")
        if status == 429:
            return Outcome("quota", status=str(status), response=text, retry_after=self._retry_after(response))
        if status in (401, 403, 404):
            return Outcome("auth", status=str(status), response=f"{text} (check mandrill.base_url)")
        return Outcome("retry", status=str(status), response=text, retry_after=self._retry_after(response))

    def _retry_after(self, response: httpx.Response) -> float | None:
        value = response.headers.get("Retry-After", "").strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, (when - self._clock.now()).total_seconds()) if when.tzinfo else None

    def _clip(self, text: str) -> str:
        """Provider text for an Outcome: short, and never with the key in it, whatever was echoed back."""
        return text.replace(self._key, "[api key]")[:_MAX_RESPONSE_CHARS]


def _results(recipients: Sequence[str], answer: list[Any]) -> list[_Result]:
    """One result per envelope recipient, matched case-insensitively (Mandrill may lower-case addresses)."""
    by_email: dict[str, Mapping[str, Any]] = {}
    for entry in answer:
        if isinstance(entry, Mapping) and isinstance(entry.get("email"), str):
            by_email.setdefault(entry["email"].lower(), entry)
    results = []
    for recipient in dict.fromkeys(recipients):
        entry = by_email.get(recipient.lower())
        if entry is None:
            # Not known to be accepted: trying again may duplicate, not trying may lose it; the retry budget ends it.
            results.append(_Result(recipient, "no result in Mandrill's answer", "retry"))
            continue
        status = str(entry.get("status"))
        # Anything but a string is treated as absent: a malformed answer must never raise after a 200, or the
        # message would be sent again to recipients Mandrill already took.
        reject = entry.get("reject_reason") if isinstance(entry.get("reject_reason"), str) else None
        queued = entry.get("queued_reason") if isinstance(entry.get("queued_reason"), str) else None
        kind, hold = recipient_outcome(status, reject, queued)
        reason = reject if status == "rejected" else queued if status == "queued" else None
        text = f"{status}: {reason}" if reason else status
        message_id = entry.get("_id") if isinstance(entry.get("_id"), str) else None
        results.append(_Result(recipient, text, kind, hold, message_id))
    return results


def _combine(results: list[_Result]) -> Outcome:
    """One Outcome for the message.

    Once Mandrill has taken any copy the outcome must be `sent`, with the rest in `retry_recipients`: any other
    kind would send the message again to the recipients who already have it. With no copy taken, `auth` beats
    `quota` beats `retry` beats `permanent`, since the workspace's state matters more than one address.
    """
    accepted = [r for r in results if r.kind == "sent"]
    pending = tuple(r.recipient for r in results if r.kind in ("retry", "quota", "auth"))
    rejected = {r.recipient: r.text for r in results if r.kind == "permanent"}
    kinds = {r.kind for r in results}
    kind: OutcomeKind = "sent" if accepted else next((k for k in _PRECEDENCE if k in kinds), "permanent")
    holds = [r for r in accepted if r.hold is not None]
    retry_after = max(r.hold for r in holds if r.hold is not None) if holds else None
    listed = [r for r in results if kind != "sent" or r.kind != "permanent"]  # the worker appends refusals
    summary = "; ".join(f"{r.recipient}: {r.text}" for r in listed)
    if holds:
        reasons = ", ".join(sorted({r.text.split(": ", 1)[-1] for r in holds}))
        summary = f"quota-limited: Mandrill holds the message ({reasons}); {summary}"
    return Outcome(
        kind,
        status="200",
        response=summary[:_MAX_RESPONSE_CHARS],
        provider_message_id=next((r.message_id for r in accepted if r.message_id), None),
        retry_after=retry_after,
        retry_recipients=pending,
        rejected_recipients=rejected,
        recipient_results={r.recipient: r.text for r in results},
        workspace_wait=retry_after,
    )
