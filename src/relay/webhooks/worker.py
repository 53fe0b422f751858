"""The dispatcher in a process of its own, so posting webhooks never takes event-loop time from mail.

`relay serve` starts it (`WorkerProcess`) and restarts it if it dies; it shares nothing with the mail process
but the database, where the outbox and the leases already coordinate every dispatcher of every process, and a
one-way pipe on which it reports, about once a second, what its posts came to: the mail process serves `/metrics`,
so that is where the webhook counters must move. A report lost with a killed worker is at most a second's worth.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import threading
from collections import Counter
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import structlog

from .dispatcher import OnResult

__all__ = ["WorkerProcess"]

log = structlog.get_logger(__name__)

_REPORT_SECONDS = 1.0
Tally = Counter[tuple[str, str]]  # (endpoint id, outcome) -> posts


def _main(database_url: str, owner: str, log_level: str, log_format: str, parent: int, reports: Connection) -> None:
    import uvloop

    from ..clock import SystemClock
    from ..logs import configure_logging
    from ..store import Database, WebhookStore
    from .dispatcher import Dispatcher

    configure_logging(log_level, log_format)
    # Below the mail process in the CPU's eyes: on a busy machine mail gets the cores first and webhooks catch
    # up when it pauses (the outbox holds them durably meanwhile).
    with contextlib.suppress(OSError):
        os.nice(10)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        db = Database(database_url, pool_size=4)
        tally: Tally = Counter()

        def counted(endpoint: str, outcome: str, count: int) -> None:
            tally[(endpoint, outcome)] += count

        dispatcher = Dispatcher(
            WebhookStore(db, SystemClock()), clock=SystemClock(), owner=f"{owner}/webhooks", on_result=counted
        )
        task = asyncio.create_task(dispatcher.run())
        reporter = asyncio.create_task(_report(tally, reports))

        async def orphaned() -> None:
            # The mail process died without stopping us (SIGKILL): a dispatcher must not outlive it.
            while True:
                await asyncio.sleep(1.0)
                if os.getppid() != parent:
                    stop.set()
                    return

        watch = asyncio.create_task(orphaned())
        await stop.wait()
        watch.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        with contextlib.suppress(Exception):  # the last second's posts; a parent gone by now hears nothing
            async with asyncio.timeout(1.0):
                await _send(tally, reports)
        await dispatcher.aclose()
        await db.dispose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


async def _report(tally: Tally, reports: Connection) -> None:
    while True:
        await asyncio.sleep(_REPORT_SECONDS)
        await _send(tally, reports)


async def _send(tally: Tally, reports: Connection) -> None:
    if not tally:
        return
    batch = dict(tally)
    tally.clear()
    # In a thread: a parent that stops reading may block this send, never the dispatcher's loop. The lock keeps a
    # send whose task was cancelled (its thread goes on) from interleaving its bytes with the final one's.
    await asyncio.to_thread(_send_locked, reports, batch)


_SEND_LOCK = threading.Lock()


def _send_locked(reports: Connection, batch: dict[tuple[str, str], int]) -> None:
    with _SEND_LOCK:
        reports.send(batch)


class WorkerProcess:
    """Starts the dispatcher process, checks on it every few seconds (restarting it after a crash), stops it, and
    passes what its posts came to on to `on_result` (endpoint id, outcome, count)."""

    def __init__(
        self,
        database_url: str,
        owner: str,
        log_level: str,
        log_format: str,
        on_result: OnResult | None = None,
    ) -> None:
        self._args = (database_url, owner, log_level, log_format, os.getpid())
        self._process: BaseProcess | None = None
        self._reports: Connection | None = None
        self._on_result = on_result

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited event loop, sockets or locks
        self._read_reports()  # what the previous worker said before it died
        receiving, sending = context.Pipe(duplex=False)
        self._process = context.Process(target=_main, args=(*self._args, sending), name="relay-webhooks", daemon=True)
        self._process.start()
        # The worker holds the only writing end now: when it exits the pipe reads as closed, so a report cut short
        # by SIGKILL ends in EOFError instead of a recv() that waits forever.
        sending.close()
        self._reports = receiving

    async def supervise(self, every: float = 5.0) -> None:
        checked = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(min(every, _REPORT_SECONDS))
            self._read_reports()
            now = asyncio.get_running_loop().time()
            if now - checked < every:
                continue
            checked = now
            if self._process is not None and not self._process.is_alive():
                log.error("webhooks.worker_died", exitcode=self._process.exitcode, action="restarting it")
                self.start()

    def _read_reports(self) -> None:
        """Every report waiting on the pipe. Never waits long: a report is a few hundred bytes written at once, and
        one cut short by the worker's death ends at the pipe's EOF."""
        reports = self._reports
        if reports is None:
            return
        try:
            while reports.poll():
                batch: dict[tuple[str, str], int] = reports.recv()
                if self._on_result is not None:
                    for (endpoint, outcome), count in batch.items():
                        self._on_result(endpoint, outcome, count)
        except (EOFError, OSError):  # the worker exited: nothing more will come on this pipe
            reports.close()
            self._reports = None
        except Exception as exc:  # a garbled report must not end the supervision (and with it the restarts)
            log.warning("webhooks.report_unreadable", error=f"{type(exc).__name__}: {exc}")
            reports.close()
            self._reports = None

    async def stop(self) -> None:
        process = self._process
        if process is None or not process.is_alive():
            return
        process.terminate()  # SIGTERM: posts in flight are abandoned; their leases run out and they go again
        await asyncio.to_thread(process.join, 15.0)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5)
        self._read_reports()
