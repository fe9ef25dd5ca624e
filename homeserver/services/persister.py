"""The one path by which events enter the log.

Whoever decided what an event is (the local event creator, or federation
ingest after its receipt checks) hands ``Pending`` entries for one room to
``commit``, which in ONE transaction: stores the events and their edges,
their state snapshots (deltas), asks ``room_head.HeadPlanner`` how the
room's forward extremities and current state move (the same computation for
every kind of event), updates every projection, queues the notification;
commits; then wakes local readers (DESIGN rules 7-9, 13).

``commit_plain`` is the one specialisation: a chain of messages built on
exactly the room's extremities, written in one statement. The planner would
give the same change — extremities replaced by the chain's last event, no
state change — and the statement itself checks the premise (it fails unless
the extremities it removes are all the room's extremities, with the room's
lock free), so it writes the same rows or nothing.

Stream positions are reserved before the transaction and released inside
it, so a reader's "current position" never runs past an uncommitted event.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from homeserver.core.events import Event, StateKey
from homeserver.services.clock import now_ms
from homeserver.services.notifier import LocalAppend, Notifier, payload
from homeserver.services.room_head import NO_CHANGE, HeadPlanner, RoomChange
from homeserver.storage.events import EventStore, NewEvent
from homeserver.storage.projections import Accepted, Projections, head_args

log = logging.getLogger(__name__)

_ROOM_LOCK_NS = 0x6873  # advisory lock namespace: writers of one room


@dataclass(slots=True)
class Pending:
    """One event ready to be written, with the state before it.

    ``before_group`` is the state group equal to ``state_before`` when one
    exists (None: the state before was resolved from several branches and
    gets a snapshot of its own). ``chain_previous`` says the state before is
    the state after the previous entry of the same batch. ``adopt``: the
    event brings a state another server vouched for (our join's send_join
    answer, an out-of-band membership) and becomes the room's whole head.
    """

    event: Event
    state_before: Mapping[StateKey, str] | None
    before_group: int | None = None
    chain_previous: bool = False
    rejected_reason: str | None = None
    soft_failed: bool = False
    outlier: bool = False
    txn: tuple[str, str, str] | None = None
    redacted_pdu: Mapping[str, Any] | None = None
    adopt: bool = False
    # Filled by commit:
    stream_ordering: int = 0
    state_group: int | None = None
    state_after: Mapping[StateKey, str] | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        return self.rejected_reason is None and not self.soft_failed and not self.outlier


class StaleHead(Exception):
    """The room moved while an optimistic writer built its batch."""


def _plain_change(entries: Sequence[Pending]) -> RoomChange:
    """What ``HeadPlanner.plan`` gives for a chain of messages built on the
    room's extremities (its fast branch): the chain's last event replaces
    them, current state stays. The one-statement append checks the premise."""
    assert entries
    for a, b in itertools.pairwise(entries):
        assert list(b.event.prev_events) == [a.event.event_id]
    for p in entries:
        assert p.accepted and not p.event.is_state and p.before_group is not None
    return RoomChange({}, list(entries[0].event.prev_events), [entries[-1].event.event_id])


def _new_events(entries: Sequence[Pending], now: int) -> list[NewEvent]:
    return [
        NewEvent(
            event=p.event,
            stream_ordering=p.stream_ordering,
            state_group=p.state_group,
            rejected_reason=p.rejected_reason,
            soft_failed=p.soft_failed,
            outlier=p.outlier,
            received_ts=now,
            txn=p.txn,
            redacted_pdu=p.redacted_pdu,
        )
        for p in entries
    ]


def room_lock_key(room_id: str) -> tuple[int, str]:
    return (_ROOM_LOCK_NS, room_id)


class Persister:
    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        notifier: Notifier,
        planner: HeadPlanner,
    ) -> None:
        self._store = store
        self._planner = planner
        self._proj = projections
        self._notifier = notifier
        # Run inside the append transaction, after the projections (the
        # federation outbox is filled here, so a committed event is never
        # lost to a crash before it was queued).
        self.in_transaction: list[
            Callable[[asyncpg.Connection, str, Sequence[Pending]], Awaitable[None]]
        ] = []
        # Run after commit (wake the federation sender, ...).
        self.on_committed: list[Callable[[str, Sequence[Pending]], None]] = []
        # Run when the transaction did not commit after ``in_transaction``
        # may have run: what those hooks kept for ``on_committed`` goes.
        self.on_abandoned: list[Callable[[Sequence[Pending]], None]] = []
        # (origin: local|federated, outcome) → events written (metrics); the
        # server name tells local senders from remote ones (set by app.py).
        self.server_name = ""
        self.persisted: dict[tuple[str, str], int] = {}

    @property
    def planner(self) -> HeadPlanner:
        return self._planner

    async def lock_room(self, conn: asyncpg.Connection, room_id: str) -> None:
        """Serialise writers of one room across processes (session lock)."""
        note = getattr(conn, "note_session_lock", None)
        if note is not None:
            note(1)  # before: a cancellation mid-call must still reset
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", _ROOM_LOCK_NS, room_id)

    async def unlock_room(self, conn: asyncpg.Connection, room_id: str) -> None:
        await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", _ROOM_LOCK_NS, room_id)
        note = getattr(conn, "note_session_lock", None)
        if note is not None:
            note(-1)

    async def commit(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        entries: Sequence[Pending],
        *,
        new_room: tuple[str, str, int] | None = None,
        backfill_positions: Sequence[int] | None = None,
        reserved: Sequence[int] | None = None,
    ) -> int:
        """Write ``entries`` (in order) and the room's new head atomically;
        returns the last stream position. ``conn`` must hold the room lock.

        ``new_room``: (room version, creator, ts) of a room being created.
        ``backfill_positions``: older history fetched over federation takes
        these (negative) positions chosen by the caller instead of new ones:
        it sorts before the room's timeline, wakes no /sync and leaves the
        room's head alone.
        ``reserved``: positions the caller already reserved (at least one per
        entry; the rest stay unused), released or abandoned here."""
        if not entries:
            if reserved:
                await self._store.abandon_positions(conn, reserved[0])
            return 0
        backfill = backfill_positions is not None
        if backfill_positions is not None:
            positions = list(backfill_positions)
        elif reserved is not None:
            positions = list(reserved[: len(entries)])
        else:
            positions = await self._store.reserve_positions(conn, len(entries))
        for p, pos in zip(entries, positions, strict=True):
            p.stream_ordering = pos
        now = now_ms()
        try:
            async with conn.transaction():
                rv = entries[0].event.room_version
                if new_room is not None:
                    await self._store.create_room_row(conn, room_id, rv, new_room[1], new_room[2])
                await self._assign_state_groups(conn, room_id, entries)
                change = NO_CHANGE if backfill else await self._planner.plan(conn, room_id, entries)
                users = sorted(
                    {
                        p.event.state_key
                        for p in entries
                        if p.event.type == "m.room.member" and p.event.state_key
                    }
                )
                accepted = [Accepted(p.event, p.stream_ordering) for p in entries if p.accepted]
                head = (
                    None
                    if backfill
                    else head_args(
                        room_id, accepted, change.extremities_removed, change.extremities_added
                    )
                )
                await self._store.insert_events(
                    conn,
                    _new_events(entries, now),
                    # Release the positions and queue the notification with
                    # the events (both happen at commit), and move the head
                    # the planner decided under the room lock.
                    release=None
                    if backfill
                    else (
                        positions[0],
                        self._notifier.channel,
                        payload(positions[-1], room_id, users),
                    ),
                    head=head,
                    head_locked=True,
                )
                await self._proj.apply(
                    conn,
                    room_id,
                    accepted,
                    change.state_delta,
                    change.extremities_removed,
                    change.extremities_added,
                    head_moved=head is not None,
                )
                for hook in self.in_transaction:
                    await hook(conn, room_id, entries)
        except BaseException:
            for fn in self.on_abandoned:
                fn(entries)
            if not backfill:
                try:
                    await self._store.abandon_positions(conn, positions[0])
                except Exception:
                    log.exception("could not release stream positions %s", positions)
            raise
        if backfill:
            self._count(entries)
            return positions[-1]
        self._committed(room_id, positions[-1], users, entries)
        return positions[-1]

    async def commit_plain(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        entries: Sequence[Pending],
        reserved: Sequence[int] | None,
    ) -> int:
        """``commit`` for the commonest append, as one statement without the
        room lock: a chain of local events that change no state (messages),
        in a room no other server has joined, built on extremities read
        without the lock. The statement removes exactly those extremities,
        which must be all the room's, while nobody holds the room lock — or
        fails: then nothing is written and ``StaleHead`` is raised, for the
        caller to rebuild the batch under the lock. A single statement is
        its own transaction: one round trip, one fsync. ``reserved`` None:
        the statement allocates the positions itself (``append_allocating``)."""
        change = _plain_change(entries)
        if reserved is None:
            return await self._commit_allocating(conn, room_id, entries, change)
        positions = list(reserved[: len(entries)])
        for p, pos in zip(entries, positions, strict=True):
            assert p.accepted and not p.event.is_state and p.before_group is not None
            p.stream_ordering = pos
            p.state_group, p.state_after = p.before_group, p.state_before
        try:
            stored = await self._store.insert_events(
                conn,
                _new_events(entries, now_ms()),
                release=(positions[0], self._notifier.channel, payload(positions[-1], room_id)),
                head=head_args(
                    room_id,
                    [Accepted(p.event, p.stream_ordering) for p in entries],
                    change.extremities_removed,
                    change.extremities_added,
                ),
            )
        except BaseException as e:
            try:
                await self._store.abandon_positions(conn, reserved[0])
            except Exception:
                log.exception("could not release stream positions %s", positions)
            if isinstance(e, asyncpg.RaiseError) and "hs_require" in str(e):
                raise StaleHead(room_id) from e
            raise
        # Readers woken by this append may answer from it (sync).
        self._notifier.record_append(LocalAppend(reserved[0], reserved[-1], room_id, stored))
        self._committed(room_id, positions[-1], [], entries)
        return positions[-1]

    async def _commit_allocating(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        entries: Sequence[Pending],
        change: RoomChange,
    ) -> int:
        for p in entries:
            assert p.accepted and not p.event.is_state and p.before_group is not None
            p.state_group, p.state_after = p.before_group, p.state_before
        try:
            stored = await self._store.append_allocating(
                conn,
                _new_events(entries, now_ms()),
                head_args(
                    room_id,
                    [Accepted(p.event, 0) for p in entries],
                    change.extremities_removed,
                    change.extremities_added,
                ),
                self._notifier.channel,
            )
        except asyncpg.RaiseError as e:
            if "hs_require" in str(e):
                raise StaleHead(room_id) from e
            raise
        for p, se in zip(entries, stored, strict=True):
            p.stream_ordering = se.stream_ordering
        first, last = stored[0].stream_ordering, stored[-1].stream_ordering
        self._notifier.record_append(LocalAppend(first, last, room_id, stored))
        self._committed(room_id, last, [], entries)
        return last

    def _committed(
        self, room_id: str, position: int, users: list[str], entries: Sequence[Pending]
    ) -> None:
        """Wake this process's readers (others hear the NOTIFY) and run the
        after-commit hooks. Readers are woken on the next turn of the event
        loop: after the writer has answered its senders, and put its
        connection back in the pool (which hands out the most recently used
        connection first, so a woken /sync that reads goes through a
        database session that is already running)."""
        asyncio.get_running_loop().call_soon(self._notifier.local_notify, position, room_id, users)
        self._count(entries)
        for fn in self.on_committed:
            try:
                fn(room_id, entries)
            except Exception:
                log.exception("after-commit hook failed")

    def _count(self, entries: Sequence[Pending]) -> None:
        for p in entries:
            origin = "local" if p.event.sender.endswith(":" + self.server_name) else "federated"
            outcome = (
                "outlier"
                if p.outlier
                else "rejected"
                if p.rejected_reason is not None
                else "soft_failed"
                if p.soft_failed
                else "accepted"
            )
            key = (origin, outcome)
            self.persisted[key] = self.persisted.get(key, 0) + 1

    async def _assign_state_groups(
        self, conn: asyncpg.Connection, room_id: str, entries: Sequence[Pending]
    ) -> None:
        prev: Pending | None = None
        for p in entries:
            if p.outlier:
                prev = None
                continue
            if p.chain_previous:
                assert prev is not None and prev.state_after is not None
                before, before_group = prev.state_after, prev.state_group
            else:
                assert p.state_before is not None
                before, before_group = p.state_before, p.before_group
            ev = p.event
            changes = (
                ev.is_state
                and p.rejected_reason is None
                and before.get(ev.state_tuple) != ev.event_id
            )
            if not changes and before_group is not None:
                p.state_group, p.state_after = before_group, before
            elif not changes:
                p.state_after = before
                p.state_group = await self._store.create_state_group(
                    conn, room_id, None, {}, before
                )
            else:
                after = dict(before)
                after[ev.state_tuple] = ev.event_id
                p.state_after = after
                p.state_group = await self._store.create_state_group(
                    conn, room_id, before_group, {ev.state_tuple: ev.event_id}, after
                )
            prev = p
