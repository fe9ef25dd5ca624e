"""Creating local events: build, authorise, persist — one room at a time.

Each room has a queue served by one writer task in this process. The writer
takes every request waiting, holds the room's lock (so other processes wait),
builds the events on top of the room's forward extremities, checks each
against the authorization rules, and commits the whole batch in one
transaction. Many concurrent sends into one room thus cost one fsync, and a
request's events (createRoom's dozen) are all-or-nothing.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from homeserver.core.auth import AuthError, check_auth
from homeserver.core.events import Event, StateKey, auth_types_for_event, build_event
from homeserver.core.room_versions import RoomVersion
from homeserver.services.clock import now_ms
from homeserver.services.persister import Pending, Persister, StaleHead
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore

log = logging.getLogger(__name__)

MAX_DEPTH = 2**53 - 1
MAX_PREV_EVENTS = 10
MAX_BATCH = 200
# Events built between two yields to the event loop (see _build_request).
_BUILD_SLICE = 20


@dataclass(frozen=True, slots=True)
class Draft:
    """What a local user wants to append."""

    type: str
    sender: str
    content: Mapping[str, Any]
    state_key: str | None = None
    redacts: str | None = None
    txn: tuple[str, str, str] | None = None  # (user_id, device_id, txn_id)
    # Checked under the room lock: (user, membership) the user must have now.
    require_membership: tuple[str, str] | None = None


def _plain(d: Draft) -> bool:
    """A draft ``commit_plain`` may write: it changes no state."""
    return d.state_key is None and d.type != "m.room.redaction" and d.redacts is None


class RoomNotFound(Exception):
    pass


class PreconditionFailed(AuthError):
    """A draft's ``require_membership`` did not hold when it was built."""


@dataclass
class _Request:
    drafts: list[Draft]
    future: asyncio.Future[list[Event]]


# Per request: its events, the id of the event its transaction made earlier,
# or why it was refused.
_Outcomes = list[tuple[_Request, "list[Event] | str | BaseException"]]


@dataclass
class _Context:
    """The room's head while a batch is built."""

    room_version: RoomVersion
    state: Mapping[StateKey, str]
    group: int | None
    extremities: list[str]
    depth: int
    events: dict[str, Event] = field(default_factory=dict)
    # The writer's connection (reads under the room lock go through it).
    conn: asyncpg.Connection | None = None

    def copy(self) -> _Context:
        """A copy to build on (the copy's builds do not touch this one)."""
        return _Context(
            self.room_version,
            self.state,
            self.group,
            list(self.extremities),
            self.depth,
            dict(self.events),
        )


