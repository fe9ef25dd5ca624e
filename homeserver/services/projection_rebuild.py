"""Rebuilding and verifying projections from the event log alone.

``rebuild_room`` clears a room's projection rows and derives them again:
forward extremities are the accepted events nothing accepted points back to
(since the room's last adopted head: a join through a resident replaces the
head, see ``room_head``); the current state is the state after the single
extremity, or the resolution of the extremities' states; every other projection follows from
the accepted events and that state through the same ``Projections.apply``
the write path uses (event relations, which a trigger derives on the write
path, from the same view: ``storage/relations.py``). ``verify_room`` runs the rebuild inside a transaction
that is rolled back and reports the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.events import Event, StateKey
from homeserver.services.room_head import StateResolver
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, accepted_events, all_room_ids
from homeserver.storage.projections import Accepted, Projections
from homeserver.storage.relations import derive_relations


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
        self._resolver = StateResolver(store)

    async def current_state(self, room_id: str, extremities: list[str]) -> Mapping[StateKey, str]:
        """As the write path decides it (``room_head.HeadPlanner``): the
        state after the single extremity, or the resolution of theirs."""
        if not extremities:
            return {}
        evs = await self._store.get_events(extremities)
        missing = [e for e in extremities if e not in evs]
        if missing:
            raise LookupError(f"extremities {missing} of {room_id} are not stored")
        states = [await self._store.state_at_group(evs[e].state_group) for e in extremities]
        rv = evs[extremities[0]].event.room_version
        return await self._resolver.resolve(rv, room_id, states)

    async def _rebuild(self, conn: Any, room_id: str) -> None:
        await self._proj.clear(conn, room_id)
        extremities = await self._proj.computed_extremities(conn, room_id)
        state = await self.current_state(room_id, extremities)
        events = await self._store.get_event_objs(state.values())
        missing = [v for v in state.values() if v not in events]
        if missing:
            raise LookupError(f"state events {missing} of {room_id} are not stored")
        delta: dict[StateKey, Event | None] = {k: events[v] for k, v in state.items()}
        accepted = await accepted_events(self._store, conn, room_id)
        await self._proj.apply(
            conn,
            room_id,
            [Accepted(se.event, se.stream_ordering) for se in accepted],
            delta,
            [],
            extremities,
        )
        await derive_relations(conn, room_id)

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

    async def state_reset_alarms(
        self, room_id: str | None = None
    ) -> list[tuple[str, str, str, str, str | None, int]]:
        """The recorded state reset alarms (``room_head.StateResetAlarm``)."""
        alarms = await self._store.state_reset_alarms()
        return [a for a in alarms if room_id is None or a[0] == room_id]

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
