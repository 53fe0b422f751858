"""Gmail API provider: a service account with domain-wide delegation sends each message as its sender.

Facts and the answer → outcome table: ../shared/notes/provider-apis.md §1 and §5.

- Token: a JWT-bearer grant (RFC 7523) signed with the key's RSA private key, posted to the key's `token_uri`,
  `sub` = the sender, scope `gmail.send`. Access tokens are cached per subject until shortly before they expire.
- Send: the media upload URI, `message/rfc822`, raw bytes (the JSON `{"raw"}` URI refuses bodies over ~1 MB).
- Gmail has no envelope: it delivers to the addresses in To, Cc and Bcc. Envelope recipients missing from To/Cc
  are put in one `Bcc:` field, which Gmail removes from delivered copies; no other byte of the message changes.
  Header addresses that are not envelope recipients receive the mail too: nothing here can prevent that.
- `default_sender`: when the token endpoint refuses to impersonate the sender (`invalid_grant`,
  `unauthorized_client`), the message is sent as `default_sender` instead. Relay leaves `From:` as it is, and
  Gmail rewrites a `From:` that is neither that user nor one of its verified send-as aliases to the user's
  primary address, so recipients see `default_sender` unless the original From is such an alias.
- `require_valid_sender`: a sender outside the workspace's domains is refused (`permanent`) before any request.

Never raises for an answer or a network failure: every one becomes an Outcome. Never logs or returns key material.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, Literal

import google.auth.jwt
import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.crypt import RSASigner

from ..clock import Clock, SystemClock
from ..config import GmailSettings
from ..errors import ProviderError
from ..mime import header_values, remove_fields
from .tls import tls_context
from .types import Health, OutboundMessage, Outcome, OutcomeKind

__all__ = ["GMAIL_SEND_SCOPE", "MAX_UPLOAD_BYTES", "GmailProvider"]

GMAIL_SEND_SCOPE = "https://www.googleapis.com/auth/gmail.send"
MAX_UPLOAD_BYTES = 36_700_160  # discovery document: mediaUpload.maxSize "36700160" (35 MiB)
MAX_RECIPIENTS = 100  # per message through the API or SMTP (support.google.com/a/answer/166852)
_JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_ASSERTION_LIFETIME = 3600  # Google refuses an assertion whose exp is more than an hour after iat
_RENEW_BEFORE = 300.0  # seconds before expiry a cached token is replaced (capped at half its lifetime)
_IMPERSONATION_REFUSED = ("invalid_grant", "unauthorized_client")
# invalid_grant descriptions that are about the user, not the key (notes §1: "Not a valid email",
# "The account has been deleted", Google's "Invalid email or User ID").
_SENDER_UNKNOWN = re.compile(r"not a valid email|invalid email|user id|account has been deleted", re.IGNORECASE)
_QUOTA_REASONS = {"userRateLimitExceeded", "rateLimitExceeded", "dailyLimitExceeded", "quotaExceeded"}
_RETRY_AFTER_TEXT = re.compile(r"retry after (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))", re.I)


@dataclass(frozen=True, slots=True)
class _Key:
    client_email: str
    token_uri: str
    signer: RSASigner


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float  # on the clock's monotonic scale


class _TokenRefusedError(Exception):
    """The token endpoint did not issue a token; `error` is its OAuth error code, if it gave one."""

    def __init__(self, outcome: Outcome, error: str = "") -> None:
        super().__init__(outcome.response)
        self.outcome = outcome
        self.error = error


class GmailProvider:
    """Sends through `users.messages.send` as the message's sender. `domains` are the workspace's domains."""

    kind = "gmail"

    def __init__(
        self,
        workspace_id: str,
        settings: GmailSettings,
        *,
        domains: tuple[str, ...] | list[str] = (),
        client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.workspace_id = workspace_id
        self.concurrency = 8  # Gmail also limits concurrent requests per user; more would earn 429s
        self._settings = settings
        self._domains = tuple(d.lower() for d in domains)
        self._key = _load_key(workspace_id, settings)
        self._send_url = str(settings.base_url).rstrip("/") + "/upload/gmail/v1/users/me/messages/send"
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), verify=tls_context())
        self._clock = clock or SystemClock()
        self._tokens: dict[str | None, _Token] = {}
        self._minting: dict[str | None, asyncio.Lock] = {}  # one token request per subject at a time
        self._last_subject: str | None = None

    async def send(self, message: OutboundMessage) -> Outcome:
        sender = message.mail_from or self._settings.default_sender
        if not sender:
            return Outcome("permanent", response="a null sender (<>) cannot be impersonated and no default_sender")
        if (
            message.mail_from
            and self._settings.require_valid_sender
            and not _in_domains(message.mail_from, self._domains)
        ):
            return Outcome(
                "permanent",
                response=f'sender "{message.mail_from}" is not in workspace "{self.workspace_id}"\'s domains '
                f"({', '.join(self._domains) or 'none'}) and gmail.require_valid_sender is set",
            )
        data = with_bcc(message.data, message.recipients)
        addressed = {
            a.lower() for _, a in getaddresses([v for f in ("To", "Cc", "Bcc") for v in header_values(data, f)])
        }
        if len(addressed) > MAX_RECIPIENTS:
            # Gmail delivers to every header address, so the message cannot be split: refuse it clearly.
            return Outcome(
                "permanent", response=f"{len(addressed)} recipients; the Gmail API takes at most {MAX_RECIPIENTS}"
            )
        if len(data) > MAX_UPLOAD_BYTES:
            return Outcome(
                "permanent", status="413", response=f"{len(data)} bytes is over Gmail's {MAX_UPLOAD_BYTES} limit"
            )
        try:
            subject, note = await self._impersonate(sender)
            outcome = await self._upload(subject, data)
        except _TokenRefusedError as refused:
            return refused.outcome
        except httpx.HTTPError as exc:
            return Outcome("retry", response=f"{type(exc).__name__}: {exc}")
        return replace(outcome, response=f"{outcome.response}; {note}") if note else outcome

    async def check(self) -> Health:
        """Mint a fresh token for `default_sender` (else the last sender, else the service account itself)."""
        subject = self._settings.default_sender or self._last_subject
        who = subject or f"the service account {self._key.client_email} (no sender to impersonate yet)"
        try:
            await self._token(subject, fresh=True)
        except _TokenRefusedError as refused:
            return Health(False, refused.outcome.response, auth=refused.outcome.kind == "auth")
        except httpx.HTTPError as exc:
            return Health(False, f"token endpoint {self._key.token_uri}: {type(exc).__name__}: {exc}")
        return Health(True, f"token minted for {who}")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _impersonate(self, sender: str) -> tuple[str, str]:
        """(subject to send as, a note for the outcome). Falls back to `default_sender` as the docstring says."""
        try:
            await self._token(sender)
            return sender, ""
        except _TokenRefusedError as refused:
            fallback = self._settings.default_sender
            if refused.error not in _IMPERSONATION_REFUSED or not fallback or fallback.lower() == sender.lower():
                raise
            await self._token(fallback)
            return fallback, f"sent as default_sender {fallback}: impersonating {sender} was refused ({refused.error})"

    async def _upload(self, subject: str, data: bytes) -> Outcome:
        for attempt in (1, 2):
            token = await self._token(subject)
            response = await self._client.post(
                self._send_url,
                params={"uploadType": "media"},
                content=data,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"},
            )
            if response.status_code == 401 and attempt == 1:
                # Expired or revoked early: drop this token (unless another send already replaced it), retry once.
                if (cached := self._tokens.get(subject)) is not None and cached.value == token:
                    del self._tokens[subject]
                continue
            break
        return send_outcome(response, self._clock.now())

    async def _token(self, subject: str | None, *, fresh: bool = False) -> str:
        async with self._minting.setdefault(subject, asyncio.Lock()):
            cached = self._tokens.get(subject)
            if cached is not None and not fresh and self._clock.monotonic() < cached.renew_at:
                return cached.value
            token = await self._mint(subject)
            now = self._clock.monotonic()
            self._tokens = {s: t for s, t in self._tokens.items() if t.renew_at > now}
            self._tokens[subject] = token
            if subject is not None:
                self._last_subject = subject
            return token.value

    async def _mint(self, subject: str | None) -> _Token:
        issued = int(self._clock.now().timestamp())
        claims: dict[str, Any] = {
            "iss": self._key.client_email,
            "scope": GMAIL_SEND_SCOPE,
            "aud": self._key.token_uri,
            "iat": issued,
            "exp": issued + _ASSERTION_LIFETIME,
        }
        if subject is not None:
            claims["sub"] = subject
        assertion: bytes = google.auth.jwt.encode(self._key.signer, claims)  # type: ignore[no-untyped-call]
        started = self._clock.monotonic()
        response = await self._client.post(
            self._key.token_uri, data={"grant_type": _JWT_BEARER, "assertion": assertion.decode("ascii")}
        )
        body = _json(response)
        if response.status_code == 200 and isinstance(body.get("access_token"), str):
            expires_in = body.get("expires_in")
            lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 3600.0
            return _Token(body["access_token"], started + lifetime - min(_RENEW_BEFORE, lifetime / 2))
        raise _token_refusal(response, body, subject, self._clock.now())


def send_outcome(response: httpx.Response, now: datetime) -> Outcome:
    """Classify an answer of `users.messages.send` (notes §5). No I/O."""
    code = response.status_code
    body = _json(response)
    if 200 <= code < 300:
        message_id = body.get("id")
        return Outcome(
            "sent",
            str(code),
            "accepted by Gmail",
            provider_message_id=message_id if isinstance(message_id, str) else None,
        )
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    errors = error.get("errors")
    reasons = {str(e.get("reason")) for e in errors if isinstance(e, dict)} if isinstance(errors, list) else set()
    text = str(error.get("message") or response.text[:300] or response.reason_phrase)
    response_text = f"{code} {'/'.join(sorted(reasons))}: {text}" if reasons else f"{code}: {text}"
    kind: OutcomeKind
    if code == 429 or (code == 403 and reasons & _QUOTA_REASONS):
        kind = "quota"
    elif code in (401, 403, 404) or "failedPrecondition" in reasons or error.get("status") == "FAILED_PRECONDITION":
        kind = "auth"  # a token refused after one refresh, Gmail off for the user or the domain, API or scope missing
    elif code >= 500 or code in (408, 409):
        kind = "retry"
    else:
        kind = "permanent"  # 400 invalidArgument/badRequest (headers, no recipient), 413, other refusals
    retry_after = _wait_seconds(response, text, now) if kind in ("quota", "retry") else None
    # Gmail's 429 "(Mail sending)" and userRateLimitExceeded are limits of one user; other senders of the
    # workspace can still send, so only this message waits.
    per_user = code == 429 or "userRateLimitExceeded" in reasons
    scope: Literal["workspace", "sender"] = "sender" if kind == "quota" and per_user else "workspace"
    return Outcome(kind, str(code), response_text, retry_after=retry_after, quota_scope=scope)


def _token_refusal(
    response: httpx.Response, body: dict[str, Any], subject: str | None, now: datetime
) -> _TokenRefusedError:
    code = response.status_code
    error = str(body.get("error") or "")
    description = str(body.get("error_description") or "") or response.text[:300]
    who = subject or "the service account itself"
    text = (
        f"token for {who}: " + " ".join(filter(None, [str(code), error])) + (f": {description}" if description else "")
    )
    kind: OutcomeKind
    if code >= 500 or error == "internal_failure" or code == 200:
        kind = "retry"  # transient, or a 200 without a token
    elif code == 429:
        kind = "quota"
    elif error == "invalid_grant" and subject and _SENDER_UNKNOWN.search(description):
        # The key and the delegation are fine, only this sender cannot be impersonated (not a user of the
        # domain, or deleted): fail this message, not the whole workspace.
        kind = "permanent"
    else:
        kind = "auth"  # 401 unauthorized_client, 400 invalid_grant and every other refusal of the key or grant
    retry_after = _wait_seconds(response, description, now) if kind != "auth" else None
    return _TokenRefusedError(Outcome(kind, str(code), text, retry_after=retry_after), error)


def _wait_seconds(response: httpx.Response, text: str, now: datetime) -> float | None:
    """`Retry-After` (seconds or HTTP date) first, else Gmail's "Retry after <RFC 3339 time>" in the message."""
    header = response.headers.get("Retry-After", "").strip()
    when: datetime | None = None
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            try:
                when = parsedate_to_datetime(header)
            except (TypeError, ValueError):
                when = None
    if when is None and (match := _RETRY_AFTER_TEXT.search(text)):
        when = datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def with_bcc(raw: bytes, recipients: tuple[str, ...] | list[str]) -> bytes:
    """`raw` with a `Bcc:` field listing the envelope recipients missing from To/Cc, or `raw` itself if none.

    The field goes first in the header block, in the message's own line ending; every other byte keeps its
    place. A Bcc field already in the message is replaced: the envelope decides who gets the mail.
    """
    listed = {address.lower() for _, address in getaddresses(header_values(raw, "To") + header_values(raw, "Cc"))}
    hidden: list[str] = []
    for recipient in recipients:
        if recipient.lower() not in listed:
            listed.add(recipient.lower())
            hidden.append(recipient)
    if header_values(raw, "Bcc"):
        raw = remove_fields(raw, ["Bcc"])
    if not hidden:
        return raw
    first_line_end = raw.find(b"\n")
    newline = b"\r\n" if first_line_end == -1 or raw[first_line_end - 1 : first_line_end] == b"\r" else b"\n"
    return b"Bcc: " + (b"," + newline + b" ").join(h.encode() for h in hidden) + newline + raw


