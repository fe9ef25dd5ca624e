"""Freed memory goes back to the system (services/memory.py): a heap left
fragmented by churn — free space between live blocks, where glibc's own
trimming at the top of the heap never reaches — shrinks when the trimmer
runs."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from homeserver.services.memory import MemoryTrimmer


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
async def test_a_fragmented_heap_is_given_back() -> None:
    trimmer = MemoryTrimmer()
    assert trimmer.available  # glibc on the machines we run on
    # 64 MB in blocks over pymalloc's 512 bytes (so from malloc), then all
    # freed but one block in 64, spread over the whole heap, and one more at
    # its top: the free space is between live blocks.
    blocks = [bytearray(2048) for _ in range(32_768)]
    live = blocks[::64]
    top = bytearray(2048)
    del blocks
    before = rss_kb()
    await trimmer.trim_now()
    after = rss_kb()
    print(f"RSS {before} kB → {after} kB after malloc_trim")
    assert trimmer.trims == 1
    assert before - after > 32_000, (before, after)
    assert len(live) == 512 and len(top) == 2048


async def test_the_task_stops_when_asked() -> None:
    stop = asyncio.Event()
    trimmer = MemoryTrimmer(interval_s=0.01)
    task = asyncio.create_task(trimmer.run(stop))
    while trimmer.trims < 2:
        await asyncio.sleep(0.01)
    stop.set()
    await task
