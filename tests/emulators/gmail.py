"""Gmail API emulator: Google's OAuth token endpoint (JWT-bearer grant) and `users.messages.send` by media upload.

Written from developers.google.com/identity/protocols/oauth2/service-account,
developers.google.com/gmail/api/guides/uploads and /guides/handle-errors, and the facts collected in
../shared/notes/provider-apis.md §1. Strict where the documentation is:

- token: form-encoded, `grant_type` exactly the JWT-bearer URN, header `{"alg":"RS256","typ":"JWT"}`, the RS256
  signature checked against the registered service account's public key, `iss` a known account, `aud` this
  endpoint's URL, `iat`/`exp` present with `exp - iat <= 3600` and the assertion current, `sub` a user of a
  delegated domain, every scope granted to the delegation (else 401 `unauthorized_client`);
- send: `POST /upload/gmail/v1/users/{userId}/messages/send?uploadType=media`, `Authorization: Bearer` with a
  current token issued by this emulator, a send scope, `Content-Type: message/rfc822`, at most 36,700,160 bytes,
  recipients only from To/Cc/Bcc (400 `invalidArgument` "Recipient address required" when none).

Each stored message keeps the bytes Gmail received and what a recipient would see: without Bcc, and with a From
that is not the user or one of its aliases rewritten to the user (observed Gmail behaviour, notes §1).
Failures documented by Google can be injected with `fail_token` and `fail_send`.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any
from urllib.parse import parse_qs

import google.auth.exceptions
import google.auth.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.clock import Clock, SystemClock
from relay.mime import header_values, remove_fields, rewrite_headers

GMAIL_SEND = "https://www.googleapis.com/auth/gmail.send"
# Scopes that authorise users.messages.send (Gmail API reference, "Authorization scopes").
SEND_SCOPES = frozenset(
    {
        GMAIL_SEND,
        "https://www.googleapis.com/auth/gmail.compose",
        "https://www.googleapis.com/auth/gmail.modify",
        "https://mail.google.com/",
    }
)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_UPLOAD_BYTES = 36_700_160
TOKEN_LIFETIME = 3599
# google.auth.jwt.decode checks iat/exp against the real clock; the emulator checks them against its own
# (tests move it), so the library's window is opened wide here and the strict check follows.
_LIBRARY_SKEW = 20 * 365 * 86400

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class ServiceAccount:
    """A service account with a fresh RSA key pair, generated in the test run (no key is ever committed)."""

    client_email: str
    key_id: str
    private_pem: str
    public_pem: str

    @classmethod
    def generate(cls, client_email: str = "relay@relay-test.iam.gserviceaccount.com") -> ServiceAccount:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public_pem = (
            key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        return cls(client_email, secrets.token_hex(20), private_pem, public_pem)

    def key_file(self, token_uri: str) -> dict[str, str]:
        """The JSON key file the Cloud console hands out, pointing at `token_uri`."""
        return {
            "type": "service_account",
            "project_id": "relay-test",
            "private_key_id": self.key_id,
            "private_key": self.private_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }


@dataclass
class TokenFailure:
    """An answer of the token endpoint: `{"error", "error_description"}` with `status`."""

    status: int
    error: str
    description: str = ""
    subject: str | None = None  # only for this `sub`; None: any request
    times: int = 1


@dataclass
class SendFailure:
    """A Gmail API error answer in Google's shape, optionally with extra response headers."""

    status: int
    reason: str
    message: str
    domain: str = "global"
    headers: dict[str, str] = field(default_factory=dict)
    subject: str | None = None
    times: int = 1


@dataclass(frozen=True)
class Issued:
    token: str
    subject: str | None  # None: a token for the service account itself (no `sub`)
    client_email: str
    scopes: frozenset[str]
    expires_at: float


@dataclass(frozen=True)
class TokenCall:
    form: dict[str, str]
    header: dict[str, Any] | None
    claims: dict[str, Any] | None  # only once the signature has been verified
    status: int
    answer: dict[str, Any]


@dataclass(frozen=True)
class SendCall:
    path: str
    query: str
    content_type: str
    authorization: str
    size: int
    subject: str | None
    status: int


@dataclass(frozen=True)
class StoredMessage:
    id: str
    thread_id: str
    user: str
    raw: bytes  # exactly the bytes Gmail received
    delivered: bytes  # what a recipient sees: no Bcc, From possibly rewritten
    recipients: tuple[str, ...]  # from To, Cc and Bcc
    from_rewritten: bool