def _in_domains(address: str, patterns: tuple[str, ...]) -> bool:
    domain = address.rpartition("@")[2].strip().lower().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    return bool(domain) and any(domain.endswith(p[1:]) if p.startswith("*.") else domain == p for p in patterns)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _load_key(workspace_id: str, settings: GmailSettings) -> _Key:
    """The service account key from the one configured source; ProviderError naming the source if unusable."""
    where = f'workspace "{workspace_id}": gmail.'
    if settings.service_account_file is not None:
        source = f"{where}service_account_file ({settings.service_account_file})"
        try:
            text = settings.service_account_file.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise ProviderError(
                f"{source}: cannot read the key file: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    elif settings.service_account_env is not None:
        source = f"{where}service_account_env (${settings.service_account_env})"
        value = os.environ.get(settings.service_account_env)
        if not value:
            raise ProviderError(f"{source}: the environment variable is {'empty' if value == '' else 'not set'}")
        text = value
    else:
        assert settings.service_account_json is not None
        source = f"{where}service_account_json"
        text = settings.service_account_json.get_secret_value()
    try:
        info = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProviderError(
            f"{source}: not JSON (line {exc.lineno} column {exc.colno}); expected a service account key file"
        ) from None
    return _key_from_info(source, info)


def _key_from_info(source: str, info: Any) -> _Key:
    if not isinstance(info, dict):
        raise ProviderError(f"{source}: expected a JSON object (a service account key file)")
    if info.get("type", "service_account") != "service_account":
        raise ProviderError(f'{source}: "type" is "{info.get("type")}", not "service_account"')
    missing = [
        f for f in ("client_email", "private_key", "token_uri") if not isinstance(info.get(f), str) or not info[f]
    ]
    if missing:
        raise ProviderError(f"{source}: missing {', '.join(missing)} (is this a service account key file?)")
    if not info["token_uri"].startswith(("https://", "http://")):
        raise ProviderError(f"{source}: token_uri is not an http(s) URL")
    try:
        private_key = serialization.load_pem_private_key(info["private_key"].encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        private_key = None
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ProviderError(f"{source}: private_key is not a PEM-encoded RSA private key")
    key_id = info.get("private_key_id") if isinstance(info.get("private_key_id"), str) else None
    signer = RSASigner(private_key, key_id=key_id)  # type: ignore[no-untyped-call]
    return _Key(info["client_email"], info["token_uri"], signer)
