"""Bearer API keys with roles (issue 7): `admin` (configuration writes) > `operator` (message actions) > `viewer`
(read). Only SHA-256 digests of the keys are kept in memory; the keys themselves never leave the settings."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from fastapi import Request

from .errors import ApiError

__all__ = ["ApiKeys", "Caller", "Role", "allows"]

Role = Literal["viewer", "operator", "admin"]
_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: Role


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _mac(secret: bytes, message: str) -> str:
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def allows(caller: Caller, role: Role) -> bool:
    return _RANK[caller.role] >= _RANK[role]


class ApiKeys:
    def __init__(self, keys: Iterable[tuple[str, str, Role]]) -> None:
        """`keys`: (name, key, role)."""
        self._keys = [(_digest(key), Caller(name, role)) for name, key, role in keys if key]

    def caller(self, authorization: str | None) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "an API key is required: Authorization: Bearer <key>")
        digest = _digest(token.strip())
        for known, caller in self._keys:
            if hmac.compare_digest(known, digest):
                return caller
        raise ApiError(401, "unknown API key")

    def __bool__(self) -> bool:
        return bool(self._keys)

    def login(self, key: str) -> Caller | None:
        """The caller whose key this is (the dashboard's login form), or None."""
        digest = _digest(key.strip())
        return next((caller for known, caller in self._keys if hmac.compare_digest(known, digest)), None)

    def sign(self, caller: Caller, message: str) -> str | None:
        """An HMAC of `message` under the key of `caller` (name and role; the key's digest is the secret): a
        dashboard session is signed by the key that opened it, so every process with the same keys accepts it,
        rotating the key ends the sessions it opened, and a key never vouches for a role it does not hold even
        when another key shares its name."""
        return next((_mac(known, message) for known, holder in self._keys if holder == caller), None)

    def verify(self, caller: Caller, message: str, mac: str) -> Caller | None:
        for known, holder in self._keys:
            if holder == caller and hmac.compare_digest(_mac(known, message), mac):
                return holder
        return None

    def requires(self, role: Role) -> Callable[[Request], Awaitable[Caller]]:
        """A FastAPI dependency: the caller, who must hold `role` or a higher one."""

        async def dependency(request: Request) -> Caller:
            caller = self.caller(request.headers.get("authorization"))
            if not allows(caller, role):
                raise ApiError(403, f'this needs the "{role}" role; the key "{caller.name}" is a {caller.role}')
            return caller

        return dependency
