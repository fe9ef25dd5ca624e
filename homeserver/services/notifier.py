"""Wakes readers when the stream moves, in this process and in others.

Writers call ``pg_notify`` inside their transaction (PostgreSQL delivers it
only on commit) and ``local_notify`` right after commit. Every process keeps
one connection LISTENing on the channel, so a long-poll in process A wakes for
an event written through process B. Waiters register the rooms and users they
care about; a notification names the room and the users it concerns.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from homeserver.storage.accounts import AUTH_CHANNEL

log = logging.getLogger(__name__)

CHANNEL = "hs_stream"


def payload(position: int, room_id: str | None, users: Iterable[str] = ()) -> str:
    """``pos room_or_dash user…``: what ``pg_notify`` carries (8000 bytes max)."""
    text = " ".join([str(position), room_id or "-", *users])
    return text[:7900]


class Waiter:
    def __init__(self, rooms: set[str], users: set[str]) -> None:
        self.rooms = rooms
        self.users = users
        self.event = asyncio.Event()


class Notifier:
    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None
        self._by_room: dict[str, set[Waiter]] = defaultdict(set)
        self._by_user: dict[str, set[Waiter]] = defaultdict(set)
        self._any: set[Waiter] = set()
        self._listeners: list[Callable[[int, str | None, list[str]], None]] = []
        self._auth_listeners: list[Callable[[str], None]] = []
        self.position = 0
        self.closing = False

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self._url)
        await self._conn.add_listener(CHANNEL, self._on_notify)
        await self._conn.add_listener(AUTH_CHANNEL, self._on_auth)

    def close_waiters(self) -> None:
        """Server shutdown: end every long-poll now and refuse new waits, so
        the process stops without waiting out clients' timeouts."""
        self.closing = True
        for ws in [*self._by_user.values(), *self._by_room.values(), self._any]:
            for w in ws:
                w.event.set()

    async def stop(self) -> None:
        self.closing = True
        if self._conn is not None:
            try:
                await self._conn.remove_listener(CHANNEL, self._on_notify)
                await self._conn.remove_listener(AUTH_CHANNEL, self._on_auth)
            finally:
                await self._conn.close()
            self._conn = None
        for ws in [*self._by_user.values(), *self._by_room.values(), self._any]:
            for w in ws:
                w.event.set()

    def add_listener(self, fn: Callable[[int, str | None, list[str]], None]) -> None:
        """Called for every stream movement (cache invalidation, etc.)."""
        self._listeners.append(fn)

    def add_auth_listener(self, fn: Callable[[str], None]) -> None:
        """Called with a user id whose tokens or rights changed (any process)."""
        self._auth_listeners.append(fn)

    def _on_auth(self, _conn: Any, _pid: int, _channel: str, user_id: str) -> None:
        for fn in self._auth_listeners:
            fn(user_id)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, data: str) -> None:
        parts = data.split(" ")
        try:
            pos = int(parts[0])
        except ValueError:
            return
        room = None if parts[1] == "-" else parts[1]
        self.local_notify(pos, room, parts[2:])

    def local_notify(self, position: int, room_id: str | None, users: Iterable[str] = ()) -> None:
        users = list(users)
        self.position = max(self.position, position)
        for fn in self._listeners:
            try:
                fn(position, room_id, users)
            except Exception:
                log.exception("stream listener failed")
        woken: set[Waiter] = set(self._any)
        if room_id is not None:
            woken |= self._by_room.get(room_id, set())
        for u in users:
            woken |= self._by_user.get(u, set())
        for w in woken:
            w.event.set()

    def register(self, rooms: Iterable[str], users: Iterable[str], *, any_: bool = False) -> Waiter:
        """Start listening before reading, so that nothing written between
        the read and the wait goes unnoticed; ``any_``: every movement of the
        stream. Pair with ``unregister``."""
        w = Waiter(set(rooms), set(users))
        if self.closing:
            w.event.set()
            return w
        for r in w.rooms:
            self._by_room[r].add(w)
        for u in w.users:
            self._by_user[u].add(w)
        if any_:
            self._any.add(w)
        return w

    def unregister(self, w: Waiter) -> None:
        self._any.discard(w)
        for r in w.rooms:
            s = self._by_room.get(r)
            if s is not None:
                s.discard(w)
                if not s:
                    del self._by_room[r]
        for u in w.users:
            s = self._by_user.get(u)
            if s is not None:
                s.discard(w)
                if not s:
                    del self._by_user[u]

    async def wait(self, rooms: Iterable[str], users: Iterable[str], timeout: float) -> bool:
        """Block until something concerning ``rooms`` or ``users`` happens, or
        ``timeout`` seconds pass. True when woken."""
        if self.closing:
            return False
        w = self.register(rooms, users)
        try:
            return await wait_for(w, timeout)
        finally:
            self.unregister(w)


async def wait_for(w: Waiter, timeout: float) -> bool:
    """True when ``w`` was woken within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(w.event.wait(), timeout)
        return True
    except TimeoutError:
        return False
