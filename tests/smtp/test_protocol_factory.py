"""`ProtocolFactory` copies a template instead of running aiosmtpd's `SMTP.__init__` per connection.

A copy must be indistinguishable from a freshly initialised `RelaySMTP`: the same attributes with the same
values, its own stream-protocol state, and every method table bound to itself (a table bound to another
connection's instance would answer on the wrong socket). If an aiosmtpd upgrade adds per-connection state to
`__init__`, the first test fails and names the attribute.
"""

from __future__ import annotations

import asyncio
from typing import Any

from relay.smtp.auth import Authenticator
from relay.smtp.server import _PER_CONNECTION, COMMAND_CALL_LIMIT, ProtocolFactory, RelaySMTP


class Handler:
    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]) -> Any:
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 Ok"


IMMUTABLE = (type(None), bool, int, float, str, bytes, tuple, frozenset)


def settings(loop: asyncio.AbstractEventLoop, handler: Handler) -> dict[str, Any]:
    return {
        "handler": handler,
        "data_size_limit": 1024,
        "hostname": "relay.test",
        "ident": "Relay ESMTP",
        "timeout": 30.0,
        "auth_require_tls": False,
        "authenticator": Authenticator([]),
        "command_call_limit": COMMAND_CALL_LIMIT,
        "loop": loop,
    }


async def test_a_copy_matches_a_freshly_initialised_protocol_attribute_by_attribute() -> None:
    loop = asyncio.get_running_loop()
    handler = Handler()
    factory = ProtocolFactory(**settings(loop, handler))
    first, copy = factory(), factory()
    fresh = RelaySMTP(**settings(loop, handler))

    assert set(vars(copy)) == set(vars(fresh))
    for name, value in vars(copy).items():
        if name in _PER_CONNECTION:
            continue
        expected = vars(fresh)[name]
        if name in ("_authenticator", "event_handler", "loop", "_call_limit_base"):
            assert value is vars(first)[name], name  # shared by design, as every fresh instance shares them
        else:
            assert value == expected, name
            # Anything copied is shared between connections: it must not be a container one could change.
            assert isinstance(value, IMMUTABLE), f"{name} is a mutable {type(value).__name__} shared by connections"


async def test_each_copy_has_its_own_stream_state_and_tables_bound_to_itself() -> None:
    loop = asyncio.get_running_loop()
    handler = Handler()
    factory = ProtocolFactory(**settings(loop, handler))
    first, copy = factory(), factory()
    fresh = RelaySMTP(**settings(loop, handler))

    assert copy._closed is not first._closed
    assert copy._stream_reader_wr() is not first._stream_reader_wr()
    assert copy._client_connected_cb.__self__ is copy

    assert copy._smtp_methods.keys() == fresh._smtp_methods.keys()
    assert all(method.__self__ is copy for method in copy._smtp_methods.values())
    assert copy._handle_hooks.keys() == fresh._handle_hooks.keys() == {"EHLO", "DATA"}
    assert all(hook.__self__ is handler for hook in copy._handle_hooks.values())
    assert copy._auth_methods.keys() == fresh._auth_methods.keys()
    for name, entry in copy._auth_methods.items():
        assert entry.is_builtin == fresh._auth_methods[name].is_builtin
        assert entry.method.__self__ is (copy if entry.is_builtin else handler), name
        assert entry.method.__func__ is fresh._auth_methods[name].method.__func__, name
