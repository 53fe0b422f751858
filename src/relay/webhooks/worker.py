"""The dispatcher in a process of its own, so posting webhooks never takes event-loop time from mail.

`relay serve` starts it (`WorkerProcess`) and restarts it if it dies; it shares nothing with the mail process
but the database, where the outbox and the leases already coordinate every dispatcher of every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from multiprocessing.process import BaseProcess

import structlog

__all__ = ["WorkerProcess"]

log = structlog.get_logger(__name__)


def _main(database_url: str, owner: str, log_level: str, log_format: str, parent: int) -> None:
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
        dispatcher = Dispatcher(WebhookStore(db, SystemClock()), clock=SystemClock(), owner=f"{owner}/webhooks")
        task = asyncio.create_task(dispatcher.run())

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
        await dispatcher.aclose()
        await db.dispose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())


class WorkerProcess:
    """Starts the dispatcher process, checks on it every few seconds (restarting it after a crash), stops it."""

    def __init__(self, database_url: str, owner: str, log_level: str, log_format: str) -> None:
        self._args = (database_url, owner, log_level, log_format, os.getpid())
        self._process: BaseProcess | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no inherited event loop, sockets or locks
        self._process = context.Process(target=_main, args=self._args, name="relay-webhooks", daemon=True)
        self._process.start()

    async def supervise(self, every: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every)
            if self._process is not None and not self._process.is_alive():
                log.error("webhooks.worker_died", exitcode=self._process.exitcode, action="restarting it")
                self.start()

    async def stop(self) -> None:
        process = self._process
        if process is None or not process.is_alive():
            return
        process.terminate()  # SIGTERM: posts in flight are abandoned; their leases run out and they go again
        await asyncio.to_thread(process.join, 15.0)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join, 5)
