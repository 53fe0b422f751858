"""Mailgun provider: the raw MIME to `POST /v3/{domain}/messages.mime`, every envelope recipient as `to`.

Mailgun reads recipients only from the `to` fields, never from the MIME headers, so the envelope decides who
gets the message and a Bcc recipient (already removed from the headers) still receives it. Answers are mapped
as in the notes' table (shared/notes/provider-apis.md §5): 200 with an `id` is sent; 400 and 413 are
permanent; 401, 402, 403 and 404 ("Domain not found", usually the wrong region) are auth; 429 is quota;
5xx, timeouts and connection errors are retry. The API key never appears in an Outcome or a Health.
"""

from __future__ import annotations

import base64
import email.utils
import json
from typing import Any
from urllib.parse import quote

import httpx

from ..clock import Clock, SystemClock
from ..config import MailgunSettings, Workspace
from ..errors import ProviderError
from .tls import tls_context
from .types import Health, OutboundMessage, Outcome, OutcomeKind

__all__ = [
    "EU_BASE_URL",
    "MAX_MESSAGE_BYTES",
    "MAX_OPTIONS_BYTES",
    "US_BASE_URL",
    "MailgunProvider",
    "default_base_url",
    "sending_domain",
]

US_BASE_URL = "https://api.mailgun.net"
EU_BASE_URL = "https://api.eu.mailgun.net"

# documentation.mailgun.com user-manual/sending-messages: "maximum message size is 25 MB".
MAX_MESSAGE_BYTES = 25 * 1024 * 1024
# post-v3--domain-name--messages-mime: "Send options (parameters starting with o:, h:, v:, or t:) are limited
# to 16KB total".
MAX_OPTIONS_BYTES = 16 * 1024

_AUTH_STATUSES = frozenset({401, 402, 403, 404})
_PERMANENT_STATUSES = frozenset({400, 413})
_MAX_RESPONSE_CHARS = 500


def default_base_url(region: str) -> str:
    return EU_BASE_URL if region == "eu" else US_BASE_URL


def sending_domain(workspace: Workspace, settings: MailgunSettings) -> str:
    """`settings.domain`, else the workspace's first domain that is not a `*.` pattern."""
    if settings.domain:
        return settings.domain
    for domain in workspace.all_domains:
        if not domain.startswith("*."):
            return domain
    raise ProviderError(
        f'workspace "{workspace.id}": mailgun needs a sending domain; set mailgun.domain or give the workspace '
        "a domain that is not a wildcard pattern"
    )