def google_error(status: int, reason: str, message: str, domain: str = "global") -> dict[str, Any]:
    """Google's JSON error body (developers.google.com/gmail/api/guides/handle-errors)."""
    state = "FAILED_PRECONDITION" if reason == "failedPrecondition" else _STATUS.get(status, "UNKNOWN")
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
            "status": state,
        }
    }


class GmailState:
    """Accounts, users, issued tokens, stored messages, recorded calls and injected failures. Thread-safe."""

    def __init__(
        self,
        accounts: Iterable[ServiceAccount],
        *,
        domains: Iterable[str] = ("example.com",),
        users: Iterable[str] | None = None,
        granted_scopes: Iterable[str] = (GMAIL_SEND,),
        aliases: dict[str, set[str]] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.accounts = {a.client_email: a for a in accounts}
        self.domains = {d.lower() for d in domains}
        self.users = {u.lower() for u in users} if users is not None else None
        self.granted_scopes = frozenset(granted_scopes)
        self.aliases = {k.lower(): {a.lower() for a in v} for k, v in (aliases or {}).items()}
        self.clock = clock or SystemClock()
        self.token_lifetime = TOKEN_LIFETIME
        self.issued: dict[str, Issued] = {}
        self.token_calls: list[TokenCall] = []
        self.send_calls: list[SendCall] = []
        self.messages: list[StoredMessage] = []
        self.token_failures: list[TokenFailure] = []
        self.send_failures: list[SendFailure] = []
        self._ids = itertools.count(0x18F3A0C2B4D5E600)
        self.lock = threading.Lock()

    def now(self) -> float:
        return self.clock.now().timestamp()

    def fail_token(self, status: int, error: str, description: str = "", **options: Any) -> None:
        self.token_failures.append(TokenFailure(status, error, description, **options))

    def fail_send(self, status: int, reason: str, message: str, **options: Any) -> None:
        self.send_failures.append(SendFailure(status, reason, message, **options))

    def is_user(self, address: str) -> bool:
        address = address.lower()
        if self.users is not None:
            return address in self.users
        return address.rpartition("@")[2] in self.domains

    def next_id(self) -> str:
        return f"{next(self._ids):x}"

    def take(self, failures: list[Any], subject: str | None) -> Any:
        """The first injected failure for `subject` (or for anyone), used up after `times` answers."""
        for failure in failures:
            if failure.subject is None or (subject or "").lower() == failure.subject.lower():
                failure.times -= 1
                if failure.times <= 0:
                    failures.remove(failure)
                return failure
        return None


def create_app(state: GmailState) -> Starlette:
    async def token(request: Request) -> Response:
        form, header, claims, status, answer = _token(state, request, await request.body())
        with state.lock:
            state.token_calls.append(TokenCall(form, header, claims, status, answer))
        return JSONResponse(answer, status_code=status)

    async def send(request: Request) -> Response:
        status, answer, headers, subject = _send(state, request, await request.body())
        with state.lock:
            state.send_calls.append(
                SendCall(
                    request.url.path,
                    request.url.query,
                    request.headers.get("content-type", ""),
                    request.headers.get("authorization", ""),
                    int(request.headers.get("content-length") or 0),
                    subject,
                    status,
                )
            )
        return JSONResponse(answer, status_code=status, headers=headers)

    return Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/upload/gmail/v1/users/{user_id}/messages/send", send, methods=["POST"]),
        ]
    )


