"""Receiving PDUs from other servers: the receipt checks, in the spec's order.

Server-Server API, "Checks performed on receipt of a PDU":

1. A valid event of its room version (``Event.from_pdu``), else dropped.
2. Signatures of the sender's server (and of the authorising server for a
   restricted join) verify, else dropped.
3. The content hash matches, else the event is redacted and processed in
   its redacted form (and stored so).
4. It passes the authorization rules against its own auth events (fetched
   with ``/event_auth`` or ``/event`` when missing, stored as outliers after
   the same checks), else rejected.
5. It passes them against the state before it, else rejected. That state is
   the state after its prev events: missing prev events are first fetched
   with ``/get_missing_events`` (and processed like any PDU, oldest first);
   for a gap that cannot be closed the unknown prev event is fetched and
   processed like any PDU with ``/state_ids`` at it as its state before (the
   state events we lack come from ``/state`` or ``/event``, as outliers),
   and several branches are merged by state resolution.
6. It passes them against the room's current state, else soft-failed
   (stored, not shown, not a forward extremity).

Each surviving event is written through ``Persister.commit`` under the
room's lock, which decides how the room's extremities and current state move
(``services/room_head.py``, the same for every event). A bad PDU is answered
with an error for that PDU only.

Depends on: EventStore, Projections, Persister, Keyring, FederationClient.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.core.auth import AuthError, check_auth, check_auth_events_selection
from homeserver.core.canonical import check_content_hash, redact
from homeserver.core.events import Event, InvalidEvent, StateKey, auth_types_for_event
from homeserver.core.room_versions import RoomVersion, UnsupportedRoomVersion, get_room_version
from homeserver.core.signing import SignatureError
from homeserver.core.state_res import MissingStateEvent
from homeserver.services.federation.client import FederationClient, FederationError, encode_path
from homeserver.services.federation.keyring import Keyring
from homeserver.services.locks import KeyedLocks
from homeserver.services.persister import Pending, Persister
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.federation import FederationStore
from homeserver.storage.projections import Projections

log = logging.getLogger(__name__)

MISSING_EVENTS_LIMIT = 20
FETCH_CONCURRENCY = 10
FULL_STATE_THRESHOLD = 25  # fetch /state rather than single events past this


class Dropped(Exception):
    """A PDU that fails the format or signature checks: not stored."""


@dataclass(frozen=True, slots=True)
class Checked:
    """A PDU past checks 1-3."""

    event: Event
    redacted: Mapping[str, Any] | None  # set when the hash check failed


@dataclass(frozen=True, slots=True)
class Outcome:
    event_id: str
    rejected: str | None = None
    soft_failed: bool = False
    already_known: bool = False


def create_event_id(rv: RoomVersion, room_id: str) -> str | None:
    """v12: the create event's id is the room id's hash."""
    return "$" + room_id[1:] if rv.room_id_is_create_event_hash else None


class Ingest:
    def __init__(
        self,
        db: Database,
        store: EventStore,
        projections: Projections,
        persister: Persister,
        keyring: Keyring,
        client: FederationClient,
        fstore: FederationStore,
        server_name: str,
    ) -> None:
        self._db = db
        self._store = store
        self._proj = projections
        self._persister = persister
        self._keyring = keyring
        self._client = client
        self._fstore = fstore
        self._server_name = server_name
        self._locks = KeyedLocks()
        self._origin_locks = KeyedLocks()
        self.transactions_in = 0  # /send transactions handled (metrics)

    @property
    def store(self) -> EventStore:
        return self._store

    @property
    def persister(self) -> Persister:
        return self._persister

    def room_lock(self, room_id: str) -> asyncio.Lock:
        return self._locks(room_id)

    def origin_lock(self, origin: str) -> asyncio.Lock:
        return self._origin_locks(origin)

    # ------------------------------------------------------------ 1-3
    async def check_pdu(self, pdu: Any, rv: RoomVersion) -> Checked:
        """Format, signatures, content hash."""
        if not isinstance(pdu, Mapping):
            raise Dropped("PDU is not an object")
        try:
            ev = Event.from_pdu(pdu, rv)  # type: ignore[attr-defined]
        except (InvalidEvent, ValueError) as e:
            raise Dropped(f"invalid event: {e}") from e
        try:
            await self._keyring.verify_event(pdu, rv)
        except SignatureError as e:
            raise Dropped(f"signature check failed: {e}") from e
        if check_content_hash(pdu):
            return Checked(ev, None)
        red = redact(pdu, rv)
        log.info("content hash of %s does not match: using the redacted event", ev.event_id)
        return Checked(Event.from_pdu(red, rv, event_id=ev.event_id), red)  # type: ignore[attr-defined]

    async def room_version_of(self, room_id: Any) -> RoomVersion | None:
        if not isinstance(room_id, str):
            return None
        return await self._store.room_version(room_id)

    # --------------------------------------------------------- /send entry
    async def receive_pdu(self, origin: str, pdu: Any) -> tuple[str | None, str | None]:
        """Handle one PDU of a transaction: (its event id, an error text or
        None)."""
        return await self._receive_pdu(origin, pdu)

    async def _receive_pdu(self, origin: str, pdu: Any) -> tuple[str | None, str | None]:
        if not isinstance(pdu, Mapping):
            return None, "PDU is not an object"
        room_id = pdu.get("room_id")
        rv = await self.room_version_of(room_id)
        eid = _event_id_or_none(pdu, rv)
        if rv is None or not await self._concerns_us(str(room_id), pdu):
            return eid, f"this server is not in room {room_id}"
        try:
            checked = await self.check_pdu(pdu, rv)
        except Dropped as e:
            log.info("dropped PDU %s from %s: %s", eid, origin, e)
            return eid, str(e)
        async with self.room_lock(checked.event.room_id):
            try:
                out = await self.process(origin, checked, fetch_missing=True)
            except (FederationError, MissingStateEvent) as e:
                log.warning("could not process %s from %s: %s", eid, origin, e)
                return eid, f"could not fetch what the event needs: {e}"
        if out.rejected:
            log.info("rejected %s from %s: %s", out.event_id, origin, out.rejected)
        elif out.soft_failed:
            log.info("soft-failed %s from %s", out.event_id, origin)
        return eid, None

    async def _concerns_us(self, room_id: str, pdu: Mapping[str, Any]) -> bool:
        """We take events of rooms we are in, and membership changes of our
        users in rooms we were in (an unban after we were banned)."""
        if await self._fstore.has_local_member(room_id, self._server_name, ("join",)):
            return True
        target = pdu.get("state_key")
        return (
            pdu.get("type") == "m.room.member"
            and isinstance(target, str)
            and target.endswith(":" + self._server_name)
            and await self._proj.membership(room_id, target) is not None
        )

    # ------------------------------------------------------------- 4-6
    async def process(
        self,
        origin: str,
        checked: Checked,
        *,
        fetch_missing: bool,
        backfill_position: int | None = None,
        known_before: dict[StateKey, str] | None = None,
    ) -> Outcome:
        """Checks 4-6 and the commit; caller holds ``room_lock``. Backfilled
        (older) events take ``backfill_position`` and leave the room's
        current state and extremities alone. ``known_before``: the state
        before the event as its origin told it (/state_ids at a gap)."""
        ev = checked.event
        have = await self._store.get_event(ev.event_id)
        if have is not None:
            if have.outlier:
                # Event rows are append-only: an event first stored as an
                # outlier (a state or auth event fetched for another one)
                # keeps that row; only its timeline entry is missing. Gap
                # events are therefore never stored as outliers
                # (``remote_state_after``).
                log.info("%s arrived as a PDU but is held as an outlier", ev.event_id)
            return Outcome(ev.event_id, have.rejected_reason, have.soft_failed, True)
        rv = ev.room_version
        # 4. Against its auth events.
        rejected: str | None = None
        known = await self.ensure_auth_events(origin, ev)
        try:
            check_auth(ev, self.auth_map_from_auth_events(ev, known))
        except (AuthError, LookupError) as e:
            rejected = f"auth events: {e}"
        # 5. Against the state before it.
        base: int | None = None
        if known_before is not None:
            before, group = known_before, None
        else:
            if fetch_missing:
                await self._fetch_missing_prevs(origin, ev)
            before, group, base = await self.state_before(
                origin, ev, backfill=backfill_position is not None
            )
        if rejected is None:
            try:
                check_auth(ev, await self.auth_map_from_state(ev, before))
            except (AuthError, LookupError) as e:
                rejected = f"state before: {e}"
        return await self._commit(
            checked, before, group, rejected, rv, base=base, backfill_position=backfill_position
        )

    def auth_map_from_auth_events(
        self, ev: Event, known: Mapping[str, StoredEvent]
    ) -> dict[StateKey, Event]:
        rv = ev.room_version
        cited: list[Event] = []
        for aid in ev.auth_events:
            se = known.get(aid)
            if se is None:
                raise LookupError(f"missing auth event {aid}")
            if se.rejected_reason is not None:
                raise AuthError(f"auth event {aid} was rejected")
            if se.event.room_id != ev.room_id:
                raise AuthError(f"auth event {aid} is in another room")
            cited.append(se.event)
        if ev.type == "m.room.create":
            return {}
        allowed = auth_types_for_event(rv, ev.type, ev.state_key, ev.sender, ev.content)
        check_auth_events_selection(ev, cited, allowed)
        out = {a.state_tuple: a for a in cited}
        cid = create_event_id(rv, ev.room_id)
        if cid is not None:
            create = known.get(cid)
            if create is None:
                raise LookupError("missing the room's create event")
            out[("m.room.create", "")] = create.event
        return out

    async def auth_map_from_state(
        self, ev: Event, state: Mapping[StateKey, str]
    ) -> dict[StateKey, Event]:
        keys = [
            *auth_types_for_event(ev.room_version, ev.type, ev.state_key, ev.sender, ev.content),
            ("m.room.create", ""),
        ]
        ids = {k: state[k] for k in keys if k in state}
        evs = await self._store.get_event_objs(ids.values())
        return {k: evs[v] for k, v in ids.items() if v in evs}

    # ------------------------------------------------------- auth events
    async def ensure_auth_events(self, origin: str, ev: Event) -> dict[str, StoredEvent]:
        needed = set(ev.auth_events)
        cid = create_event_id(ev.room_version, ev.room_id)
        if cid is not None and ev.type != "m.room.create":
            needed.add(cid)
        known = await self._store.get_events(needed)
        missing = needed - known.keys()
        if not missing:
            return known
        try:
            resp = await self._client.get_json(
                origin,
                encode_path("/_matrix/federation/v1/event_auth/{}/{}", ev.room_id, ev.event_id),
            )
            chain = resp.get("auth_chain") if isinstance(resp, dict) else None
            if isinstance(chain, list):
                await self.persist_outliers(origin, ev.room_id, ev.room_version, chain)
        except FederationError as e:
            log.info("event_auth for %s from %s failed: %s", ev.event_id, origin, e)
        known = await self._store.get_events(needed)
        missing = needed - known.keys()
        if missing:
            await self.fetch_events(origin, ev.room_id, ev.room_version, missing)
            known = await self._store.get_events(needed)
        return known

    async def fetch_events(
        self, origin: str, room_id: str, rv: RoomVersion, event_ids: Iterable[str]
    ) -> None:
        """GET /event/{id} for each and store them as outliers."""
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)
        got: list[Any] = []

        async def one(eid: str) -> None:
            async with sem:
                try:
                    resp = await self._client.get_json(
                        origin, encode_path("/_matrix/federation/v1/event/{}", eid)
                    )
                except FederationError as e:
                    log.info("fetching %s from %s failed: %s", eid, origin, e)
                    return
                for p in resp.get("pdus", []) if isinstance(resp, dict) else []:
                    got.append(p)

        await asyncio.gather(*(one(e) for e in event_ids))
        if got:
            await self.persist_outliers(origin, room_id, rv, got)

    async def persist_outliers(
        self, origin: str, room_id: str, rv: RoomVersion, pdus: Sequence[Any]
    ) -> dict[str, Event]:
        """Check and store events as outliers (state and auth chains):
        format, signatures, hash, and auth against their own auth events.
        Events whose auth events cannot be found are not stored."""
        return await self._persist_outliers(origin, room_id, rv, pdus)

    async def _persist_outliers(
        self, origin: str, room_id: str, rv: RoomVersion, pdus: Sequence[Any]
    ) -> dict[str, Event]:
        await self._prefetch_keys(pdus)
        checked: dict[str, Checked] = {}
        for pdu in pdus:
            try:
                c = await self.check_pdu(pdu, rv)
            except Dropped as e:
                log.info("dropped outlier from %s: %s", origin, e)
                continue
            if c.event.room_id != room_id:
                continue
            checked.setdefault(c.event.event_id, c)
        existing = await self._store.get_events(checked)
        todo = {k: v for k, v in checked.items() if k not in existing}
        out: dict[str, Event] = {k: v.event for k, v in checked.items() if k in existing}
        if not todo:
            return out
        # Topological order over auth edges within the batch.
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(eid: str) -> None:
            stack = [(eid, iter(todo[eid].event.auth_events))]
            state[eid] = 1
            while stack:
                node, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[node] = 2
                    order.append(node)
                elif nxt in todo and nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(todo[nxt].event.auth_events)))

        for eid in sorted(todo, key=lambda e: todo[e].event.depth):
            if eid not in state:
                visit(eid)
        needed = {a for c in todo.values() for a in c.event.auth_events} - todo.keys()
        cid = create_event_id(rv, room_id)
        if cid is not None:
            needed.add(cid)
        known: dict[str, StoredEvent] = dict(await self._store.get_events(needed - todo.keys()))
        entries: list[Pending] = []
        for eid in order:
            c = todo[eid]
            ev = c.event
            try:
                amap = self.auth_map_from_auth_events(ev, known)
            except LookupError as e:
                log.info("outlier %s lacks auth events (%s): not stored", eid, e)
                continue
            except AuthError as e:
                amap = None
                reason: str | None = f"auth events: {e}"
            if amap is not None:
                try:
                    check_auth(ev, amap)
                    reason = None
                except AuthError as e:
                    reason = f"auth events: {e}"
            known[eid] = StoredEvent(ev, 0, reason, False, True, None)
            entries.append(
                Pending(
                    event=ev,
                    state_before=None,
                    outlier=True,
                    rejected_reason=reason,
                    redacted_pdu=c.redacted,
                )
            )
            out[eid] = ev
        if entries:
            async with self._db.pool.acquire() as conn:
                # Outliers do not move the room's head: no room lock needed.
                await self._persister.commit(conn, room_id, entries)
        return out

    async def _prefetch_keys(self, pdus: Sequence[Any]) -> None:
        """Look up the keys of the servers of the senders of ``pdus`` all at
        once, so a large state (a join) waits for one key round trip per
        server concurrently rather than one after another."""
        wanted: dict[tuple[str, str], int] = {}
        for pdu in pdus:
            if not isinstance(pdu, Mapping):
                continue
            sigs, ts, sender = pdu.get("signatures"), pdu.get("origin_server_ts"), pdu.get("sender")
            if not isinstance(sigs, Mapping) or not isinstance(ts, int):
                continue
            if not isinstance(sender, str) or ":" not in sender:
                continue
            # Only the servers whose signatures the receipt checks require
            # (the sender's; a restricted join's vouching server is rare).
            server = sender.split(":", 1)[1]
            keys = sigs.get(server)
            for kid in keys if isinstance(keys, Mapping) else ():
                if isinstance(kid, str) and kid.startswith("ed25519:"):
                    wanted.setdefault((server, kid), ts)
        if len({s for s, _ in wanted}) > 1:
            await asyncio.gather(
                *(self._keyring.get_key(s, k, ts) for (s, k), ts in wanted.items()),
                return_exceptions=True,
            )

    # ---------------------------------------------------------- prev events
    async def _fetch_missing_prevs(self, origin: str, ev: Event) -> None:
        prevs = await self._store.get_events(ev.prev_events)
        missing = [p for p in ev.prev_events if p not in prevs]
        if not missing:
            return
        earliest = await self._store.forward_extremities(ev.room_id)
        try:
            resp = await self._client.post_json(
                origin,
                encode_path("/_matrix/federation/v1/get_missing_events/{}", ev.room_id),
                {
                    "earliest_events": earliest,
                    "latest_events": [ev.event_id],
                    "limit": MISSING_EVENTS_LIMIT,
                    "min_depth": 0,
                },
            )
        except FederationError as e:
            log.info("get_missing_events from %s failed: %s", origin, e)
            return
        events = resp.get("events") if isinstance(resp, dict) else None
        if not isinstance(events, list):
            return
        log.info("get_missing_events: %d before %s from %s", len(events), ev.event_id, origin)
        checked: list[Checked] = []
        for pdu in events:
            try:
                c = await self.check_pdu(pdu, ev.room_version)
            except Dropped as e:
                log.info("dropped missing event from %s: %s", origin, e)
                continue
            if c.event.room_id == ev.room_id:
                checked.append(c)
        for c in sorted(checked, key=lambda c: (c.event.depth, c.event.origin_server_ts)):
            try:
                await self.process(origin, c, fetch_missing=False)
            except FederationError as e:
                log.info("processing missing event %s failed: %s", c.event.event_id, e)

    async def state_before(
        self, origin: str, ev: Event, *, backfill: bool = False
    ) -> tuple[dict[StateKey, str], int | None, int | None]:
        """The state before ``ev`` (after its prev events, merged), the
        state group that holds it exactly if there is one, and else a group
        of one of its prev events to store it as a delta against."""
        if not ev.prev_events:
            return {}, None, None
        prevs = await self._store.get_events(ev.prev_events)
        states: list[dict[StateKey, str]] = []
        groups: list[int | None] = []
        for p in dict.fromkeys(ev.prev_events):
            se = prevs.get(p)
            if se is not None and not se.outlier:
                states.append(dict(await self._store.state_at_group(se.state_group)))
                groups.append(se.state_group)
            else:
                states.append(
                    await self.remote_state_after(
                        origin, ev.room_id, ev.room_version, p, backfill=backfill
                    )
                )
                groups.append(None)
        known = next((g for g in groups if g is not None), None)
        if all(s == states[0] for s in states[1:]):
            return states[0], known, None
        return await self.resolve(ev.room_version, ev.room_id, states), None, known

    async def remote_state_after(
        self, origin: str, room_id: str, rv: RoomVersion, event_id: str, *, backfill: bool = False
    ) -> dict[StateKey, str]:
        """The state after a prev event we lack (a gap /get_missing_events
        did not close), as ``origin`` sees it.

        The event itself is fetched and processed like any PDU — in the
        timeline, or in backfilled history when ``backfill`` — with /state_ids
        at it as the state before it, so it is not kept as an outlier: event
        rows are append-only, and an outlier could never join the timeline
        when the event later arrives by /send or backfill. An event we hold
        as an outlier already (a state or auth event fetched earlier) stays
        one: its state after is the state before it plus itself."""
        se = await self._store.get_event(event_id)
        if se is not None and not se.outlier:
            return dict(await self._store.state_at_group(se.state_group))
        before = await self._remote_state_before(origin, room_id, rv, event_id)
        if se is None:
            checked = await self._fetch_pdu(origin, rv, event_id)
            if checked.event.room_id != room_id:
                raise FederationError(
                    origin, None, None, f"gap event {event_id} is not in the room"
                )
            pos = (await self._fstore.backfill_positions(1))[0] if backfill else None
            await self.process(
                origin, checked, fetch_missing=False, backfill_position=pos, known_before=before
            )
            se = await self._store.get_event(event_id)
            if se is None:
                raise FederationError(origin, None, None, f"gap event {event_id} was not stored")
            if not se.outlier:
                return dict(await self._store.state_at_group(se.state_group))
        state = dict(before)
        if se.event.is_state and se.rejected_reason is None:
            state[se.event.state_tuple] = event_id
        return state

    async def _remote_state_before(
        self, origin: str, room_id: str, rv: RoomVersion, event_id: str
    ) -> dict[StateKey, str]:
        """/state_ids at ``event_id`` (the state before it), every event of
        it and of its auth chain stored (as outliers) or the PDU fails."""
        resp = await self._client.get_json(
            origin,
            encode_path("/_matrix/federation/v1/state_ids/{}", room_id),
            {"event_id": event_id},
        )
        pdu_ids = [i for i in resp.get("pdu_ids", []) if isinstance(i, str)]
        log.info("state_ids: %d state events at gap %s from %s", len(pdu_ids), event_id, origin)
        chain_ids = [i for i in resp.get("auth_chain_ids", []) if isinstance(i, str)]
        wanted = set(pdu_ids) | set(chain_ids)
        missing = wanted - await self._store.have_events(wanted)
        if len(missing) > FULL_STATE_THRESHOLD:
            full = await self._client.get_json(
                origin,
                encode_path("/_matrix/federation/v1/state/{}", room_id),
                {"event_id": event_id},
            )
            pdus = list(full.get("auth_chain", [])) + list(full.get("pdus", []))
            await self.persist_outliers(origin, room_id, rv, pdus)
            missing = wanted - await self._store.have_events(wanted)
        if missing:
            await self.fetch_events(origin, room_id, rv, missing)
        evs = await self._store.get_events(pdu_ids)
        lacking = [i for i in pdu_ids if i not in evs]
        if lacking:
            # A state we cannot see whole is not the state: fail this PDU
            # (its sender retries) rather than resolve a different question.
            raise FederationError(
                origin, None, None, f"state events {lacking[:5]} at {event_id} could not be fetched"
            )
        state: dict[StateKey, str] = {}
        for i in pdu_ids:
            se = evs[i]
            if se.event.is_state and se.rejected_reason is None:
                state[se.event.state_tuple] = i
        return state

    async def _fetch_pdu(self, origin: str, rv: RoomVersion, event_id: str) -> Checked:
        """GET /event/{id}, checks 1-3; the answer must be that event."""
        resp = await self._client.get_json(
            origin, encode_path("/_matrix/federation/v1/event/{}", event_id)
        )
        pdus = resp.get("pdus") if isinstance(resp, dict) else None
        if not isinstance(pdus, list) or len(pdus) != 1:
            raise FederationError(origin, None, None, f"/event/{event_id}: no single PDU")
        try:
            checked = await self.check_pdu(pdus[0], rv)
        except Dropped as e:
            raise FederationError(origin, None, None, f"/event/{event_id}: {e}") from e
        if checked.event.event_id != event_id:
            raise FederationError(
                origin, None, None, f"/event/{event_id} answered {checked.event.event_id}"
            )
        return checked

    async def resolve(
        self, rv: RoomVersion, room_id: str, states: Sequence[Mapping[StateKey, str]]
    ) -> dict[StateKey, str]:
        """State resolution over several states of the room (every event
        they need is stored by now: ``remote_state_after`` fetched them)."""
        return await self._persister.planner.resolver.resolve(rv, room_id, states)

    # ---------------------------------------------------------------- commit
    async def _commit(
        self,
        checked: Checked,
        before: dict[StateKey, str],
        group: int | None,
        rejected: str | None,
        rv: RoomVersion,
        *,
        base: int | None = None,
        backfill_position: int | None = None,
    ) -> Outcome:
        ev = checked.event
        room_id = ev.room_id
        async with self._db.pool.acquire() as conn:
            await self._persister.lock_room(conn, room_id)
            try:
                if await self._store.have_events([ev.event_id]):
                    return Outcome(ev.event_id, already_known=True)
                soft = False
                if rejected is None and backfill_position is None:
                    soft = await self._soft_failed(conn, ev, before)
                if group is None:
                    group = await self.snapshot_state_before(conn, ev, before, base)
                entry = Pending(
                    event=ev,
                    state_before=before,
                    before_group=group,
                    rejected_reason=rejected,
                    soft_failed=soft,
                    redacted_pdu=checked.redacted,
                )
                await self._persister.commit(
                    conn,
                    room_id,
                    [entry],
                    backfill_positions=(
                        [backfill_position] if backfill_position is not None else None
                    ),
                )
            finally:
                await self._persister.unlock_room(conn, room_id)
        return Outcome(ev.event_id, rejected, soft)

    async def snapshot_state_before(
        self, conn: Any, ev: Event, before: Mapping[StateKey, str], base: int | None = None
    ) -> int:
        """A state group for a state before that is not the state after one
        event (a merge of branches, a state fetched at a gap), remembered for
        /state_ids at ``ev``: a delta against ``base`` (a prev event's group)
        when given, so the cost is that of the difference, not of the room's
        whole state."""
        delta: dict[StateKey, str | None] = {}
        if base is not None:
            base_state = await self._store.state_at_group(base, conn)
            delta = {k: v for k, v in before.items() if base_state.get(k) != v}
            delta.update({k: None for k in base_state if k not in before})
        group = await self._store.create_state_group(conn, ev.room_id, base, delta, before)
        await self._fstore.record_state_before(conn, ev.event_id, group)
        return group

    async def _soft_failed(self, conn: Any, ev: Event, before: Mapping[StateKey, str]) -> bool:
        """6. Against the room's current state — as the spec's servers do it,
        the resolution of the current state (that of the forward extremities)
        with the state before the event, so that an event from a branch we
        merely have not merged yet is not hidden for good. When the event
        cites exactly the room's extremities, that is the state before it,
        which check 5 already passed."""
        ext = await self._store.forward_extremities(ev.room_id, conn)
        if set(ext) == set(ev.prev_events):
            return False
        current = await self._store.current_state_ids(ev.room_id, conn)
        state = await self._persister.planner.resolver.resolve(
            ev.room_version, ev.room_id, [current, before], conn=conn
        )
        try:
            check_auth(ev, await self.auth_map_from_state(ev, state))
        except (AuthError, LookupError) as e:
            log.info("soft-failing %s: %s", ev.event_id, e)
            return True
        return False


def _event_id_or_none(pdu: Mapping[str, Any], rv: RoomVersion | None) -> str | None:
    from homeserver.core.canonical import compute_event_id

    try:
        return compute_event_id(pdu, rv or get_room_version("12"))
    except Exception:
        return None


def parse_room_version(value: Any) -> RoomVersion | None:
    try:
        return get_room_version(value)
    except UnsupportedRoomVersion:
        return None
