"""Rebuilding and verifying projections from the event log alone.

``rebuild_room`` clears a room's projection rows and derives them again:
forward extremities are the accepted events nothing accepted points back to;
the current state is the state after the single extremity, or the
resolution of the extremities' states; every other projection follows from
the accepted events and that state through the same ``Projections.apply``
the write path uses. ``verify_room`` runs the rebuild inside a transaction
that is rolled back and reports the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.events import Event, StateKey
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, accepted_events, all_room_ids
from homeserver.storage.projections import Accepted, Projections


@dataclass
class Drift:
    room_id: str
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)  # missing, unexpected

    @property
    def clean(self) -> bool:
        return not self.tables


class _Rollback(Exception):
    pass


class ProjectionRebuilder:
    def __init__(self, db: Database, store: EventStore, projections: Projections) -> None:
        self._db = db
        self._store = store
        self._proj = projections

    async def current_state(self, extremities: list[str]) -> Mapping[StateKey, str]:
        if not extremities:
            return {}
        evs = await self._store.get_events(extremities)
        states = [
            await self._store.state_at_group(evs[e].state_group) for e in extremities if e in evs
        ]
        if len(states) == 1:
            return states[0]
        from homeserver.core.state_res import resolve_state

        rv = next(iter(evs.values())).event.room_version
        ids = {i for s in states for i in s.values()}
        chains = []
        for s in states:
            chains.append(await self._store.auth_chain_ids(s.values()) | set(s.values()))
        needed = ids | set().union(*chains)
        events = await self._store.get_event_objs(needed)
        return resolve_state(rv, states, events, chains)

    async def _rebuild(self, conn: Any, room_id: str) -> None:
        await self._proj.clear(conn, room_id)
        extremities = await self._proj.computed_extremities(conn, room_id)
        state = await self.current_state(extremities)
        events = await self._store.get_event_objs(state.values())
        delta: dict[StateKey, Event | None] = {
            k: events[v] for k, v in state.items() if v in events
        }
        accepted = await accepted_events(self._store, conn, room_id)
        await self._proj.apply(
            conn,
            room_id,
            [Accepted(se.event, se.stream_ordering) for se in accepted],
            delta,
            [],
            extremities,
        )

    async def rebuild_room(self, room_id: str) -> None:
        async with self._db.transaction() as conn:
            await self._lock(conn, room_id)
            await self._rebuild(conn, room_id)

    async def verify_room(self, room_id: str) -> Drift:
        drift = Drift(room_id)
        try:
            async with self._db.transaction() as conn:
                await self._lock(conn, room_id)
                before = await self._proj.snapshot(conn, room_id)
                await self._rebuild(conn, room_id)
                after = await self._proj.snapshot(conn, room_id)
                for table in before:
                    missing = after[table] - before[table]
                    unexpected = before[table] - after[table]
                    if missing or unexpected:
                        drift.tables[table] = (len(missing), len(unexpected))
                raise _Rollback
        except _Rollback:
            pass
        return drift

    async def _lock(self, conn: Any, room_id: str) -> None:
        # Same lock as writers (transaction-scoped here).
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", 0x6873, room_id)

    async def rooms(self, room_id: str | None) -> list[str]:
        return [room_id] if room_id else await all_room_ids(self._db)

    async def verify_all(
        self, room_id: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> list[Drift]:
        rooms = await self.rooms(room_id)
        out = []
        for i, r in enumerate(rooms):
            d = await self.verify_room(r)
            if not d.clean:
                out.append(d)
            if progress:
                progress(i + 1, len(rooms))
        return out

    async def rebuild_all(
        self, room_id: str | None = None, progress: Callable[[int, int], None] | None = None
    ) -> int:
        rooms = await self.rooms(room_id)
        for i, r in enumerate(rooms):
            await self.rebuild_room(r)
            if progress:
                progress(i + 1, len(rooms))
        return len(rooms)
