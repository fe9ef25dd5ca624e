"""How a room's head moves: forward extremities and current state.

This is the one place that decides, for every append — a local event, a
PDU received by /send, an event returned by send_join, backfill or
get_missing_events, an out-of-band membership — the room's new forward
extremities and its new current state (issue 15, DESIGN rule 13):

1. The new forward extremities are the old ones, less every prev event of
   the new live events (accepted, not outliers, not soft-failed, not
   backfilled), plus those new live events that no other new event cites.
   An event that brings its own state (``Pending.adopt``: our join through
   a resident, an out-of-band membership while no local user is joined)
   replaces the head instead: we hold no live branch of the room to
   resolve it against.
2. The new current state is the state after the only extremity, or the
   resolution of the states after all of them when there are several
   (equal states need none).
3. The delta against the current state is what the projections apply.

The common case needs no read at all: a batch that is one chain built on
exactly the room's extremities (its first event cites all of them and its
state before is the resolution of theirs, which is the current state by
induction) moves the head to its last event, and the current state by its
own state events. ``plan`` takes that branch only when those conditions
are checked; both branches give the same rows.

When a resolution replaces a current state event by one of its ancestors,
or drops a key, a state reset may be under way: it is logged at WARNING,
counted and recorded (``homeserver verify`` lists such rooms). A rollback
can be legitimate — a power level revoked on a branch that loses — so the
alarm reports, it does not refuse.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from homeserver.core.events import Event, StateKey
from homeserver.core.room_versions import RoomVersion
from homeserver.core.state_res import resolve_state
from homeserver.storage.events import EventStore

if TYPE_CHECKING:
    from homeserver.services.persister import Pending

log = logging.getLogger(__name__)

StateMap = Mapping[StateKey, str]


@dataclass(frozen=True, slots=True)
class RoomChange:
    """How the room's current view moves with a batch."""

    state_delta: Mapping[StateKey, Event | None]
    extremities_removed: Sequence[str]
    extremities_added: Sequence[str]


NO_CHANGE = RoomChange({}, [], [])


