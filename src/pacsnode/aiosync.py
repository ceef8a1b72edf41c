"""fsync from an asyncio loop without a thread: Linux AIO's IOCB_CMD_FSYNC.

A thread pool fsync needs the GIL twice (to start the call and to hand the
result back), so on a loop that parses the next header meanwhile the fsync
did not start until the loop paused, and each one cost two thread switches.
The kernel runs an AIO fsync in its own workqueue (Linux >= 4.18) and says
so on an eventfd the loop watches: the fsync starts at once, beside the
parse, and nothing but the loop holds the GIL.

Hand-written with ctypes: neither the standard library nor a maintained
package binds AIO fsync for asyncio.  ``AioSync.create`` returns None where
the calls are missing or refused (other systems, seccomp), and callers keep
their thread pool.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import platform
from typing import Any

__all__ = ["AioSync"]

log = logging.getLogger("pacsnode.storage")

#: io_setup, io_destroy, io_getevents, io_submit by architecture.
_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
_IOCB_CMD_FSYNC = 2
_IOCB_FLAG_RESFD = 1
#: Most fsyncs in flight on one loop; more wait for a free slot.
DEPTH = 128


class _Iocb(ctypes.Structure):  # struct iocb (linux/aio_abi.h), little-endian
    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
                ("aio_rw_flags", ctypes.c_int32), ("aio_lio_opcode", ctypes.c_uint16),
                ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class _Event(ctypes.Structure):  # struct io_event
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64),
                ("res", ctypes.c_int64), ("res2", ctypes.c_int64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class AioSync:
    """fsyncs submitted from one event loop, each answered by a future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, libc: Any, numbers: tuple[int, ...],
                 ctx: int, eventfd: int) -> None:
        self.loop = loop
        self._libc = libc
        self._destroy, self._getevents, self._submit = numbers[1:]
        self._ctx = ctx
        self._eventfd = eventfd
        self._pending: dict[int, tuple[asyncio.Future[None], int, _Iocb]] = {}
        self._next = 1
        self._events = (_Event * 64)()
        self._zero = _Timespec(0, 0)
        loop.add_reader(eventfd, self._completed)

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop) -> "AioSync | None":
        numbers = _SYSCALLS.get(platform.machine())
        if numbers is None or not hasattr(os, "eventfd"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            ctx = ctypes.c_ulong(0)
            if libc.syscall(ctypes.c_long(numbers[0]), ctypes.c_uint(DEPTH),
                            ctypes.byref(ctx)) < 0:
                log.info("AIO fsync unavailable (io_setup: %s); fsync on threads",
                         os.strerror(ctypes.get_errno()))
                return None
            eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (OSError, AttributeError) as exc:
            log.info("AIO fsync unavailable (%s); fsync on threads", exc)
            return None
        return cls(loop, libc, numbers, ctx.value, eventfd)

    def fsync(self, fd: int) -> asyncio.Future[None] | None:
        """Start fsync(fd); the future is done when it is, and ``fd`` is then
        closed (it is the caller's to close when this returns None: too
        many in flight, or the kernel refused the request)."""
        if len(self._pending) >= DEPTH:
            return None
        tag, self._next = self._next, self._next + 1
        cb = _Iocb(aio_data=tag, aio_lio_opcode=_IOCB_CMD_FSYNC, aio_fildes=fd,
                   aio_flags=_IOCB_FLAG_RESFD, aio_resfd=self._eventfd)
        pointers = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(cb))
        if self._libc.syscall(ctypes.c_long(self._submit), ctypes.c_ulong(self._ctx),
                              ctypes.c_long(1), pointers) != 1:
            return None
        future = self.loop.create_future()
        self._pending[tag] = (future, fd, cb)
        return future

    def _completed(self) -> None:
        try:
            os.eventfd_read(self._eventfd)
        except BlockingIOError:
            return
        while self._pending:
            n = self._libc.syscall(ctypes.c_long(self._getevents), ctypes.c_ulong(self._ctx),
                                   ctypes.c_long(0), ctypes.c_long(len(self._events)),
                                   self._events, ctypes.byref(self._zero))
            if n <= 0:
                return
            for event in self._events[:n]:
                future, fd, _cb = self._pending.pop(event.data)
                os.close(fd)
                if future.done():
                    continue
                if event.res < 0:
                    future.set_exception(OSError(-event.res, os.strerror(-event.res)))
                else:
                    future.set_result(None)

    def close(self) -> None:
        """Forget the loop (after the fsyncs it waits for are done)."""
        self.loop.remove_reader(self._eventfd)
        self._libc.syscall(ctypes.c_long(self._destroy), ctypes.c_ulong(self._ctx))
        for future, fd, _cb in self._pending.values():  # io_destroy waited for them
            os.close(fd)
            if not future.done():
                future.cancel()
        self._pending.clear()
        os.close(self._eventfd)