class MailgunProvider:
    kind = "mailgun"

    def __init__(
        self,
        workspace_id: str,
        settings: MailgunSettings,
        domain: str,
        *,
        client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.concurrency = 16
        self.domain = domain
        self.base_url = (str(settings.base_url) if settings.base_url else default_base_url(settings.region)).rstrip("/")
        self._settings = settings
        self._key = settings.api_key.get_secret_value()
        self._auth = httpx.BasicAuth("api", self._key)
        self._clock = clock or SystemClock()
        self._owns_client = client is None
        # Uploads of up to 25 MB: a generous write timeout; the delivery worker bounds the whole send anyway.
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=15.0), verify=tls_context())
        self._options = _options(settings)
        size = sum(len(name.encode()) + len(value.encode()) for name, value in self._options)
        if size > MAX_OPTIONS_BYTES:
            raise ProviderError(
                f'workspace "{workspace_id}": mailgun options (default_tags, tracking) take {size} bytes; '
                f"Mailgun accepts at most {MAX_OPTIONS_BYTES}"
            )
        self._messages_url = f"{self.base_url}/v3/{quote(domain, safe='')}/messages.mime"
        self._domain_url = f"{self.base_url}/v3/domains/{quote(domain, safe='')}"

    async def send(self, message: OutboundMessage) -> Outcome:
        if len(message.data) > MAX_MESSAGE_BYTES:
            return Outcome(
                "permanent",
                response=f"message is {len(message.data)} bytes; Mailgun accepts at most {MAX_MESSAGE_BYTES}",
            )
        if not message.recipients:
            return Outcome("permanent", response="no recipients")
        fields: list[tuple[str, str]] = [("to", recipient) for recipient in message.recipients]
        fields.extend(self._options)
        try:
            response = await self._client.post(
                self._messages_url,
                auth=self._auth,
                data=_multi(fields),
                files={"message": ("message.mime", message.data, "message/rfc822")},
            )
        except httpx.HTTPError as exc:
            return Outcome("retry", response=self._scrub(_describe(exc)))
        return self._outcome(response)

    async def check(self) -> Health:
        try:
            response = await self._client.get(self._domain_url, auth=self._auth)
        except httpx.HTTPError as exc:
            return Health(False, self._scrub(f"{self.base_url}: {_describe(exc)}"))
        if response.status_code == 403:
            # A domain sending key may send but not read its domain: the API answered and knew the key, which is
            # all a health check can learn without sending. Not proof of broken credentials.
            return Health(True, f"domain {self.domain}: the key may not read the domain (a sending key?); reachable")
        if response.status_code == 429:
            # Rate limited: the API answered and took the key. Sends meet the same limit as a quota (the workspace
            # pauses for its Retry-After); counting it as a failure too opened the breaker during a 429 storm.
            return Health(True, f"domain {self.domain}: rate limited (HTTP 429); reachable")
        if response.status_code != 200:
            hint = {
                401: "the API key was refused",
                403: "the API key may not read this domain",
                404: f"domain not found (is it in the {self._settings.region.upper()} region?)",
            }.get(response.status_code, "")
            detail = "; ".join(filter(None, [hint, self._reason(response)]))
            return Health(
                False,
                f"domain {self.domain}: HTTP {response.status_code} {detail}".rstrip(),
                auth=response.status_code == 401,
            )
        body = _json(response)
        domain = body.get("domain") if isinstance(body, dict) else None
        state = domain.get("state") if isinstance(domain, dict) else None
        if state is None:
            return Health(False, f"domain {self.domain}: unexpected answer from {self.base_url}")
        return Health(state == "active", f"domain {self.domain} is {state}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _outcome(self, response: httpx.Response) -> Outcome:
        status = response.status_code
        reason = self._reason(response)
        kind: OutcomeKind
        if status == 200:
            body = _json(response)
            message_id = body.get("id") if isinstance(body, dict) else None
            if isinstance(message_id, str) and message_id:
                return Outcome("sent", status="200", response=reason, provider_message_id=message_id)
            # A malformed path answers 200 "Mailgun Magnificent API" and sends nothing: the configuration
            # (base_url, domain) is wrong, so the workspace is, not the message.
            return Outcome(
                "auth", status="200", response=f"not a send: {reason or 'no id'} (check base_url and domain)"
            )
        if status in _PERMANENT_STATUSES:
            kind = "permanent"
        elif status in _AUTH_STATUSES:
            kind = "auth"
        elif status == 429:
            kind = "quota"
        else:  # 5xx, and 4xx answers Mailgun does not document for this call: temporary, retries are bounded
            kind = "retry"
        return Outcome(kind, status=str(status), response=reason, retry_after=self._retry_after(response))

    def _reason(self, response: httpx.Response) -> str:
        body = _json(response)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            text = body["message"]
        else:
            text = response.text if response.content else response.reason_phrase
        return self._scrub(" ".join(text.split())[:_MAX_RESPONSE_CHARS])

    def _retry_after(self, response: httpx.Response) -> float | None:
        """`Retry-After` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
        value = response.headers.get("retry-after", "").strip()
        if not value:
            return None
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, (when - self._clock.now()).total_seconds())

    def _scrub(self, text: str) -> str:
        """Remove the key, plain or as it appears in a Basic credential, from text bound for an Outcome."""
        if not self._key:
            return text
        credential = base64.b64encode(f"api:{self._key}".encode()).decode()
        return text.replace(credential, "[credential]").replace(self._key, "[api key]")


def _options(settings: MailgunSettings) -> list[tuple[str, str]]:
    """`o:` fields from the config: every default tag, and the tracking switches the operator set.

    A switch left out of the config sends nothing, so the domain's own tracking setting applies
    (documentation.mailgun.com user-manual/sending-messages/pass-sending-options: the per-message option
    "has a higher priority than the domain-level setting").
    """
    options = [("o:tag", tag) for tag in settings.default_tags]
    tracking = settings.tracking
    for field, option in (
        ("opens", "o:tracking-opens"),
        ("clicks", "o:tracking-clicks"),
        ("unsubscribe", "o:tracking-unsubscribe"),
    ):
        if field in tracking.model_fields_set:
            options.append((option, "yes" if getattr(tracking, field) else "no"))
    return options


def _multi(fields: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Repeated form fields, in order: httpx sends one part per list item."""
    grouped: dict[str, list[str]] = {}
    for name, value in fields:
        grouped.setdefault(name, []).append(value)
    return grouped


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None
