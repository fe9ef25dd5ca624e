"""Giving freed memory back to the system.

CPython hands every allocation over 512 bytes (event JSON, request and
response bodies, database rows) to the C library's ``malloc``. glibc gives
freed memory back to the system only from the top of its heap; under a
steady churn — the event cache replacing its oldest entries, bodies coming
and going — the free space ends up between live blocks and the process's
RSS climbs far above what it uses. ``scripts/soak`` showed it: after ten
minutes one server's heap held 269 MB from the system with 48 MB in use,
and RSS grew by 25 MB a minute with the event cache already full;
``malloc_trim(0)`` took RSS from 485 MB to 283 MB at once.

``MemoryTrimmer`` calls ``malloc_trim(0)`` (which releases every whole free
page anywhere in the heap, not only at its top) once a minute, in a worker
thread so the event loop does not wait for it. On a C library without it
(musl, macOS) there is nothing to do and the task does not start.

``heap_figures`` tells RSS apart from what is live, for the metrics: the C
heap's bytes in use and held from the system (glibc's ``mallinfo2``) and
the Python objects' allocated blocks. A process whose RSS grows while
these stay flat is fragmenting, not leaking.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 60.0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


class _MallInfo2(ctypes.Structure):
    # glibc 2.33+: struct mallinfo2, every field a size_t
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True, slots=True)
class HeapFigures:
    malloc_in_use: int | None  # bytes in use (heap chunks and mmapped blocks)
    malloc_system: int | None  # bytes the C heap holds from the system
    python_blocks: int  # blocks allocated by Python's object allocator


def _find_mallinfo2() -> Callable[[], _MallInfo2] | None:
    libc = _libc()
    fn = getattr(libc, "mallinfo2", None) if libc is not None else None
    if fn is None:
        return None
    fn.argtypes = []
    fn.restype = _MallInfo2
    return fn  # type: ignore[no-any-return]


_MALLINFO2 = _find_mallinfo2()


def heap_figures() -> HeapFigures:
    if _MALLINFO2 is None:
        return HeapFigures(None, None, sys.getallocatedblocks())
    m = _MALLINFO2()
    return HeapFigures(m.uordblks + m.hblkhd, m.arena + m.hblkhd, sys.getallocatedblocks())


def _find_malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    if libc is None:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class MemoryTrimmer:
    """Returns the C heap's free pages to the system every interval."""

    def __init__(self, interval_s: float = TRIM_INTERVAL_S) -> None:
        self._trim = _find_malloc_trim()
        self._interval = interval_s
        self.trims = 0  # how many times it ran (metrics, tests)

    @property
    def available(self) -> bool:
        return self._trim is not None

    async def trim_now(self) -> None:
        if self._trim is None:
            return
        started = time.perf_counter()
        await asyncio.to_thread(self._trim, 0)
        self.trims += 1
        log.debug("malloc_trim took %.1f ms", (time.perf_counter() - started) * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        if self._trim is None:
            log.info("no malloc_trim in this C library: freed memory is left to it")
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)
            if not stop.is_set():
                await self.trim_now()