class StateResolver:
    """State resolution over stored states and events not yet stored.

    Gathers what ``core.state_res.resolve_state`` needs — every event of the
    states, their full auth chains, the v12 create event — from ``new``
    (events being written) and the store. Anything still missing makes the
    resolution raise ``MissingStateEvent``: the caller fetches it first."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.resolutions = 0  # how many resolutions ran (metrics)
        self.resolution_seconds = 0.0  # and the time they took

    async def resolve(
        self,
        rv: RoomVersion,
        room_id: str,
        states: Sequence[StateMap],
        new: Mapping[str, Event] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> dict[StateKey, str]:
        if not states:
            return {}
        if all(s == states[0] for s in states[1:]):
            return dict(states[0])
        new = new or {}
        events: dict[str, Event] = dict(new)
        chains = [await self._auth_chain(set(s.values()), new, conn) for s in states]
        wanted = set().union(*chains)
        if rv.room_id_is_create_event_hash:
            wanted.add("$" + room_id[1:])  # v12: named by the room id, not cited
        events.update(await self._store.get_event_objs(wanted - events.keys(), conn))
        started = time.perf_counter()
        try:
            return resolve_state(rv, list(states), events, chains)
        finally:
            self.resolutions += 1
            self.resolution_seconds += time.perf_counter() - started

    async def _auth_chain(
        self, ids: set[str], new: Mapping[str, Event], conn: asyncpg.Connection | None = None
    ) -> set[str]:
        """``ids`` and every event reachable from them through auth events,
        walking unstored events in memory and stored ones in the store (each
        stored event's chain read once per process: ``EventStore.auth_chains``)."""
        chain = set(ids)
        stored: set[str] = set()
        stack = list(ids)
        while stack:
            e = stack.pop()
            ev = new.get(e)
            if ev is None:
                stored.add(e)
                continue
            for a in ev.auth_events:
                if a not in chain:
                    chain.add(a)
                    stack.append(a)
        if stored:
            for c in (await self._store.auth_chains(stored, conn)).values():
                chain |= c
        return chain


class StateResetAlarm:
    """Reports resolutions that move current state backwards."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.count = 0

    async def check(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        old: StateMap,
        delta: Mapping[StateKey, Event | None],
        known: Mapping[str, Event],
    ) -> None:
        for key, new_ev in delta.items():
            old_id = old.get(key)
            if old_id is None:
                continue
            if new_ev is not None:
                old_ev = known.get(old_id) or (
                    await self._store.get_event_objs([old_id], conn)
                ).get(old_id)
                if old_ev is None or new_ev.depth >= old_ev.depth:
                    continue
                if not await self._store.is_ancestor(conn, new_ev.event_id, old_id, new_ev.depth):
                    continue
            self.count += 1
            log.warning(
                "state reset alarm in %s: %s %r moved from %s back to %s",
                room_id,
                key[0],
                key[1],
                old_id,
                new_ev.event_id if new_ev is not None else "nothing",
            )
            await self._store.record_state_reset(
                conn, room_id, key, old_id, new_ev.event_id if new_ev is not None else None
            )


class HeadPlanner:
    """Computes ``RoomChange`` for an append (see the module docstring)."""

    def __init__(self, store: EventStore, resolver: StateResolver, alarm: StateResetAlarm) -> None:
        self._store = store
        self._resolver = resolver
        self._alarm = alarm

    @property
    def resolver(self) -> StateResolver:
        return self._resolver

    @property
    def alarm(self) -> StateResetAlarm:
        return self._alarm

    async def plan(
        self, conn: asyncpg.Connection, room_id: str, entries: Sequence[Pending]
    ) -> RoomChange:
        """Under the room lock, inside the append transaction, after the
        entries' state groups are assigned."""
        live = [p for p in entries if p.accepted]
        if not live:
            return NO_CHANGE
        old_ext = await self._store.forward_extremities(room_id, conn)
        if any(p.adopt for p in live):
            for p in live:
                if p.adopt:
                    await self._store.record_adopted(conn, room_id, p.event.event_id)
            return await self._general(conn, room_id, live, old_ext)
        if _extends_head(live, old_ext):
            # 1-3 without reads: the head moves to the chain's last event
            # and current state by the chain's own state changes.
            delta: dict[StateKey, Event | None] = {}
            for p in live:
                if p.event.is_state:
                    delta[p.event.state_tuple] = p.event
            return RoomChange(delta, old_ext, [live[-1].event.event_id])
        return await self._general(conn, room_id, live, old_ext)

    async def _general(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        live: Sequence[Pending],
        old_ext: Sequence[str],
    ) -> RoomChange:
        # 1. Extremities.
        ext = list(old_ext)
        for p in live:
            if p.adopt:
                ext = []
            cited = set(p.event.prev_events)
            ext = [e for e in ext if e not in cited]
            ext.append(p.event.event_id)
        new_by_id = {p.event.event_id: p for p in live}
        # 2. Current state: after each extremity, resolved.
        stored = await self._store.get_events([e for e in ext if e not in new_by_id], conn)
        states: list[StateMap] = []
        for e in ext:
            mine = new_by_id.get(e)
            if mine is not None:
                assert mine.state_after is not None
                states.append(mine.state_after)
                continue
            se = stored.get(e)
            if se is None or se.outlier:
                raise LookupError(f"forward extremity {e} of {room_id} is not in the room's DAG")
            states.append(await self._store.state_at_group(se.state_group, conn))
        new_events = {p.event.event_id: p.event for p in live}
        rv = live[0].event.room_version
        new_state = await self._resolver.resolve(rv, room_id, states, new_events, conn)
        # 3. The delta against today's current state.
        current = await self._store.current_state_ids(room_id, conn)
        changed = {k: v for k, v in new_state.items() if current.get(k) != v}
        found = dict(new_events)
        found.update(
            await self._store.get_event_objs(
                [v for v in changed.values() if v not in new_events], conn
            )
        )
        missing = [v for v in changed.values() if v not in found]
        if missing:
            raise LookupError(f"state events {missing} of {room_id} are not stored")
        delta: dict[StateKey, Event | None] = {k: found[v] for k, v in changed.items()}
        for k in current:
            if k not in new_state:
                delta[k] = None
        if len(states) > 1:
            await self._alarm.check(conn, room_id, current, delta, found)
        removed = [e for e in old_ext if e not in ext]
        added = [e for e in ext if e not in old_ext]
        return RoomChange(delta, removed, added)


def _extends_head(live: Sequence[Pending], old_ext: Sequence[str]) -> bool:
    """The batch is one chain whose first event cites exactly the room's
    forward extremities (so its state before is the current state)."""
    first = live[0]
    if set(first.event.prev_events) != set(old_ext):
        return False
    return all(
        list(b.event.prev_events) == [a.event.event_id] and b.chain_previous
        for a, b in itertools.pairwise(live)
    )
