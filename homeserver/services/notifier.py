"""Wakes readers when the stream moves, in this process and in others.

Writers call ``pg_notify`` inside their transaction (PostgreSQL delivers it
only on commit) and ``local_notify`` right after commit. Every process keeps
one connection LISTENing on the channel, so a long-poll in process A wakes for
an event written through process B. Waiters register the rooms and users they
care about; a notification names the room and the users it concerns.

The LISTEN connection is long-lived, so it is kept alive: when it is lost
(PostgreSQL restarted, the network dropped) it is reopened with backoff and
every channel subscribed again. Notifications sent while it was down are
lost for good, so after such a gap the process assumes everything changed:
``gap`` listeners run (the token cache is dropped, the stream position is
re-read, the federation queues are swept) and every waiter is woken to
re-read the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from homeserver.storage.accounts import AUTH_CHANNEL

log = logging.getLogger(__name__)

CHANNEL = "hs_stream"
CHECK_OTHERS_S = 30.0  # how often a process looks whether it is alone
HELLO = "hello"  # a process announcing itself on CHANNEL: "hello <backend pid>"
RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)  # then every 2 s until it works


def payload(position: int, room_id: str | None, users: Iterable[str] = ()) -> str:
    """``pos room_or_dash user…``: what ``pg_notify`` carries (8000 bytes max)."""
    text = " ".join([str(position), room_id or "-", *users])
    return text[:7900]


@dataclass(frozen=True, slots=True)
class LocalAppend:
    """Messages this process appended: stream positions ``first`` …
    ``last`` (all reserved for that append, some maybe unused) hold exactly
    ``events`` of ``room_id``, and nothing else."""

    first: int
    last: int
    room_id: str
    events: Sequence[Any]  # StoredEvent, oldest first


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
        self._appends: deque[LocalAppend] = deque(maxlen=1024)
        self._pid: int | None = None
        self._subscriptions: list[tuple[str, Callable[[str], None]]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._gap_listeners: list[Callable[[], Awaitable[None]]] = []
        self.reconnects = 0  # for tests and logs
        self.wakeups = 0  # waiters woken (metrics)
        self._lock = asyncio.Lock()
        # Another process shares the database (``channel``); conservatively
        # True until ``start`` has looked.
        self.others_listening = True

    def subscribe(self, channel: str, fn: Callable[[str], None]) -> None:
        """Call ``fn(payload)`` for notifications on another channel (from
        any process); subscribe before ``start``."""
        self._subscriptions.append((channel, fn))

    def add_gap_listener(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Awaited after the LISTEN connection came back from a loss:
        whatever was announced meanwhile was missed, so caches drop and
        positions are re-read."""
        self._gap_listeners.append(fn)

    async def start(self) -> None:
        await self._listen()
        self._watcher = asyncio.create_task(self._watch())
        self._keeper = asyncio.create_task(self._keep_listening())

    async def _listen(self) -> None:
        """Open the LISTEN connection, subscribe to every channel, announce
        this process and look for others."""
        conn = await asyncpg.connect(self._url, timeout=5.0)
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
            await conn.add_listener(AUTH_CHANNEL, self._on_auth)
            for channel, fn in self._subscriptions:
                await conn.add_listener(channel, _payload_only(fn))
            conn.add_termination_listener(self._on_lost)
            # Announce this process (after listening, so no announcement of a
            # process starting at the same time is missed), then look for others.
            self._pid = await conn.fetchval(
                "INSERT INTO stream_listeners (backend_pid, started_ts) VALUES "
                "(pg_backend_pid(), (extract(epoch from clock_timestamp()) * 1000)::bigint) "
                "ON CONFLICT (backend_pid) DO UPDATE SET started_ts = EXCLUDED.started_ts "
                "RETURNING backend_pid"
            )
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{HELLO} {self._pid}")
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        await self.check_others()

    def _on_lost(self, conn: Any) -> None:
        if conn is self._conn and not self.closing:
            log.warning("lost the LISTEN connection to the database: reconnecting")
            self._lost.set()

    async def _keep_listening(self) -> None:
        """Reopen the LISTEN connection whenever it is lost, backing off
        while the database stays away; then run the gap listeners."""
        while not self.closing:
            await self._lost.wait()
            self._lost.clear()
            old, self._conn = self._conn, None
            if old is not None:
                old.terminate()
            attempt = 0
            while not self.closing:
                try:
                    await self._listen()
                    break
                except Exception as e:  # whatever it is, the database is not back yet
                    pause = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
                    attempt += 1
                    log.info("LISTEN reconnect %d failed (%s); retry in %.2f s", attempt, e, pause)
                    await asyncio.sleep(pause)
            if self.closing:
                return
            self.reconnects += 1
            log.info(
                "LISTEN connection back after %d attempt(s): assuming everything changed",
                attempt + 1,
            )
            await self.after_gap()

    async def after_gap(self) -> None:
        """Everything may have changed unseen: run the gap listeners (drop
        caches, re-read positions), then wake every waiter to re-read."""
        for fn in self._gap_listeners:
            try:
                await fn()
            except Exception:
                log.exception("gap listener failed")
        self.wake_all()

    def wake_all(self) -> None:
        for ws in [*self._by_user.values(), *self._by_room.values(), self._any]:
            for w in ws:
                w.event.set()

    async def _watch(self) -> None:
        while not self.closing:
            await asyncio.sleep(CHECK_OTHERS_S)
            try:
                await self.check_others()
            except Exception as e:
                # A connection that died without telling us (a dropped
                # network, a protocol asyncpg left mid-operation): reopen
                # it. Whatever it raised, this loop must not end.
                log.warning(
                    "could not look for other server processes (%s: %s): reconnecting",
                    type(e).__name__,
                    e,
                )
                self._lost.set()

    async def check_others(self) -> bool:
        """Whether another server process listens on this database (its
        listening session is alive); forget listeners that are gone. Called
        at start and periodically: a process that left stops costing the
        others their ``pg_notify``."""
        if self._conn is None:
            return self.others_listening
        async with self._lock:
            self.others_listening = bool(
                await self._conn.fetchval(
                    "WITH gone AS (DELETE FROM stream_listeners WHERE backend_pid NOT IN "
                    "  (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)) "
                    "SELECT EXISTS (SELECT 1 FROM stream_listeners l JOIN pg_stat_activity a "
                    "  ON a.pid = l.backend_pid WHERE l.backend_pid <> pg_backend_pid())"
                )
            )
        return self.others_listening

    @property
    def channel(self) -> str | None:
        """The channel writers notify on, or None when this process is alone
        on the database (a notification costs the committing transaction
        and wakes PostgreSQL's listening sessions for nothing)."""
        return CHANNEL if self.others_listening else None

    def close_waiters(self) -> None:
        """Server shutdown: end every long-poll now and refuse new waits, so
        the process stops without waiting out clients' timeouts."""
        self.closing = True
        self.wake_all()

    async def stop(self) -> None:
        self.closing = True
        for task in (self._watcher, self._keeper):
            if task is not None:
                task.cancel()
        self._watcher = self._keeper = None
        self._lost.set()
        if self._conn is not None:
            try:
                try:
                    await self._conn.execute(
                        "DELETE FROM stream_listeners WHERE backend_pid = pg_backend_pid()"
                    )
                except Exception:  # best effort: the row is swept when stale
                    log.debug("could not unregister the listener", exc_info=True)
                await self._conn.remove_listener(CHANNEL, self._on_notify)
                await self._conn.remove_listener(AUTH_CHANNEL, self._on_auth)
                await self._conn.close(timeout=2.0)
            except Exception:  # a dead connection: nothing to close cleanly
                self._conn.terminate()
            self._conn = None
        self.wake_all()

    def record_append(self, append: LocalAppend) -> None:
        """Remember a committed message append (before waking anyone)."""
        self._appends.append(append)

    def appends_after(self, position: int) -> tuple[int, list[LocalAppend]]:
        """The appends that account for *every* stream position after
        ``position`` up to the returned bound, in order: what was written
        there is then known without reading the database. The bound equals
        ``position`` when the next position is not one of them (written by
        another process, or not a message append)."""
        following = sorted((a for a in self._appends if a.first > position), key=lambda a: a.first)
        upto, out = position, []
        for a in following:
            if a.first != upto + 1:
                break
            out.append(a)
            upto = a.last
        return upto, out

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
        if parts[0] == HELLO:
            if len(parts) > 1 and parts[1] != str(self._pid):
                self.others_listening = True  # a process started: notify it
            return
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
        self.wakeups += len(woken)
        for w in woken:
            w.event.set()

    def waiter_count(self) -> int:
        """Long-polls parked now (metrics)."""
        parked: set[Waiter] = set(self._any)
        for group in (self._by_room, self._by_user):
            for ws in group.values():
                parked |= ws
        return len(parked)

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


def _payload_only(fn: Callable[[str], None]) -> Callable[[Any, int, str, str], None]:
    def listener(_conn: Any, _pid: int, _channel: str, data: str) -> None:
        try:
            fn(data)
        except Exception:
            log.exception("notification listener failed")

    return listener


async def wait_for(w: Waiter, timeout: float) -> bool:
    """True when ``w`` was woken within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(w.event.wait(), timeout)
        return True
    except TimeoutError:
        return False
