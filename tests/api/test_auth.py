"""API keys: only digests are kept, roles rank viewer < operator < admin, and refusals say why."""

from __future__ import annotations

import pytest
from fastapi import Request

from relay.api import ApiKeys
from relay.api.errors import ApiError

KEYS = ApiKeys([("dash", "v-key", "viewer"), ("desk", "o-key", "operator"), ("ops", "a-key", "admin")])


def request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return Request({"type": "http", "headers": headers})


@pytest.mark.parametrize(
    ("key", "role", "allowed"),
    [
        ("v-key", "viewer", True),
        ("v-key", "operator", False),
        ("o-key", "operator", True),
        ("o-key", "admin", False),
        ("a-key", "admin", True),
        ("a-key", "viewer", True),
    ],
)
async def test_roles_rank_viewer_operator_admin(key: str, role: str, allowed: bool) -> None:
    dependency = KEYS.requires(role)  # type: ignore[arg-type]
    if allowed:
        assert (await dependency(request(f"Bearer {key}"))).role in ("viewer", "operator", "admin")
    else:
        with pytest.raises(ApiError) as refused:
            await dependency(request(f"Bearer {key}"))
        assert refused.value.status == 403 and f'"{role}" role' in refused.value.message


@pytest.mark.parametrize("header", [None, "Basic YTpi", "Bearer ", "Bearer nope"])
async def test_missing_malformed_or_unknown_keys_are_401(header: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        await KEYS.requires("viewer")(request(header))
    assert refused.value.status == 401


def test_only_digests_are_kept() -> None:
    assert "a-key" not in repr(vars(KEYS)) and b"a-key" not in repr(vars(KEYS)).encode()