class EventCreator:
    def __init__(
        self, db: Database, store: EventStore, persister: Persister, keys: ServerKeys
    ) -> None:
        self._db = db
        self._store = store
        self._persister = persister
        self._keys = keys
        self._queues: dict[str, list[_Request]] = {}
        self._last_create_ts = 0
        # room → whether another server had joined it when last written
        self._federated: dict[str, bool] = {}
        # room → its head after this process's last commit there (local rooms)
        self._heads: dict[str, _Context] = {}
        self.one_statement_appends = 0  # batches _commit_on_known_head wrote
        self._writers: dict[str, asyncio.Task[None]] = {}

    @property
    def store(self) -> EventStore:
        return self._store

    # ------------------------------------------------------------ public
    async def send(self, room_id: str, drafts: list[Draft]) -> list[Event]:
        """Append ``drafts`` to ``room_id`` atomically; raises AuthError."""
        fut: asyncio.Future[list[Event]] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(room_id, []).append(_Request(drafts, fut))
        if room_id not in self._writers:
            self._writers[room_id] = asyncio.create_task(self._writer(room_id))
        return await fut

    async def create_room(self, rv: RoomVersion, drafts: list[Draft]) -> tuple[str, list[Event]]:
        """Write a new room: ``drafts[0]`` is its m.room.create.

        In room v12 the room id is the create event's hash, so two identical
        create events (same creator, content and millisecond) would name the
        same room: create timestamps are kept strictly increasing in this
        process, and a collision with another process is retried."""
        for attempt in range(5):
            room_id = None
            if not rv.room_id_is_create_event_hash:
                room_id = f"!{secrets.token_urlsafe(18)}:{self._keys.server_name}"
            ctx = _Context(rv, {}, None, [], 0)
            self._last_create_ts = max(now_ms(), self._last_create_ts + 1)
            entries, events = await self._build_request(
                ctx, room_id, drafts, create_ts=self._last_create_ts
            )
            room_id = events[0].room_id
            async with self._db.pool.acquire() as conn:
                await self._persister.lock_room(conn, room_id)
                try:
                    if await self._store.room_version(room_id, conn) is not None:
                        continue  # another process made the very same create event
                    await self._persister.commit(
                        conn,
                        room_id,
                        entries,
                        new_room=(rv.identifier, drafts[0].sender, events[0].origin_server_ts),
                    )
                except asyncpg.UniqueViolationError:
                    if attempt == 4:
                        raise
                    continue
                finally:
                    await self._persister.unlock_room(conn, room_id)
            return room_id, events
        raise RuntimeError("could not allocate a room id")

    async def send_with_countersign(
        self,
        room_id: str,
        draft: Draft,
        countersign: Callable[[Event], Awaitable[Event]],
    ) -> Event:
        """Append one event that another server must sign first (an invite of
        a remote user): built and authorised under the room lock, handed to
        ``countersign``, and the event it returns (same id, more signatures)
        committed — all before any other writer of the room moves its head."""
        async with self._db.pool.acquire() as conn:
            await self._persister.lock_room(conn, room_id)
            try:
                ctx = await self._load_context(room_id, conn)
                if ctx is None:
                    raise RoomNotFound(room_id)
                entries, events = await self._build_request(ctx, room_id, [draft])
                signed = await countersign(events[0])
                if signed.event_id != events[0].event_id:
                    raise ValueError("the countersigned event is not the event we built")
                entries[0].event = signed
                ctx.events[signed.event_id] = signed
                await self._persister.commit(conn, room_id, entries)
            finally:
                await self._persister.unlock_room(conn, room_id)
        return signed

    # ------------------------------------------------------------ writer
    async def _writer(self, room_id: str) -> None:
        try:
            while self._queues.get(room_id):
                batch = self._queues[room_id][:MAX_BATCH]
                del self._queues[room_id][:MAX_BATCH]
                try:
                    await self._run_batch(room_id, batch)
                except Exception as e:
                    log.exception("batch for %s failed", room_id)
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(e)
        finally:
            self._writers.pop(room_id, None)
            if not self._queues.get(room_id):
                self._queues.pop(room_id, None)
            else:  # raced with a new request after the loop ended
                self._writers[room_id] = asyncio.create_task(self._writer(room_id))

    async def _run_batch(self, room_id: str, batch: list[_Request]) -> None:
        async with self._db.pool.acquire() as conn:
            done: _Outcomes | None = None
            plain = not self._federated.get(room_id) and all(
                _plain(d) for r in batch for d in r.drafts
            )
            if plain and len(self._writers) == 1:
                # The only writer in this process: one round trip, on the
                # head this process wrote last.
                done = await self._commit_on_known_head(conn, room_id, batch)
            if plain and done is None:
                # Messages try without the room lock (one statement that
                # fails if the room moved meanwhile).
                try:
                    done = await self._build_and_commit(conn, room_id, batch, optimistic=True)
                except StaleHead:
                    done = None
            if done is None:
                await self._persister.lock_room(conn, room_id)
                try:
                    done = await self._build_and_commit(conn, room_id, batch, optimistic=False)
                finally:
                    await self._persister.unlock_room(conn, room_id)
            # Answer the senders before the connection goes back to the pool:
            # their responses then leave ahead of the long-polls this append
            # woke (whose wake-up is queued behind them).
            assert done is not None
            for r, result in done:
                if isinstance(result, BaseException):
                    r.future.set_exception(result)
                elif isinstance(result, str):
                    existing = await self._store.get_event(result)
                    assert existing is not None
                    r.future.set_result([existing.event])
                else:
                    r.future.set_result(result)

    async def _commit_on_known_head(
        self, conn: asyncpg.Connection, room_id: str, batch: list[_Request]
    ) -> _Outcomes | None:
        """Build ``batch`` on the room's head as this process left it and
        append it in one statement that also allocates the stream positions
        (``Persister.commit_plain`` without ``reserved``). None — the caller
        then takes the usual path — when there is no such head, when a
        request is refused (on a head that may be stale, a refusal is not
        trusted), or when the statement fails: the head moved (another
        process wrote), a repeated transaction id, a missing counter."""
        head = self._heads.get(room_id)
        if head is None:
            return None
        ctx = head.copy()
        ctx.conn = conn
        entries, done = await self._build_batch(ctx, room_id, batch, {})
        if not entries or any(isinstance(result, BaseException) for _, result in done):
            return None
        try:
            await self._persister.commit_plain(conn, room_id, entries, None)
        except (StaleHead, asyncpg.PostgresError) as e:
            log.debug("one-statement append to %s fell back: %s", room_id, e)
            self._heads.pop(room_id, None)
            return None
        self._remember_head(room_id, ctx, entries[-1])
        self.one_statement_appends += 1
        return done

    async def _build_and_commit(
        self, conn: asyncpg.Connection, room_id: str, batch: list[_Request], *, optimistic: bool
    ) -> _Outcomes | None:
        """Build ``batch`` on the room's head and commit it: under the room
        lock, or (``optimistic``) without it through ``commit_plain`` —
        None when that does not apply to this room (federated, or its head
        has several branches)."""
        if await self._store.room_version(room_id, conn) is None:
            return [(r, RoomNotFound(room_id)) for r in batch]
        # One round trip: extremities, earlier transactions, positions.
        txns = [r.drafts[0].txn for r in batch if len(r.drafts) == 1 and r.drafts[0].txn]
        wc = await self._store.writer_context(
            conn,
            room_id,
            sum(len(r.drafts) for r in batch),
            [t for t in txns if t is not None],
        )
        reserved = wc.positions
        # Remembered so that sends to a federated room skip the optimistic
        # attempt (which would only read, give up and read again).
        if len(self._federated) > 100_000:
            self._federated.clear()
        self._federated[room_id] = wc.federated
        try:
            ctx = await self._load_context(room_id, conn, wc.extremities)
            assert ctx is not None
            if optimistic and (wc.federated or ctx.group is None):
                return None
            entries, done = await self._build_batch(ctx, room_id, batch, wc.seen_txns)
            if entries:
                reserved = []  # released (or abandoned) by the commit
                if optimistic:
                    await self._persister.commit_plain(conn, room_id, entries, wc.positions)
                else:
                    await self._persister.commit(conn, room_id, entries, reserved=wc.positions)
                if wc.federated:
                    self._heads.pop(room_id, None)
                else:
                    self._remember_head(room_id, ctx, entries[-1])
            return done
        finally:
            if reserved:
                await self._store.abandon_positions(conn, reserved[0])

    async def _build_batch(
        self,
        ctx: _Context,
        room_id: str,
        batch: list[_Request],
        seen_txns: dict[tuple[str, str, str], str],
    ) -> tuple[list[Pending], _Outcomes]:
        """Build and authorise each request of ``batch`` on ``ctx`` (which
        advances); a refused request leaves ``ctx`` as it was, a repeated
        transaction id answers with the event it made before."""
        seen = dict(seen_txns)
        entries: list[Pending] = []
        done: _Outcomes = []
        for r in batch:
            txn = r.drafts[0].txn if len(r.drafts) == 1 else None
            if txn is not None and txn in seen:
                done.append((r, seen[txn]))
                continue
            snapshot = (ctx.state, ctx.group, list(ctx.extremities), ctx.depth)
            try:
                new, events = await self._build_request(
                    ctx, room_id, r.drafts, chained=bool(entries)
                )
            except (AuthError, ValueError) as e:
                ctx.state, ctx.group, ctx.extremities, ctx.depth = snapshot
                done.append((r, e))
                continue
            entries.extend(new)
            if txn is not None:
                seen[txn] = events[0].event_id
            done.append((r, events))
        return entries, done

    def _remember_head(self, room_id: str, ctx: _Context, last: Pending) -> None:
        """The room's head after this process's commit, for building the
        next batch without reading it (``_commit_on_known_head``)."""
        if last.state_group is None or last.state_after is None:
            self._heads.pop(room_id, None)
            return
        if len(self._heads) > 10_000:
            self._heads.clear()
        state = last.state_after
        wanted = set(state.values())
        self._heads[room_id] = _Context(
            room_version=ctx.room_version,
            state=state,
            group=last.state_group,
            extremities=list(ctx.extremities),
            depth=ctx.depth,
            events={k: v for k, v in ctx.events.items() if k in wanted},
        )

    async def _load_context(
        self, room_id: str, conn: asyncpg.Connection, ext_ids: list[str] | None = None
    ) -> _Context | None:
        rv = await self._store.room_version(room_id, conn)
        if rv is None:
            return None
        if ext_ids is None:
            ext_ids = await self._store.forward_extremities(room_id, conn)
        exts = await self._store.get_events(ext_ids, conn)
        if len(exts) != len(set(ext_ids)):
            raise LookupError(f"forward extremities of {room_id} are not stored")
        # Build on every extremity (the newest MAX_PREV_EVENTS of them), so
        # that concurrent writers' branches merge at the next event.
        ordered = sorted(exts.values(), key=lambda s: (-s.event.depth, s.event.event_id))
        ordered = ordered[:MAX_PREV_EVENTS]
        group: int | None
        if len(exts) == 1:
            (only,) = exts.values()
            state = await self._store.state_at_group(only.state_group, conn)
            group = only.state_group
        elif len(ordered) == len(exts):
            # The current state is the resolution of all the extremities'.
            state = await self._store.current_state_ids(room_id, conn)
            group = None
        else:
            states = [await self._store.state_at_group(s.state_group, conn) for s in ordered]
            state = await self._persister.planner.resolver.resolve(rv, room_id, states, conn=conn)
            group = None
        return _Context(
            conn=conn,
            room_version=rv,
            state=state,
            group=group,
            extremities=[s.event.event_id for s in ordered],
            depth=max((s.event.depth for s in ordered), default=0),
        )

    async def _build_request(
        self,
        ctx: _Context,
        room_id: str | None,
        drafts: list[Draft],
        *,
        chained: bool = False,
        create_ts: int | None = None,
    ) -> tuple[list[Pending], list[Event]]:
        """Build and authorise each draft on top of ``ctx``, advancing it."""
        entries: list[Pending] = []
        events: list[Event] = []
        for i, d in enumerate(drafts):
            if i and i % _BUILD_SLICE == 0:
                # Hashing and signing are CPU work: a long batch (createRoom
                # with initial_state and invites) lets other requests run
                # between slices instead of stalling the process.
                await asyncio.sleep(0)
            if d.require_membership is not None:
                await self._check_membership(ctx, *d.require_membership)
            types = auth_types_for_event(ctx.room_version, d.type, d.state_key, d.sender, d.content)
            auth_ids = [ctx.state[k] for k in types if k in ctx.state]
            # The rules consult the create event even where it is not cited (v12).
            consult = [*types, ("m.room.create", "")]
            missing = [
                ctx.state[k] for k in consult if k in ctx.state and ctx.state[k] not in ctx.events
            ]
            if missing:
                ctx.events.update(await self._store.get_event_objs(missing, ctx.conn))
            ev = build_event(
                ctx.room_version,
                room_id=room_id,
                sender=d.sender,
                type=d.type,
                content=dict(d.content),
                state_key=d.state_key,
                prev_events=list(ctx.extremities),
                auth_events=auth_ids,
                depth=min(ctx.depth + 1, MAX_DEPTH),
                origin_server_ts=create_ts if create_ts and d.type == "m.room.create" else now_ms(),
                server_name=self._keys.server_name,
                signing_key=self._keys.signing_key,
                redacts=d.redacts,
            )
            room_id = ev.room_id
            auth_map = {k: self._event(ctx, ctx.state[k]) for k in consult if k in ctx.state}
            check_auth(ev, auth_map)
            ctx.events[ev.event_id] = ev
            entries.append(
                Pending(
                    event=ev,
                    state_before=ctx.state,
                    before_group=ctx.group,
                    chain_previous=chained or bool(entries),
                    txn=d.txn,
                )
            )
            if ev.is_state:
                new_state = dict(ctx.state)
                new_state[ev.state_tuple] = ev.event_id
                ctx.state, ctx.group = new_state, None
            ctx.extremities = [ev.event_id]
            ctx.depth = ev.depth
            events.append(ev)
        return entries, events

    async def _check_membership(self, ctx: _Context, user_id: str, expected: str) -> None:
        eid = ctx.state.get(("m.room.member", user_id))
        if eid is not None and eid not in ctx.events:
            ctx.events.update(await self._store.get_event_objs([eid], ctx.conn))
        current = ctx.events[eid].membership if eid is not None else None
        if current != expected:
            raise PreconditionFailed(f"{user_id} is not in state {expected!r} (but {current!r})")

    def _event(self, ctx: _Context, event_id: str) -> Event:
        ev = ctx.events.get(event_id)
        if ev is None:
            raise LookupError(event_id)
        return ev


async def remove_member(
    creator: EventCreator, room_id: str, user: str, reason: str, *, senders: Sequence[str]
) -> bool:
    """Make ``user``'s membership ``leave`` (a kick, or leaving themself),
    trying each sender in turn until the authorization rules allow one."""
    for sender in dict.fromkeys(senders):
        try:
            await creator.send(
                room_id,
                [
                    Draft(
                        "m.room.member",
                        sender,
                        {"membership": "leave", "reason": reason},
                        state_key=user,
                    )
                ],
            )
            return True
        except AuthError:
            continue
    return False
