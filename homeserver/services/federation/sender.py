"""Outbound federation: a per-destination queue kept in PostgreSQL.

Local events are queued inside the transaction that appends them (a
``Persister.in_transaction`` hook), for every server with a joined member in
the room after the event, plus the target's server for kicks and bans; EDUs
(typing, receipts) are queued when they happen. One worker per destination
sends the queue in order as transactions of at most 50 PDUs and 100 EDUs
(``PUT /_matrix/federation/v1/send/{txnId}``, a txn id unique per batch and
stable across retries of it), deletes what the destination acknowledged,
and backs off exponentially (with jitter, up to a cap) while the destination
is unreachable. When the destination contacts us, or the backoff ends, the
queue is caught up. Several processes may share the database: a lease row
in ``federation_destinations`` makes one of them the sender of a destination.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg

from homeserver.core.ids import UserID
from homeserver.services.clock import now_ms
from homeserver.services.errors import log_background_failure
from homeserver.services.federation.client import FederationClient, FederationError, encode_path
from homeserver.services.persister import Pending
from homeserver.storage.events import EventStore
from homeserver.storage.federation import FederationStore

log = logging.getLogger(__name__)

UP_RECHECK_S = 10.0

MAX_PDUS = 50
MAX_EDUS = 100
LEASE_MS = 120_000
SWEEP_S = 30.0
STOP_DRAIN_S = 10.0
TYPING_EDU_MAX_AGE_MS = 30_000


def _server(user_id: str) -> str:
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class FederationSender:
    def __init__(
        self,
        store: FederationStore,
        events: EventStore,
        client: FederationClient,
        server_name: str,
        *,
        backoff_initial_ms: int = 1_000,
        backoff_max_ms: int = 300_000,
    ) -> None:
        self._store = store
        self._events = events
        self._client = client
        self._server_name = server_name
        self._initial = backoff_initial_ms
        self._max = backoff_max_ms
        self._owner = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._queued_now: dict[str, set[str]] = {}  # event id → destinations (until commit)
        self._seen_up: dict[str, float] = {}  # destination → when it last contacted us
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        # Whether this process runs the sending duty (the federation-sender
        # lease, storage/leases.py); another process sends while it is not.
        self.active = True
        # Told (at most every UP_RECHECK_S) that a destination contacted us.
        self.up_listeners: list[Callable[[str], None]] = []
        # Sent transactions, for tests and metrics: destination → count.
        self.sent: dict[str, int] = {}
        self.failed: dict[str, int] = {}  # transactions that failed (retried later)

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._stopping = False
        self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self, drain_s: float = STOP_DRAIN_S) -> None:
        """Stop sending: a transaction on the wire is let finish (up to
        ``drain_s``) so the peer's answer is recorded and the batch not sent
        again; workers waiting out a backoff end at once."""
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for ev in self._wake.values():
            ev.set()
        workers = [t for t in self._tasks.values() if not t.done()]
        if workers:
            _done, late = await asyncio.wait(workers, timeout=drain_s)
            for t in late:
                log.warning("federation sender: a transaction outlived the shutdown drain")
                t.cancel()
        tasks = [t for t in [self._sweeper, *self._tasks.values()] if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for dest in list(self._wake):
            try:
                await self._store.release_lease(dest, self._owner)
            except Exception:
                pass

    async def _sweep(self) -> None:
        while not self._stopping:
            if self.active:
                await self.sweep_now()
            await asyncio.sleep(SWEEP_S)

    def set_active(self, active: bool) -> None:
        """Gain or lose the sending duty. Gaining: everything queued is
        looked at now (the previous holder may have died mid-queue). Losing:
        workers end after the transaction in hand."""
        self.active = active
        if active and not self._stopping:
            asyncio.get_running_loop().create_task(self._take_over())
        else:
            for ev in self._wake.values():
                ev.set()

    async def _take_over(self) -> None:
        """Gaining the duty: the destination leases the previous holder left
        are ours now, not in ``LEASE_MS`` (a process killed while a worker
        held one would otherwise stall that destination for minutes). Should
        the previous holder still finish a transaction in hand, the peer sees
        some PDUs twice, which receiving servers ignore."""
        try:
            freed = await self._store.take_over_leases(self._owner)
            if freed:
                log.info("took over %d destination lease(s) from the previous sender", freed)
        except Exception as e:
            log_background_failure(log, "federation sender could not take over leases", e)
        await self.sweep_now()

    async def sweep_now(self) -> None:
        """Wake the worker of every destination with a queue: wake-ups from
        other processes may have been missed (a database restart)."""
        try:
            for dest in await self._store.queued_destinations():
                self.wake(dest)
        except Exception as e:
            log_background_failure(log, "federation sweep failed", e)

    # ------------------------------------------------------------- queueing
    async def on_commit_in_transaction(
        self, conn: asyncpg.Connection, room_id: str, entries: Sequence[Pending]
    ) -> None:
        """Persister hook: queue this server's new events for the room's
        other servers, in the append transaction."""
        local = [p for p in entries if p.accepted and _server(p.event.sender) == self._server_name]
        if not local:
            return
        servers = await self._store.joined_servers(conn, room_id)
        rows: list[tuple[str, str | None, dict[str, Any] | None]] = []
        for p in local:
            dests = set(servers)
            ev = p.event
            if ev.type == "m.room.member" and ev.state_key and ev.state_key != ev.sender:
                dests.add(_server(ev.state_key))  # kicks, bans, unbans of remote users
            dests.discard(self._server_name)
            dests.discard("")
            for d in sorted(dests):
                rows.append((d, ev.event_id, None))
            self._queued_now[ev.event_id] = dests
        await self._store.enqueue(conn, rows, now_ms())

    def on_committed(self, room_id: str, entries: Sequence[Pending]) -> None:
        for p in entries:
            for d in self._queued_now.pop(p.event.event_id, ()):
                self.wake(d)

    def on_abandoned(self, entries: Sequence[Pending]) -> None:
        """The append did not commit: nothing was queued after all."""
        for p in entries:
            self._queued_now.pop(p.event.event_id, None)

    async def send_pdu(self, event_id: str, destinations: Iterable[str]) -> None:
        """Queue an event (not necessarily ours, e.g. a join we accepted
        through send_join) for the given servers."""
        dests = sorted({d for d in destinations if d and d != self._server_name})
        await self._store.enqueue(None, [(d, event_id, None) for d in dests], now_ms())
        for d in dests:
            self.wake(d)

    async def send_edu(self, destinations: Iterable[str], edu_type: str, content: Any) -> None:
        dests = sorted({d for d in destinations if d and d != self._server_name})
        edu = {"edu_type": edu_type, "content": content}
        await self._store.enqueue(None, [(d, None, edu) for d in dests], now_ms())
        for d in dests:
            self.wake(d)

    def peer_is_up(self, destination: str) -> None:
        """A request from ``destination`` arrived: end its backoff now (the
        database is asked at most every ``UP_RECHECK_S`` per destination,
        unless our own sending to it failed meanwhile)."""
        now = time.monotonic()
        if now - self._seen_up.get(destination, -UP_RECHECK_S) < UP_RECHECK_S:
            return
        if len(self._seen_up) > 100_000:
            self._seen_up.clear()
        self._seen_up[destination] = now
        for listener in self.up_listeners:
            listener(destination)

        async def reset() -> None:
            try:
                if await self._store.reset_backoff(destination):
                    log.info("%s is back: catching up", destination)
                    self.wake(destination)
            except Exception:
                log.exception("resetting backoff of %s", destination)

        if not self._stopping:
            asyncio.get_running_loop().create_task(reset())

    def wake(self, destination: str) -> None:
        if self._stopping or not self.active or destination == self._server_name:
            return
        ev = self._wake.setdefault(destination, asyncio.Event())
        ev.set()
        task = self._tasks.get(destination)
        if task is None or task.done():
            self._tasks[destination] = asyncio.create_task(self._worker(destination))

    # --------------------------------------------------------------- sending
    async def _worker(self, dest: str) -> None:
        wake = self._wake.setdefault(dest, asyncio.Event())
        try:
            while not self._stopping and self.active:
                wake.clear()
                now = now_ms()
                if not await self._store.acquire_lease(dest, self._owner, now, now + LEASE_MS):
                    return  # another process sends to this destination
                d = await self._store.destination(dest)
                if d is not None and d.retry_after_ts > now:
                    try:
                        await asyncio.wait_for(wake.wait(), (d.retry_after_ts - now) / 1000)
                    except TimeoutError:
                        pass
                    continue
                pdus, edus = await self._store.next_batch(dest, MAX_PDUS, MAX_EDUS)
                if not pdus and not edus:
                    await self._store.release_lease(dest, self._owner)
                    if await self._store.queue_length(dest) and not self._stopping:
                        continue  # raced with a new row
                    return
                ok = await self._send_batch(dest, pdus, edus, d.failures if d else 0)
                if not ok:
                    continue
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log_background_failure(log, f"federation sender for {dest} failed", e)
        finally:
            if self._tasks.get(dest) is asyncio.current_task():
                self._tasks.pop(dest, None)

    async def _send_batch(self, dest: str, pdus: list[Any], edus: list[Any], failures: int) -> bool:
        items = pdus + edus
        ids = [i.id for i in items]
        stored = await self._events.get_events([p.event_id for p in pdus])
        pdu_json = [dict(stored[p.event_id].event.pdu) for p in pdus if p.event_id in stored]
        now = now_ms()
        edu_json = [
            e.edu
            for e in edus
            if not (
                e.edu.get("edu_type") == "m.typing" and now - e.created_ts > TYPING_EDU_MAX_AGE_MS
            )
        ]
        first = min(items, key=lambda i: i.id)
        txn_id = f"{first.created_ts}.{first.id}.{max(ids)}.{len(ids)}"
        body = {
            "origin": self._server_name,
            "origin_server_ts": now,
            "pdus": pdu_json,
            "edus": edu_json,
        }
        try:
            if pdu_json or edu_json:
                resp = await self._client.put_json(
                    dest, encode_path("/_matrix/federation/v1/send/{}", txn_id), body
                )
                for eid, result in (resp.get("pdus") or {}).items():
                    if isinstance(result, dict) and result.get("error"):
                        log.info("%s refused %s: %s", dest, eid, result["error"])
        except FederationError as e:
            if e.status is not None and e.status in (400, 403, 404, 413):
                log.warning("%s refused transaction %s (%s): dropped", dest, txn_id, e)
            else:
                backoff = next_backoff_ms(failures, self._initial, self._max, random.random())
                log.info("sending to %s failed (%s); retry in %d ms", dest, e, backoff)
                await self._store.record_failure(dest, backoff, now_ms() + backoff)
                self._seen_up.pop(dest, None)
                self.failed[dest] = self.failed.get(dest, 0) + 1
                return False
        await self._store.delete_outbox(ids)
        await self._store.record_success(dest, now_ms())
        self.sent[dest] = self.sent.get(dest, 0) + 1
        return True

    async def pending(self, destination: str) -> int:
        return await self._store.queue_length(destination)

    async def queue_summary(self) -> list[tuple[str, int, int]]:
        """(destination, queued, oldest created_ts) (metrics, status)."""
        return await self._store.queue_summary()


def next_backoff_ms(failures: int, initial_ms: int, max_ms: int, jitter: float) -> int:
    """The wait after the ``failures``-th failure in a row (0-based): doubling
    from ``initial_ms`` up to ``max_ms``, less up to 20 % (``jitter`` in
    [0, 1)) so that servers which went down together do not retry together."""
    base = min(max_ms, initial_ms * 2 ** min(max(failures, 0), 30))
    return int(base * (1.0 - 0.2 * jitter))


def is_local(user_id: str, server_name: str) -> bool:
    try:
        return UserID.parse(user_id).server_name == server_name
    except ValueError:
        return False
