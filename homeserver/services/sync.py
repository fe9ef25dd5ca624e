"""``GET /sync``: what changed for a user since a token, waiting if nothing did.

A token is one stream position (``s<pos>``): events, membership changes,
account data, receipts and typing all take positions from the same counter,
so "everything up to N" is one number. The reader's upper bound comes from
``EventStore.current_position``, which never runs past an uncommitted write,
so nothing is skipped. Long-polls wait on the notifier, which wakes them for
writes from this process and, through LISTEN/NOTIFY, from any other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeserver.core.events import STRIPPED_STATE_TYPES, StateKey
from homeserver.core.lru import CacheFill, scaled
from homeserver.services.clock import now_ms
from homeserver.services.filters import EventFilter, flag, str_list, sub_object
from homeserver.services.lazy_members import MAX_DEVICES, SentMembers
from homeserver.services.notifier import LocalAppend, Notifier, wait_for
from homeserver.services.push import MAIN as MAIN_THREAD
from homeserver.services.push import PushService
from homeserver.services.serialize import EventSerializer
from homeserver.services.timeline import Visibility, make_token
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.ephemeral import EphemeralStore
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.projections import Projections
from homeserver.storage.push import Counts
from homeserver.storage.rooms import RoomStore
from homeserver.storage.sync_snapshot import SyncSnapshot, SyncSnapshots

MAX_VIEWS = 50_000
PUSH_RULES = "m.push_rules"


@dataclass(frozen=True)
class SyncFilter:
    timeline: EventFilter = field(default_factory=EventFilter)
    state: EventFilter = field(default_factory=EventFilter)
    ephemeral: EventFilter = field(default_factory=EventFilter)
    room_account_data: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False

    @property
    def timeline_limit(self) -> int:
        lim = self.timeline.limit
        return max(1, min(lim, 500)) if lim is not None else 10

    def allows_room(self, room_id: str) -> bool:
        if self.rooms is not None and room_id not in self.rooms:
            return False
        return room_id not in self.not_rooms

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SyncFilter:
        """The filter of a /sync; a part of the wrong type is a 400
        M_BAD_JSON (as Synapse's schema check), not ignored or a 500."""
        room = sub_object(raw, "room")

        def sub(parent: Mapping[str, Any], key: str) -> EventFilter:
            return EventFilter.from_json(sub_object(parent, key))

        return cls(
            timeline=sub(room, "timeline"),
            state=sub(room, "state"),
            ephemeral=sub(room, "ephemeral"),
            room_account_data=sub(room, "account_data"),
            account_data=sub(raw, "account_data"),
            rooms=str_list(room, "rooms"),
            not_rooms=str_list(room, "not_rooms") or (),
            include_leave=flag(room, "include_leave") is True,
        )


def stripped(ev_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ev_dict[k] for k in ("type", "state_key", "content", "sender") if k in ev_dict}


class SyncService:
    def __init__(
        self,
        store: EventStore,
        projections: Projections,
        ephemeral: EphemeralStore,
        account_data: AccountDataStore,
        rooms: RoomStore,
        serializer: EventSerializer,
        visibility: Visibility,
        notifier: Notifier,
        snapshots: SyncSnapshots,
        push: PushService,
        *,
        cache_factor: float = 1.0,
    ) -> None:
        self._snapshots = snapshots
        self._push = push
        self._sent_members = SentMembers(scaled(MAX_DEVICES, cache_factor))
        self._max_views = scaled(MAX_VIEWS, cache_factor)
        # (user, room) → (position, counts as the user last saw them)
        self._views: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.answered_from_memory = 0  # long-polls answered by _from_memory
        self._store = store
        self._proj = projections
        self._eph = ephemeral
        self._ad = account_data
        self._rooms = rooms
        self._ser = serializer
        self._vis = visibility
        self._notifier = notifier
        # (viewer, after, upto) → m.presence events (set by app.py). Asked on
        # every answer read from the database; an answer from memory holds
        # only message appends, so no presence change can be in its window.
        self.presence: Callable[[str, int, int], Awaitable[list[dict[str, Any]]]] | None = None

    async def sync(
        self,
        user_id: str,
        device_id: str,
        since: int | None,
        timeout_ms: int,
        full_state: bool,
        flt: SyncFilter,
    ) -> dict[str, Any]:
        mark = self._notifier.position
        result, joined, upto = await self._compute_with_presence(
            user_id, device_id, since, full_state, flt
        )
        if since is None or full_state or timeout_ms <= 0 or _has_content(result):
            return result
        deadline = time.monotonic() + min(timeout_ms, 300_000) / 1000
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._notifier.closing:
                return result  # timed out, or the server is stopping: answer now
            # Listen first, then look at what was announced meanwhile: a
            # write that landed during the read above is not slept through.
            # When the stream is known to be past what we read (a writer of
            # a lower position has not committed yet), any movement counts.
            behind = upto < self._notifier.position
            w = self._notifier.register(joined, [user_id], any_=behind)
            try:
                if self._notifier.position > mark and not behind:
                    woken = True
                else:
                    woken = await wait_for(w, min(remaining, 0.05) if behind else remaining)
                    woken = woken or behind
            finally:
                self._notifier.unregister(w)
            mark = self._notifier.position
            quick = (
                await self._from_memory(user_id, device_id, since, joined, flt)
                if woken and since == upto
                else None
            )
            if quick is not None:
                result, upto = quick
            else:
                result, joined, upto = await self._compute_with_presence(
                    user_id, device_id, since, False, flt
                )
            if _has_content(result) or not woken:
                return result

    async def _compute_with_presence(
        self,
        user_id: str,
        device_id: str,
        since: int | None,
        full_state: bool,
        flt: SyncFilter,
    ) -> tuple[dict[str, Any], list[str], int]:
        result, joined, upto = await self._compute(user_id, device_id, since, full_state, flt)
        if self.presence is not None:
            result["presence"]["events"] = await self.presence(user_id, since or 0, upto)
        return result, joined, upto

    async def _compute(
        self,
        user_id: str,
        device_id: str,
        since: int | None,
        full_state: bool,
        flt: SyncFilter,
    ) -> tuple[dict[str, Any], list[str], int]:
        """The response, the joined rooms and the position it reaches."""
        snap = await self._snapshots.read(
            user_id, since or 0, flt.timeline_limit + 1, all_rooms=since is None, now_ms=now_ms()
        )
        upto = snap.upto
        memberships = snap.memberships
        joined_out: dict[str, Any] = {}
        invite_out: dict[str, Any] = {}
        leave_out: dict[str, Any] = {}
        knock_out: dict[str, Any] = {}
        newly_joined: set[str] = set()
        left_at: dict[str, int] = {}

        if since is None:
            targets = [r for r, m in memberships.items() if m == "join"]
            for r, m in memberships.items():
                if m == "invite":
                    invite_out[r] = await self._invite_entry(r, user_id)
                elif m == "knock":
                    knock_out[r] = {"knock_state": {"events": await self._stripped(r, user_id)}}
                elif (
                    m in ("leave", "ban")
                    and flt.include_leave
                    and r not in (await self._forgotten(user_id))
                ):
                    se = await self._member_event(r, user_id)
                    if se:
                        left_at[r] = se.stream_ordering
        else:
            last: dict[str, str] = {}
            last_pos: dict[str, int] = {}
            first_pos: dict[str, int] = {}
            for room, pos, membership, _event_id in snap.changes:
                last[room] = membership
                last_pos[room] = pos
                first_pos.setdefault(room, pos)
            for r, m in last.items():
                if m == "join":
                    before = await self._proj.membership_before(user_id, r, first_pos[r])
                    if before != "join":
                        newly_joined.add(r)
                elif m == "invite":
                    invite_out[r] = await self._invite_entry(r, user_id)
                elif m == "knock":
                    knock_out[r] = {"knock_state": {"events": await self._stripped(r, user_id)}}
                elif m in ("leave", "ban") and r not in await self._forgotten(user_id):
                    left_at[r] = last_pos[r]
            joined_now = [r for r, m in memberships.items() if m == "join"]
            targets = joined_now  # narrowed to the rooms that changed below

        targets = [r for r in targets if flt.allows_room(r)]
        fresh_rooms = {r for r in targets if since is None or r in newly_joined}
        pre = await self._prefetch(snap, targets, fresh_rooms, since, full_state, flt)
        if since is not None and not full_state:
            # Only rooms where something happened (the snapshot answered it);
            # full_state asks for every joined room, quiet ones included.
            targets = [
                r
                for r in targets
                if r in fresh_rooms
                or pre.timelines.get(r)
                or r in pre.typing
                or r in pre.receipts
                or any(ad[0] == r for ad in pre.account_data)
            ]
        await self._fill_filtered(pre, targets, fresh_rooms, since, flt)
        await self._complete_rooms(pre, targets, user_id, upto)
        for r in targets:
            fresh = r in fresh_rooms
            joined_out[r] = await self._joined_entry(
                r,
                user_id,
                device_id,
                None if fresh else since,
                upto,
                full_state or fresh,
                flt,
                pre,
            )
        await self._fill_events(
            joined_out,
            user_id,
            device_id,
            pre,
            relations_cover=pre.redactions_cover - pre.related,
        )
        for r, pos in left_at.items():
            if flt.allows_room(r):
                leave_out[r] = await self._left_entry(r, user_id, device_id, since, pos, flt)

        account_data = [
            {"type": t, "content": c}
            for r, t, c in pre.account_data
            if r == "" and flt.account_data(_Typed(t))
        ]
        if (
            since is None
            and flt.account_data(_Typed(PUSH_RULES))
            and not any(e["type"] == PUSH_RULES for e in account_data)
        ):
            # A user who never changed a rule has no m.push_rules stored;
            # clients (matrix-nio, Synapse's clients) learn the defaults here.
            account_data.append({"type": PUSH_RULES, "content": await self._push.rendered(user_id)})
        joined = [r for r, m in memberships.items() if m == "join"]
        # (only counts read with the snapshot: consistent with ``upto``)
        self._remember_views(
            user_id, upto, {r: pre.stats[r] for r in joined_out if r in snap.rooms}
        )
        return (
            _response(upto, joined_out, invite_out, leave_out, knock_out, account_data),
            joined,
            upto,
        )

    def caches(self) -> dict[str, CacheFill]:
        views = len(self._views)
        return {
            "sync_room_views": CacheFill(views, views, self._max_views),
            "sync_lazy_members_devices": self._sent_members.fill,
        }

    def _remember_views(self, user_id: str, upto: int, stats: Mapping[str, Any]) -> None:
        """Keep each room's counts as the user last saw them, at ``upto``."""
        if len(self._views) > self._max_views:
            self._views.clear()
        for room_id, st in stats.items():
            self._views[(user_id, room_id)] = (upto, st)

    async def _from_memory(
        self, user_id: str, device_id: str, since: int, joined: list[str], flt: SyncFilter
    ) -> tuple[dict[str, Any], int] | None:
        """The answer to a long-poll woken by this process's own message
        appends, without reading the database: when every stream position
        after ``since`` (where the reader's view was complete and empty) is
        one of those appends (``Notifier.appends_after``), the response is
        their events in the reader's joined rooms, with the counts the reader
        saw at ``since`` (messages change no state, no membership, no
        receipts) plus the notifications the new events give, by the reader's
        cached push rules (``PushService.evaluate_cached``). None when that
        does not hold — another writer, a state change, a room not seen at
        ``since``, more events than the timeline limit, others' messages to
        a client that lazy-loads members (their member events are state to
        send), push rules or room contexts not cached: the caller then reads
        the database (which gives the same answer;
        tests/api/client/test_sync.py)."""
        upto, appends = self._notifier.appends_after(since)
        if upto == since:
            return None
        if flt.state.lazy_load_members and any(
            e.event.sender != user_id for a in appends for e in a.events
        ):
            return None  # the senders' member events come with them (_lazy_members)
        member_of = set(joined)
        by_room: dict[str, list[StoredEvent]] = {}
        for a in appends:
            if a.room_id in member_of and flt.allows_room(a.room_id):
                by_room.setdefault(a.room_id, []).extend(a.events)
        new_counts = await self._push.evaluate_cached(
            user_id, [e for v in by_room.values() for e in v]
        )
        if new_counts is None:
            return None
        views: dict[str, dict[str, Any]] = {}
        for room_id, evs in by_room.items():
            seen = self._views.get((user_id, room_id))
            if seen is None or seen[0] != since or len(evs) > flt.timeline_limit:
                return None
            stats = seen[1]
            if _needs_heroes(stats) and stats.get("heroes") is None:
                return None
            views[room_id] = {
                **stats,
                "counts": _add_counts(stats.get("counts") or {}, new_counts.get(room_id, {})),
            }
        joined_out: dict[str, Any] = {}
        for room_id, evs in by_room.items():
            timeline = await self._vis.filter(user_id, evs, now_joined=True)
            joined_out[room_id] = {
                "timeline": {
                    "events": [e for e in timeline if flt.timeline(e.event)],
                    "limited": False,
                    "prev_batch": make_token(evs[0].stream_ordering - 1),
                },
                "state": {"events": []},
                "account_data": {"events": []},
                "ephemeral": {"events": []},
                "summary": _summary(views[room_id]),
                **_unread(views[room_id], flt.timeline.unread_thread_notifications),
            }
        covered = {e.event.event_id for evs in by_room.values() for e in evs}
        await self._fill_events(
            joined_out,
            user_id,
            device_id,
            _Prefetch({}, {}, [], {}, set(), {}, {}, redactions={}, redactions_cover=covered),
            # Only these appends can relate to these events (nothing was
            # written in between): no relations lookup unless one does.
            relations_cover=covered - _relation_targets(appends),
        )
        self._remember_views(user_id, upto, views)
        self.answered_from_memory += 1
        return _response(upto, joined_out, {}, {}, {}, []), upto

    async def _forgotten(self, user_id: str) -> set[str]:
        return await self._rooms.forgotten(user_id)

    # ------------------------------------------------------------ room parts
    async def _member_event(self, room_id: str, user_id: str) -> StoredEvent | None:
        m = await self._proj.membership(room_id, user_id)
        return await self._store.get_event(m[1]) if m else None

    async def _timeline(
        self, room_id: str, user_id: str, device_id: str, lower: int, upper: int, flt: SyncFilter
    ) -> tuple[list[StoredEvent], bool, int]:
        limit = flt.timeline_limit
        evs = await self._store.events_by_stream(
            [room_id], lower, upper, limit + 1, newest_first=True
        )
        limited = len(evs) > limit
        evs = list(reversed(evs[:limit]))
        start = evs[0].stream_ordering - 1 if evs else upper
        evs = await self._vis.filter(user_id, evs)
        evs = [e for e in evs if flt.timeline(e.event)]
        return evs, limited, start

    async def _prefetch(
        self,
        snap: SyncSnapshot,
        rooms: list[str],
        fresh: set[str],
        since: int | None,
        full_state: bool,
        flt: SyncFilter,
    ) -> _Prefetch:
        """The joined rooms' timelines from the snapshot (bodies from the
        event cache); rooms joined since ``since`` start from the beginning
        and are read separately."""
        limit = flt.timeline_limit
        reread = [r for r in rooms if r in fresh] if since is not None else []
        timelines: dict[str, list[StoredEvent]] = (
            await self._store.timelines(reread, [0] * len(reread), snap.upto, limit + 1)
            if reread
            else {}
        )
        ids = [eid for r in rooms if r not in timelines for eid, _pos in snap.timeline.get(r, ())]
        bodies = await self._store.get_events(ids) if ids else {}
        for r in rooms:
            if r not in timelines:
                timelines[r] = [bodies[e] for e, _pos in snap.timeline.get(r, ()) if e in bodies]
        # The state before a timeline is needed when it is sent at all: the
        # state after its first event's predecessor (loaded together).
        firsts = {
            r: evs[min(len(evs), limit) - 1]
            for r, evs in timelines.items()
            if evs and (full_state or r in fresh or len(evs) > limit)
        }
        prev_ids = [f.event.prev_events[0] for f in firsts.values() if f.event.prev_events]
        return _Prefetch(
            timelines=timelines,
            prevs=await self._store.get_events(prev_ids) if prev_ids else {},
            account_data=snap.account_data,
            receipts=snap.receipts,
            typing=set(rooms) if since is None else snap.typing,
            typers=snap.typers,
            stats=dict(snap.rooms),
            redactions=snap.redactions,
            redactions_cover={
                eid for r in rooms if r not in reread for eid, _pos in snap.timeline.get(r, ())
            },
            related=snap.related,
        )

    async def _fill_filtered(
        self,
        pre: _Prefetch,
        rooms: list[str],
        fresh: set[str],
        since: int | None,
        flt: SyncFilter,
    ) -> None:
        """A filtered timeline holds up to ``limit`` events the filter lets
        through, as Synapse's does: when the newest ``limit + 1`` events read
        with the snapshot let fewer through and older ones exist in the
        window, read further back in pages, down to the window's start. Each
        timeline then holds only matching events, newest first, one more than
        ``limit`` when there are more (so ``limited`` stays right)."""
        if flt.timeline.matches_everything:
            return
        limit = flt.timeline_limit
        for r in rooms:
            evs = pre.timelines.get(r, [])
            kept = [e for e in evs if flt.timeline(e.event)]
            lower = 0 if since is None or r in fresh else since
            oldest = evs[-1].stream_ordering if evs else lower
            more = len(evs) > limit
            while more and len(kept) <= limit:
                page = await self._store.events_by_stream(
                    [r], lower, oldest - 1, max(50, 2 * limit), newest_first=True
                )
                kept += [e for e in page if flt.timeline(e.event)]
                more = bool(page)
                oldest = page[-1].stream_ordering if page else oldest
            pre.timelines[r] = kept[: limit + 1]

    async def _complete_rooms(
        self, pre: _Prefetch, rooms: list[str], user_id: str, upto: int
    ) -> None:
        """Counts for rooms the snapshot did not cover (joined since the
        last sync, yet quiet in its window), and every room's unread
        notification counts as of ``upto`` (``PushService.counts``)."""
        missing = [r for r in rooms if r not in pre.stats]
        if missing:
            stats = await self._proj.room_stats_many(missing)
            for r in missing:
                pre.stats[r] = dict(stats.get(r, {}))
        counts = await self._push.counts(user_id, rooms, upto)
        for r in rooms:
            pre.stats[r] = {**pre.stats[r], "counts": counts.get(r, {})}

    async def _joined_entry(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        since: int | None,
        upto: int,
        full_state: bool,
        flt: SyncFilter,
        pre: _Prefetch,
    ) -> dict[str, Any]:
        limit = flt.timeline_limit
        newest = pre.timelines.get(room_id, [])
        limited = len(newest) > limit
        window = list(reversed(newest[:limit]))
        start = window[0].stream_ordering - 1 if window else upto
        timeline = await self._vis.filter(user_id, window, now_joined=True)
        timeline = [e for e in timeline if flt.timeline(e.event)]
        state_ids: Mapping[StateKey, str] = {}
        if full_state:
            state_ids = await self._state_before(room_id, window, start, pre)
        elif limited and since is not None:
            at_since = await self._store.state_at_position(room_id, since)
            at_start = await self._state_before(room_id, window, start, pre)
            state_ids = {k: v for k, v in at_start.items() if at_since.get(k) != v}
        if flt.state.lazy_load_members:
            senders = {e.event.sender for e in timeline} | {user_id}
            state_ids = {
                k: v for k, v in state_ids.items() if k[0] != "m.room.member" or k[1] in senders
            }
            if since is not None and not full_state:
                state_ids = await self._lazy_members(
                    room_id, user_id, window, timeline, state_ids, start, pre
                )
            if not flt.state.include_redundant_members:
                state_ids = self._sent_members.unsent(
                    user_id,
                    device_id,
                    room_id,
                    state_ids,
                    [
                        (e.event.state_key, e.event.event_id)
                        for e in timeline
                        if e.event.type == "m.room.member" and e.event.state_key is not None
                    ],
                    reset=since is None or full_state,
                )
        state_evs = list((await self._store.get_events(state_ids.values())).values())
        state_evs = [e for e in state_evs if flt.state(e.event)]
        stats = pre.stats.get(room_id, {})
        if _needs_heroes(stats) and stats.get("heroes") is None:
            stats = pre.stats[room_id] = {
                **stats,
                "heroes": await self._proj.heroes(room_id, user_id, 5),
            }
        summary = _summary(stats)
        # Events are serialised later for all rooms together (_fill_events).
        return {
            "timeline": {
                "events": timeline,
                "limited": limited,
                "prev_batch": make_token(start),
            },
            "state": {"events": state_evs},
            "account_data": {
                "events": [
                    {"type": t, "content": c}
                    for r, t, c in pre.account_data
                    if r == room_id and flt.room_account_data(_Typed(t))
                ]
            },
            "ephemeral": {"events": await self._ephemeral(room_id, user_id, since, pre)},
            "summary": summary,
            **_unread(stats, flt.timeline.unread_thread_notifications),
        }

    async def _lazy_members(
        self,
        room_id: str,
        user_id: str,
        window: list[StoredEvent],
        timeline: list[StoredEvent],
        state_ids: Mapping[StateKey, str],
        start: int,
        pre: _Prefetch,
    ) -> Mapping[StateKey, str]:
        """``state_ids`` plus the member events of the timeline's senders
        as of the start of ``window`` (``timeline`` is its visible part),
        for an incremental sync that lazy-loads members: earlier responses
        left out everyone who had not spoken, so a first-time sender's
        membership would otherwise never reach the client (Synapse sends it
        too). Without ``include_redundant_members`` the spec allows sending
        one the client already has, which this does rather than remember
        per device what was sent. (The syncing user's own membership came
        with the initial sync, and any change of it with the timeline.)"""
        have = {k[1] for k in state_ids if k[0] == "m.room.member"} | {user_id}
        wanted = {e.event.sender for e in timeline} - have
        if not wanted:
            return state_ids
        before = await self._state_before(room_id, window, start, pre)
        return {
            **state_ids,
            **{k: v for k, v in before.items() if k[0] == "m.room.member" and k[1] in wanted},
        }

    async def _fill_events(
        self,
        rooms: dict[str, Any],
        user_id: str,
        device_id: str,
        pre: _Prefetch,
        relations_cover: Collection[str] = (),
    ) -> None:
        """Serialise every room's timeline and state events in two calls (one
        redaction lookup each, none for what the snapshot covered) instead of
        two per room."""
        timelines = [e for entry in rooms.values() for e in entry["timeline"]["events"]]
        states = [e for entry in rooms.values() for e in entry["state"]["events"]]
        tl_iter = iter(
            await self._ser.serialize(
                timelines,
                viewer=(user_id, device_id),
                redactions=pre.redactions,
                redactions_cover=pre.redactions_cover,
                relations_cover=relations_cover,
            )
        )
        st_iter = iter(await self._ser.serialize(states, prev_content=False, bundle=False))
        for entry in rooms.values():
            entry["timeline"]["events"] = [next(tl_iter) for _ in entry["timeline"]["events"]]
            entry["state"]["events"] = [next(st_iter) for _ in entry["state"]["events"]]

    async def _state_before(
        self, room_id: str, window: list[StoredEvent], start: int, pre: _Prefetch
    ) -> Mapping[StateKey, str]:
        if window and len(window[0].event.prev_events) == 1:
            prev = pre.prevs.get(window[0].event.prev_events[0])
            if prev is not None and prev.state_group is not None:
                return await self._store.state_at_group(prev.state_group)
        if window and not window[0].event.prev_events:
            return {}  # the timeline starts at the create event
        return await self._store.state_at_position(room_id, start)

    async def _left_entry(
        self,
        room_id: str,
        user_id: str,
        device_id: str,
        since: int | None,
        left_pos: int,
        flt: SyncFilter,
    ) -> dict[str, Any]:
        timeline, limited, start = await self._timeline(
            room_id, user_id, device_id, since or 0, left_pos, flt
        )
        state_evs: list[StoredEvent] = []
        if since is None or limited:
            ids = await self._store.state_at_position(room_id, start)
            state_evs = list((await self._store.get_events(ids.values())).values())
        return {
            "timeline": {
                "events": await self._ser.serialize(timeline, viewer=(user_id, device_id)),
                "limited": limited,
                "prev_batch": make_token(start),
            },
            "state": {
                "events": await self._ser.serialize(state_evs, prev_content=False, bundle=False)
            },
            "account_data": {"events": []},
        }

    async def _stripped(self, room_id: str, user_id: str) -> list[dict[str, Any]]:
        stored = await self._eph.invite_state(room_id, user_id)
        local = await self._proj.current_state_ids(room_id)
        if not local and stored is not None:
            return list(stored)
        keys = [(t, "") for t in STRIPPED_STATE_TYPES]
        member = local.get(("m.room.member", user_id))
        ids = [local[k] for k in keys if k in local]
        if member:
            ids.append(member)
            me = await self._store.get_event(member)
            if me is not None and me.event.sender != user_id:
                inviter = local.get(("m.room.member", me.event.sender))
                if inviter:
                    ids.append(inviter)
        evs = await self._store.get_events(ids)
        out = [stripped(evs[i].event.client_dict()) for i in ids if i in evs]
        if stored:
            have = {(e.get("type"), e.get("state_key")) for e in out}
            out += [e for e in stored if (e.get("type"), e.get("state_key")) not in have]
        return out

    async def _invite_entry(self, room_id: str, user_id: str) -> dict[str, Any]:
        return {"invite_state": {"events": await self._stripped(room_id, user_id)}}

    async def _ephemeral(
        self, room_id: str, user_id: str, since: int | None, pre: _Prefetch
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if room_id in pre.typing:
            users = pre.typers.get(room_id, [])
            if users or since is not None:
                out.append({"type": "m.typing", "content": {"user_ids": users}})
        content: dict[str, Any] = {}
        for rc in pre.receipts.get(room_id, []):
            if rc["receipt_type"] == "m.read.private" and rc["user_id"] != user_id:
                continue
            data: dict[str, Any] = {"ts": rc["ts"]}
            if rc["thread_id"]:
                data["thread_id"] = rc["thread_id"]
            content.setdefault(rc["event_id"], {}).setdefault(rc["receipt_type"], {})[
                rc["user_id"]
            ] = data
        if content:
            out.append({"type": "m.receipt", "content": content})
        return out


@dataclass
class _Prefetch:
    """What one /sync response needs for all its joined rooms."""

    timelines: dict[str, list[StoredEvent]]
    prevs: dict[str, StoredEvent]
    account_data: list[tuple[str, str, dict[str, Any]]]
    receipts: dict[str, list[dict[str, Any]]]
    # rooms whose typing notification is sent, and who types in them now
    typing: set[str]
    typers: dict[str, list[str]]
    # room → counts, name, alias, heroes, and notification counts per thread
    stats: dict[str, dict[str, Any]]
    redactions: dict[str, list[str]]
    redactions_cover: set[str]
    # of the events in ``redactions_cover``, those something relates to
    related: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Typed:
    """Enough of an event for a type filter over account data."""

    type: str
    sender: str = ""
    room_id: str = ""
    content: Mapping[str, Any] = field(default_factory=dict)


def _needs_heroes(stats: Mapping[str, Any]) -> bool:
    return not stats.get("name") and not stats.get("canonical_alias")


def _summary(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A room's ``summary`` from its counts (see ``SyncSnapshot.rooms``)."""
    out: dict[str, Any] = {
        "m.joined_member_count": stats.get("joined_members", 0),
        "m.invited_member_count": stats.get("invited_members", 0),
    }
    if _needs_heroes(stats):
        out["m.heroes"] = stats.get("heroes") or []
    return out


def _relation_targets(appends: Iterable[LocalAppend]) -> set[str]:
    """The events the appended events relate to (``m.relates_to``)."""
    out: set[str] = set()
    for a in appends:
        for e in a.events:
            rel = e.event.content.get("m.relates_to")
            if isinstance(rel, dict) and isinstance(rel.get("event_id"), str):
                out.add(rel["event_id"])
    return out


def _add_counts(old: Mapping[str, Counts], new: Mapping[str, Counts]) -> dict[str, Counts]:
    out = dict(old)
    for thread, c in new.items():
        was = out.get(thread, Counts(0, 0))
        out[thread] = Counts(was.notifications + c.notifications, was.highlights + c.highlights)
    return out


def _unread(stats: Mapping[str, Any], per_thread: bool) -> dict[str, Any]:
    """``unread_notifications`` (and, when the filter asks for
    ``unread_thread_notifications``, the threads' counts apart from the
    main timeline's; spec "Receiving notifications")."""
    counts: Mapping[str, Counts] = stats.get("counts") or {}

    def shape(c: Counts) -> dict[str, int]:
        return {"notification_count": c.notifications, "highlight_count": c.highlights}

    if not per_thread:
        total = Counts(
            sum(c.notifications for c in counts.values()),
            sum(c.highlights for c in counts.values()),
        )
        return {"unread_notifications": shape(total)}
    return {
        "unread_notifications": shape(counts.get(MAIN_THREAD, Counts(0, 0))),
        "unread_thread_notifications": {t: shape(c) for t, c in counts.items() if t != MAIN_THREAD},
    }


def _response(
    upto: int,
    join: dict[str, Any],
    invite: dict[str, Any],
    leave: dict[str, Any],
    knock: dict[str, Any],
    account_data: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "next_batch": make_token(upto),
        "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
        "account_data": {"events": account_data},
        "presence": {"events": []},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {},
    }


def _has_content(result: Mapping[str, Any]) -> bool:
    rooms = result["rooms"]
    return bool(
        rooms["join"]
        or rooms["invite"]
        or rooms["leave"]
        or rooms["knock"]
        or result["account_data"]["events"]
        or result["presence"]["events"]
    )
