"""One ``asyncio.Lock`` per key, kept only while someone holds or awaits it.

A plain dict of locks keeps one entry for every key it ever saw; keyed by
what other servers choose (server names, room ids), that is memory a
hostile peer grows at will. Here the entries are weak: a lock lives while a
task holds a reference (it is held or waited on), and two tasks asking for
the same key while either still has it get the same lock.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Hashable


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[Hashable, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def __call__(self, key: Hashable) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock

    def __len__(self) -> int:
        return len(self._locks)