def _oauth_error(status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": error, "error_description": description}


def _token(
    state: GmailState, request: Request, body: bytes
) -> tuple[dict[str, str], dict[str, Any] | None, dict[str, Any] | None, int, dict[str, Any]]:
    form: dict[str, str] = {}
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return form, None, None, *_oauth_error(400, "invalid_request", "Content-Type must be form-encoded")
    parsed = parse_qs(body.decode("ascii", "replace"), keep_blank_values=True, strict_parsing=False)
    form = {k: v[0] for k, v in parsed.items() if len(v) == 1}
    if form.get("grant_type") != JWT_BEARER:
        return (
            form,
            None,
            None,
            *_oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type')}"),
        )
    assertion = form.get("assertion", "")
    try:
        header = json.loads(_b64(assertion.split(".")[0]))
        unverified = json.loads(_b64(assertion.split(".")[1]))
    except (ValueError, IndexError):
        return form, None, None, *_oauth_error(400, "invalid_request", "Invalid JWT: malformed assertion")
    if header.get("alg") != "RS256" or header.get("typ") != "JWT":
        return form, header, None, *_oauth_error(400, "invalid_grant", "Invalid JWT: header must be RS256 and JWT")
    account = state.accounts.get(str(unverified.get("iss")))
    if account is None:
        return form, header, None, *_oauth_error(400, "invalid_grant", "Invalid JWT Signature.")
    audience = f"{request.url.scheme}://{request.url.netloc}{request.url.path}"
    try:
        claims = google.auth.jwt.decode(
            assertion,
            certs={account.key_id: account.public_pem},
            audience=audience,
            clock_skew_in_seconds=_LIBRARY_SKEW,
        )
    except (google.auth.exceptions.GoogleAuthError, ValueError) as exc:
        signature = "signature" in str(exc) or "key id" in str(exc)
        return (
            form,
            header,
            None,
            *_oauth_error(400, "invalid_grant", "Invalid JWT Signature." if signature else f"Invalid JWT: {exc}"),
        )
    status, answer = _grant(state, account, claims)
    return form, header, claims, status, answer


def _grant(state: GmailState, account: ServiceAccount, claims: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    now = state.now()
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > 3600 or iat > now + 1 or exp <= now:
        return _oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
            "Check your iat and exp values in the JWT claim.",
        )
    scopes = frozenset(str(claims.get("scope", "")).split())
    subject = claims.get("sub")
    if not scopes:
        return _oauth_error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
    if subject is not None:
        if not isinstance(subject, str) or not state.is_user(subject):
            return _oauth_error(400, "invalid_grant", "Invalid email or User ID")
        if not scopes <= state.granted_scopes:
            return _oauth_error(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client not authorized "
                "for any of the scopes requested.",
            )
    with state.lock:
        failure: TokenFailure | None = state.take(state.token_failures, subject)
        if failure is not None:
            return _oauth_error(failure.status, failure.error, failure.description)
        issued = Issued(
            "ya29.emu-" + secrets.token_urlsafe(24), subject, account.client_email, scopes, now + state.token_lifetime
        )
        state.issued[issued.token] = issued
    return 200, {"access_token": issued.token, "expires_in": state.token_lifetime, "token_type": "Bearer"}


def _send(state: GmailState, request: Request, body: bytes) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
    authorization = request.headers.get("authorization", "")
    issued = state.issued.get(authorization[7:]) if authorization.startswith("Bearer ") else None
    if issued is None or issued.expires_at <= state.now():
        message = "Request had invalid authentication credentials. Expected OAuth 2 access token."
        return 401, google_error(401, "authError", message), {"WWW-Authenticate": 'Bearer realm="emulator"'}, None
    subject = issued.subject
    if not issued.scopes & SEND_SCOPES:
        return (
            403,
            google_error(403, "insufficientPermissions", "Request had insufficient authentication scopes."),
            {},
            subject,
        )
    user_id = request.path_params["user_id"]
    if user_id != "me" and user_id.lower() != (subject or "").lower():
        return 403, google_error(403, "forbidden", "Delegation denied for " + issued.client_email), {}, subject
    if subject is None:
        return 400, google_error(400, "failedPrecondition", "Precondition check failed."), {}, subject
    if request.query_params.get("uploadType") != "media":
        return 400, google_error(400, "badRequest", "The emulator takes uploadType=media only"), {}, subject
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "message/rfc822":
        text = f"Media type '{content_type}' is not supported. Valid media types: [message/*]"
        return 400, google_error(400, "badRequest", text), {}, subject
    if len(body) > MAX_UPLOAD_BYTES:
        return 413, google_error(413, "uploadTooLarge", "Request Entity Too Large"), {}, subject
    with state.lock:
        failure: SendFailure | None = state.take(state.send_failures, subject)
    if failure is not None:
        return (
            failure.status,
            google_error(failure.status, failure.reason, failure.message, failure.domain),
            failure.headers,
            subject,
        )
    return _store(state, subject, body)


def _store(state: GmailState, user: str, raw: bytes) -> tuple[int, dict[str, Any], dict[str, str], str | None]:
    fields = [*header_values(raw, "To"), *header_values(raw, "Cc"), *header_values(raw, "Bcc")]
    recipients = tuple(address for _, address in getaddresses(fields) if "@" in address)
    if not recipients:
        return 400, google_error(400, "invalidArgument", "Recipient address required"), {}, user
    delivered = remove_fields(raw, ["Bcc"])
    senders = [address.lower() for _, address in getaddresses(header_values(raw, "From"))]
    allowed = {user.lower(), *state.aliases.get(user.lower(), set())}
    rewritten = not senders or any(s not in allowed for s in senders)
    if rewritten:
        delivered = rewrite_headers(delivered, [("From", user)])
    with state.lock:
        message_id = state.next_id()
        state.messages.append(StoredMessage(message_id, message_id, user, raw, delivered, recipients, rewritten))
    return 200, {"id": message_id, "threadId": message_id, "labelIds": ["SENT"]}, {}, user


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
