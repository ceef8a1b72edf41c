"""The DIMSE server's threads for blocking work (ingest, index queries,
peers we call), each result handed back to the event loop."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Workers"]


class Workers:
    """Threads for the blocking work (ingest, index queries, peers we call),
    each result handed back to the event loop with one
    ``call_soon_threadsafe`` — on the C-STORE path this is leaner than
    ``run_in_executor`` (no concurrent Future, no future chaining).  Grows
    to ``size`` threads so that many ingests can wait for their fsync at
    once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.submit(loop, future, func, args)
        return await future

    def submit(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any],
               func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.size:
                thread = threading.Thread(target=self._work, daemon=True,
                                          name=f"pacsnode-dimse-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        self._queue.put((loop, future, func, args))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, future, func, args = item
            try:
                result, error = func(*args), None
            except BaseException as exc:
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_deliver, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let queued and running work finish, then end the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


def _deliver(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
