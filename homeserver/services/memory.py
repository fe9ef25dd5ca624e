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
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 60.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
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
