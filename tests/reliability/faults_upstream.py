"""A provider emulator behind a switchable fault, for the provider fault matrix.

The emulators stay exactly as strict as they are: every fault is applied in front of one, never by loosening it.

- Down: a `TcpProxy` sits between Relay and the emulator's port; `stop_listening()` closes it and resets every
  open connection, so Relay's connections are refused as by a stopped server; `listen_again()` reopens it.
- Answers instead of the emulator's (`Fault.answer`): a 429 storm or a run of 5xx, in the provider's own shape
  (built by the caller from the provider's documentation; see `mailgun_rate_limited`).
- `Fault.slow`: the request is read whole and held for `delay` seconds before the emulator sees it; if the
  client gave up meanwhile the emulator never sees it (a front end that queues requests and drops those whose
  client has gone). Nothing a client timed out on is delivered, so a timeout can never cause a duplicate.
- `Fault.late`: the emulator handles the request at once (the provider takes the message) and only its answer
  is held. A client that gives up first cannot know the message was taken: the window in which a failover
  delivers a second copy, which no sender can close.
- Wrong credentials are no layer at all: the test rotates the key the emulator accepts, and the emulator itself
  refuses the old one (401), checks included.

Faults apply to every request, sends and health checks alike: a provider in trouble answers both the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import JSONResponse, PlainTextResponse, Response

from tests.emulators.server import ServedApp
from tests.support.tcp_proxy import TcpProxy

__all__ = ["Fault", "FaultLayer", "FaultyUpstream", "mailgun_rate_limited", "mailgun_unavailable"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


@dataclass(frozen=True)
class Fault:
    kind: Literal["answer", "slow", "late"]
    answer: Callable[[], Response] | None = None
    delay: float = 0.0

    @classmethod
    def answering(cls, answer: Callable[[], Response]) -> Fault:
        return cls("answer", answer=answer)

    @classmethod
    def slow(cls, delay: float) -> Fault:
        return cls("slow", delay=delay)

    @classmethod
    def late(cls, delay: float) -> Fault:
        return cls("late", delay=delay)


def mailgun_rate_limited(retry_after: int | None) -> Callable[[], Response]:
    """Mailgun's 429 ("retry as defined in the response"; notes §2): JSON `message`, and `Retry-After` when given."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return lambda: JSONResponse({"message": "Too many requests"}, status_code=429, headers=headers)


def mailgun_unavailable() -> Response:
    """What a gateway in front of Mailgun answers while it is unavailable (the emulator's `fail_server_error`)."""
    return PlainTextResponse("<html>Service unavailable</html>", status_code=503)


class FaultLayer:
    """ASGI middleware: the emulator as it is while `fault` is None, else the fault. Thread-safe to switch: the
    attribute is read once per request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.fault: Fault | None = None
        self.counts: Counter[str] = Counter()  # what the layer did: answered, held, dropped (the client had gone)
        self._lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fault = self.fault
        if scope["type"] != "http" or fault is None:
            await self.app(scope, receive, send)
            return
        if fault.kind == "answer":
            assert fault.answer is not None
            await _read_body(receive)
            self._count("answered")
            await fault.answer()(scope, receive, send)
        elif fault.kind == "slow":
            await self._slow(fault.delay, scope, receive, send)
        else:
            await self._late(fault.delay, scope, receive, send)

    async def _slow(self, delay: float, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        # With the body read, the next message the server delivers is the client's disconnect, if it comes.
        gone = asyncio.ensure_future(receive())
        done, _ = await asyncio.wait({gone}, timeout=delay)
        if gone in done:
            self._count("dropped")  # the client timed out: the provider never takes this message
            return
        gone.cancel()
        self._count("held")
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)

    async def _late(self, delay: float, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)  # the provider has the message now
        self._count("held")
        await asyncio.sleep(delay)  # the fault itself: the answer is late
        # The client may have gone: the server then refuses the answer, which is the point.
        with contextlib.suppress(Exception):
            for message in held:
                await send(message)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class FaultyUpstream:
    """An emulator app served on a real port, reached through a TCP proxy whose `url` Relay is given."""

    def __init__(self, app: Any) -> None:
        self.layer = FaultLayer(app)
        self._served = ServedApp(self.layer)
        self._proxy: TcpProxy | None = None
        self._listening = False

    @property
    def url(self) -> str:
        assert self._proxy is not None
        return f"http://127.0.0.1:{self._proxy.port}"

    def __enter__(self) -> FaultyUpstream:
        self._served.__enter__()
        self._proxy = TcpProxy("127.0.0.1", self._served.port).start()
        self._listening = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_listening()
        self._served.__exit__(*exc)

    def set(self, fault: Fault | None) -> None:
        self.layer.fault = fault

    @staticmethod
    def close_all(upstreams: list[FaultyUpstream]) -> None:
        """`__exit__` for each, side by side: each waits a moment for its server's loop to notice."""
        threads = [threading.Thread(target=u.__exit__, args=(None, None, None)) for u in upstreams]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def stop_listening(self) -> None:
        """Connections refused from now on, and the open ones reset."""
        if self._proxy is not None and self._listening:
            self._proxy.cut()
            self._listening = False

    def listen_again(self) -> None:
        if self._proxy is not None and not self._listening:
            self._proxy.start()
            self._listening = True
