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

__all__ = ["ApiKeys", "Caller", "Role"]

Role = Literal["viewer", "operator", "admin"]
_RANK: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: Role


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


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

    def requires(self, role: Role) -> Callable[[Request], Awaitable[Caller]]:
        """A FastAPI dependency: the caller, who must hold `role` or a higher one."""

        async def dependency(request: Request) -> Caller:
            caller = self.caller(request.headers.get("authorization"))
            if _RANK[caller.role] < _RANK[role]:
                raise ApiError(403, f'this needs the "{role}" role; the key "{caller.name}" is a {caller.role}')
            return caller

        return dependency
