"""SMTP AUTH (PLAIN, LOGIN) against the configured `smtp.users`, and the allowed-networks check."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

import structlog
from aiosmtpd.smtp import AuthResult, LoginPassword

from ..config import SmtpUser

__all__ = ["Authenticator", "NetworkPolicy"]

log = structlog.get_logger(__name__)


class Authenticator:
    """An aiosmtpd authenticator: constant-time comparison, the username kept as `session.auth_data`."""

    def __init__(self, users: Iterable[SmtpUser]) -> None:
        self._users = {u.username.encode(): u.password.get_secret_value().encode() for u in users}

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self._users.get(auth_data.login)
        # Compare against a dummy when the user is unknown, so timing does not reveal valid usernames.
        ok = hmac.compare_digest(expected or b"\0" * 32, auth_data.password) and expected is not None
        if not ok:  # never the password, not even its length
            log.warning(
                "smtp.auth_failed", peer=_peer(session), username=_printable(auth_data.login), mechanism=mechanism
            )
        # handled=False: aiosmtpd then answers a failure itself (535 5.7.8); with its default (handled=True) it
        # sends nothing and the client waits for a reply until the session times out.
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login.decode(errors="replace") if ok else None)


def _peer(session: Any) -> str | None:
    peer = getattr(session, "peer", None)
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


def _printable(login: bytes, limit: int = 100) -> str:
    """The username as the client sent it, with control characters escaped so it cannot forge log lines."""
    text = login.decode(errors="backslashreplace")[:limit]
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class NetworkPolicy:
    """Clients from these networks may send without AUTH."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks = [ipaddress.ip_network(n) for n in networks]

    def allows(self, peer: Any) -> bool:
        host = peer[0] if isinstance(peer, tuple) else peer
        try:
            address = ipaddress.ip_address(str(host).split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
