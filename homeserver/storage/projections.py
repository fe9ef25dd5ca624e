"""Projections of the log: current state, memberships, forward extremities,
room heads, room stats, the per-user membership stream and redactions.

Tables owned: current_state, room_members, forward_extremities, room_heads,
room_stats, user_membership_stream, event_redactions. Every row here can be
derived from the event log; ``apply`` keeps them current inside the append
transaction and the rebuild service recomputes them from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from homeserver.core.events import Event, StateKey
from homeserver.storage.database import Database

PROJECTION_TABLES = (
    "current_state",
    "room_members",
    "forward_extremities",
    "room_heads",
    "room_stats",
    "user_membership_stream",
    "event_redactions",
    "event_relations",  # written by a trigger; storage/relations.py
)

# State event types that feed room_stats, and the content key each one sets.
_STATS_FIELDS: dict[str, tuple[str, str]] = {
    "m.room.name": ("name", "name"),
    "m.room.topic": ("topic", "topic"),
    "m.room.canonical_alias": ("canonical_alias", "alias"),
    "m.room.avatar": ("avatar_url", "url"),
    "m.room.join_rules": ("join_rule", "join_rule"),
    "m.room.history_visibility": ("history_visibility", "history_visibility"),
    "m.room.guest_access": ("guest_access", "guest_access"),
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """An event accepted into the room (not rejected, not soft-failed)."""

    event: Event
    stream_ordering: int


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def member_row(ev: Event, stream_ordering: int) -> tuple[Any, ...]:
    c = ev.content
    return (
        ev.room_id,
        ev.state_key,
        c.get("membership"),
        ev.event_id,
        ev.sender,
        stream_ordering,
        _str_or_none(c.get("displayname")),
        _str_or_none(c.get("avatar_url")),
        c.get("is_direct") is True,
    )


def is_local(user_id: str, server_name: str) -> bool:
    return user_id.endswith(":" + server_name)


def head_ctes(n: int, *, checked: bool = False, last_expr: str | None = None) -> str:
    """CTEs moving a room's forward extremities, head and last activity;
    parameters ``$n`` … ``$n+5`` as ``head_args`` gives them. ``checked``:
    every removed extremity must still be there, they must be all the room's
    extremities and nobody may hold the room's lock (an optimistic writer that
    read them without the lock), else the statement fails through
    ``hs_require`` — select ``ok`` from the ``head_ok`` CTE to evaluate it.
    ``last_expr``: SQL for the last stream position when the statement
    allocates it (the parameter is then NULL)."""
    r, rem, add, last, depth, ts = (f"${n + i}" for i in range(6))
    if last_expr is not None:
        last = f"COALESCE({last}::bigint, {last_expr})"
    ctes = (
        f"head_d AS (DELETE FROM forward_extremities WHERE room_id = {r} "
        f"  AND event_id = ANY({rem}::text[]) RETURNING 1), "
        f"head_i AS (INSERT INTO forward_extremities (room_id, event_id) "
        f"  SELECT {r}, unnest({add}::text[]) ON CONFLICT DO NOTHING), "
        f"head_h AS (INSERT INTO room_heads (room_id, stream_ordering, max_depth) "
        f"  SELECT {r}, {last}, {depth} WHERE {last}::bigint IS NOT NULL "
        f"  ON CONFLICT (room_id) DO UPDATE SET "
        f"  stream_ordering = GREATEST(room_heads.stream_ordering, EXCLUDED.stream_ordering), "
        f"  max_depth = GREATEST(room_heads.max_depth, EXCLUDED.max_depth)), "
        f"head_s AS (UPDATE room_stats SET last_event_ts = GREATEST(COALESCE(last_event_ts, 0), "
        f"  {ts}) WHERE room_id = {r} AND {ts}::bigint IS NOT NULL)"
    )
    if checked:
        ctes += (
            f", head_ok AS (SELECT hs_require((SELECT count(*) FROM head_d) = "
            f"cardinality({rem}::text[]), 'stale extremities') "
            f"AND hs_head_is({r}, {rem}::text[], {add}::text[]) AS ok)"
        )
    return ctes


def head_args(
    room_id: str,
    accepted: Sequence[Accepted],
    removed: Iterable[str],
    added: Iterable[str],
) -> list[Any]:
    return [
        room_id,
        list(removed),
        list(added),
        max((a.stream_ordering for a in accepted), default=None),
        max((a.event.depth for a in accepted), default=None),
        max((a.event.origin_server_ts for a in accepted), default=None),
    ]


class Projections:
    def __init__(self, db: Database, server_name: str) -> None:
        self._db = db
        self._server_name = server_name

    async def apply(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        accepted: Sequence[Accepted],
        state_delta: Mapping[StateKey, Event | None],
        extremities_removed: Iterable[str],
        extremities_added: Iterable[str],
        *,
        head_moved: bool = False,
    ) -> None:
        """Bring every projection of ``room_id`` up to date with an append.

        ``accepted`` are the new events that became part of the room's
        history; ``state_delta`` the keys of the current state that changed
        (None: key removed) with their new event. ``head_moved``: the
        events' own statement moved the extremities and head already
        (``EventStore.insert_events`` with ``head``).
        """
        if not head_moved:
            # Forward extremities, the room head and its last activity, in
            # one statement (this runs for every append).
            await conn.execute(
                f"WITH {head_ctes(1)} SELECT 1",
                *head_args(room_id, accepted, extremities_removed, extremities_added),
            )
        # Per-user membership stream and redactions: every accepted event.
        ums = [
            (
                a.event.state_key,
                room_id,
                a.stream_ordering,
                a.event.content.get("membership"),
                a.event.event_id,
            )
            for a in accepted
            if a.event.type == "m.room.member"
            and a.event.state_key is not None
            and isinstance(a.event.content.get("membership"), str)
        ]
        if ums:
            await conn.executemany(
                "INSERT INTO user_membership_stream (user_id, room_id, stream_ordering, "
                "membership, event_id) VALUES ($1,$2,$3,$4,$5)",
                ums,
            )
        reds = [
            (a.event.redacts, a.event.event_id, room_id)
            for a in accepted
            if a.event.type == "m.room.redaction" and a.event.redacts
        ]
        if reds:
            await conn.executemany(
                "INSERT INTO event_redactions (redacted_id, redaction_id, room_id) "
                "VALUES ($1,$2,$3) ON CONFLICT DO NOTHING",
                reds,
            )
        # Current state and what derives from it.
        stream_of = {a.event.event_id: a.stream_ordering for a in accepted}
        # A resolution can bring back member events of earlier appends: their
        # rows carry the position those events were written at (as a rebuild
        # derives them), not a placeholder.
        older = [
            ev.event_id
            for (t, _), ev in state_delta.items()
            if t == "m.room.member" and ev is not None and ev.event_id not in stream_of
        ]
        if older:
            rows = await conn.fetch(
                "SELECT event_id, stream_ordering FROM events WHERE event_id = ANY($1::text[])",
                older,
            )
            stream_of.update({r["event_id"]: r["stream_ordering"] for r in rows})
        await self._apply_state(conn, room_id, state_delta, stream_of)
        if accepted and ("m.room.create", "") in state_delta:
            # The stats row was created just now by _apply_state.
            await conn.execute(
                "UPDATE room_stats SET last_event_ts = GREATEST(COALESCE(last_event_ts, 0), $2) "
                "WHERE room_id = $1",
                room_id,
                max(a.event.origin_server_ts for a in accepted),
            )

    async def _apply_state(
        self,
        conn: asyncpg.Connection,
        room_id: str,
        delta: Mapping[StateKey, Event | None],
        stream_of: Mapping[str, int],
    ) -> None:
        if not delta:
            return
        upserts = [(room_id, t, sk, ev.event_id) for (t, sk), ev in delta.items() if ev]
        removals = [(room_id, t, sk) for (t, sk), ev in delta.items() if ev is None]
        if upserts:
            await conn.executemany(
                "INSERT INTO current_state (room_id, type, state_key, event_id) "
                "VALUES ($1,$2,$3,$4) ON CONFLICT (room_id, type, state_key) "
                "DO UPDATE SET event_id = EXCLUDED.event_id",
                upserts,
            )
        if removals:
            await conn.executemany(
                "DELETE FROM current_state WHERE room_id = $1 AND type = $2 AND state_key = $3",
                removals,
            )
        # Room stats row exists from the create event on.
        create = delta.get(("m.room.create", ""))
        if create is not None:
            kind = create.content.get("io.homeserver.kind")
            await conn.execute(
                "INSERT INTO room_stats (room_id, room_type, kind) VALUES ($1,$2,$3) "
                "ON CONFLICT (room_id) DO NOTHING",
                room_id,
                _str_or_none(create.content.get("type")),
                _str_or_none(kind),
            )
        for (t, sk), ev in delta.items():
            if t in _STATS_FIELDS and sk == "":
                col, key = _STATS_FIELDS[t]
                value = _str_or_none(ev.content.get(key)) if ev else None
                await conn.execute(
                    f"UPDATE room_stats SET {col} = $2 WHERE room_id = $1", room_id, value
                )
        # Memberships.
        members = {sk: ev for (t, sk), ev in delta.items() if t == "m.room.member"}
        if not members:
            return
        old = {
            r["user_id"]: r["membership"]
            for r in await conn.fetch(
                "SELECT user_id, membership FROM room_members WHERE room_id = $1 "
                "AND user_id = ANY($2::text[])",
                room_id,
                list(members),
            )
        }
        rows = []
        d_join = d_invite = d_local = 0
        for user, ev in members.items():
            new = ev.membership if ev else None
            was = old.get(user)
            d_join += (new == "join") - (was == "join")
            d_invite += (new == "invite") - (was == "invite")
            if is_local(user, self._server_name):
                d_local += (new == "join") - (was == "join")
            if ev is not None:
                rows.append(member_row(ev, stream_of[ev.event_id]))
            else:
                await conn.execute(
                    "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2", room_id, user
                )
        if rows:
            await conn.executemany(
                "INSERT INTO room_members (room_id, user_id, membership, event_id, sender, "
                "stream_ordering, displayname, avatar_url, is_direct) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9) ON CONFLICT (room_id, user_id) DO UPDATE SET "
                "membership = EXCLUDED.membership, event_id = EXCLUDED.event_id, "
                "sender = EXCLUDED.sender, stream_ordering = EXCLUDED.stream_ordering, "
                "displayname = EXCLUDED.displayname, avatar_url = EXCLUDED.avatar_url, "
                "is_direct = EXCLUDED.is_direct",
                rows,
            )
        if d_join or d_invite or d_local:
            await conn.execute(
                "UPDATE room_stats SET joined_members = joined_members + $2, "
                "invited_members = invited_members + $3, local_joined = local_joined + $4 "
                "WHERE room_id = $1",
                room_id,
                d_join,
                d_invite,
                d_local,
            )

    # -------------------------------------------------------------- reads
    async def current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        rows = await self._db.fetch(
            "SELECT type, state_key, event_id FROM current_state WHERE room_id = $1", room_id
        )
        return {(r["type"], r["state_key"]): r["event_id"] for r in rows}

    async def current_state_event_id(self, room_id: str, type: str, state_key: str) -> str | None:
        return await self._db.fetchval(
            "SELECT event_id FROM current_state WHERE room_id = $1 AND type = $2 "
            "AND state_key = $3",
            room_id,
            type,
            state_key,
        )

    async def membership(self, room_id: str, user_id: str) -> tuple[str, str] | None:
        """(membership, event id) of a user in a room, from current state."""
        row = await self._db.fetchrow(
            "SELECT membership, event_id FROM room_members WHERE room_id = $1 AND user_id = $2",
            room_id,
            user_id,
        )
        return (row["membership"], row["event_id"]) if row else None

    async def rooms_for_user(self, user_id: str, memberships: Sequence[str]) -> dict[str, str]:
        """room id → membership, for the given memberships."""
        rows = await self._db.fetch(
            "SELECT room_id, membership FROM room_members WHERE user_id = $1 "
            "AND membership = ANY($2::text[])",
            user_id,
            list(memberships),
        )
        return {r["room_id"]: r["membership"] for r in rows}

    async def members(
        self, room_id: str, memberships: Sequence[str] | None = None
    ) -> list[asyncpg.Record]:
        if memberships is None:
            return await self._db.fetch(
                "SELECT user_id, membership, event_id, displayname, avatar_url, is_direct, sender "
                "FROM room_members WHERE room_id = $1 ORDER BY user_id",
                room_id,
            )
        return await self._db.fetch(
            "SELECT user_id, membership, event_id, displayname, avatar_url, is_direct, sender "
            "FROM room_members WHERE room_id = $1 AND membership = ANY($2::text[]) "
            "ORDER BY user_id",
            room_id,
            list(memberships),
        )

    async def room_stats(self, room_id: str) -> dict[str, Any] | None:
        row = await self._db.fetchrow("SELECT * FROM room_stats WHERE room_id = $1", room_id)
        return dict(row) if row else None

    async def membership_changes(self, user_id: str, after: int, upto: int) -> list[asyncpg.Record]:
        return await self._db.fetch(
            "SELECT room_id, stream_ordering, membership, event_id FROM user_membership_stream "
            "WHERE user_id = $1 AND stream_ordering > $2 AND stream_ordering <= $3 "
            "ORDER BY stream_ordering",
            user_id,
            after,
            upto,
        )

    async def redactions_of(self, event_ids: Sequence[str]) -> dict[str, list[str]]:
        rows = await self._db.fetch(
            "SELECT redacted_id, redaction_id FROM event_redactions "
            "WHERE redacted_id = ANY($1::text[])",
            list(event_ids),
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["redacted_id"], []).append(r["redaction_id"])
        return out

    async def shared_rooms_users(self, user_id: str) -> set[str]:
        rows = await self._db.fetch(
            "SELECT DISTINCT m2.user_id FROM room_members m1 JOIN room_members m2 "
            "USING (room_id) WHERE m1.user_id = $1 AND m1.membership = 'join' "
            "AND m2.membership = 'join'",
            user_id,
        )
        return {r["user_id"] for r in rows}

    async def room_servers(self, room_id: str) -> set[str]:
        """Servers with at least one joined member."""
        rows = await self._db.fetch(
            "SELECT user_id FROM room_members WHERE room_id = $1 AND membership = 'join'",
            room_id,
        )
        return {r["user_id"].split(":", 1)[1] for r in rows}

    async def direct_rooms_between(self, user_id: str, partner: str) -> list[str]:
        """Rooms where one invited the other with ``is_direct`` and both are
        still joined or invited."""
        rows = await self._db.fetch(
            "SELECT a.room_id FROM room_members a JOIN room_members b USING (room_id) "
            "WHERE a.user_id = $1 AND b.user_id = $2 "
            "AND a.membership IN ('join', 'invite') AND b.membership IN ('join', 'invite') "
            "AND EXISTS (SELECT 1 FROM events e WHERE e.room_id = a.room_id "
            "  AND e.type = 'm.room.member' AND e.state_key IN ($1, $2) "
            "  AND e.json::jsonb -> 'content' ->> 'is_direct' = 'true') "
            "ORDER BY a.room_id",
            user_id,
            partner,
        )
        return [r["room_id"] for r in rows]

    async def membership_before(self, user_id: str, room_id: str, pos: int) -> str | None:
        """The user's membership in the room just before stream position ``pos``."""
        return await self._db.fetchval(
            "SELECT membership FROM user_membership_stream WHERE user_id = $1 AND room_id = $2 "
            "AND stream_ordering < $3 ORDER BY stream_ordering DESC LIMIT 1",
            user_id,
            room_id,
            pos,
        )

    async def heroes(self, room_id: str, user_id: str, n: int) -> list[str]:
        rows = await self._db.fetch(
            "SELECT user_id FROM room_members WHERE room_id = $1 AND user_id <> $2 "
            "AND membership IN ('join', 'invite') ORDER BY stream_ordering LIMIT $3",
            room_id,
            user_id,
            n,
        )
        return [r["user_id"] for r in rows]

    # ------------------------------------------------------ rebuild support
    async def snapshot(
        self, conn: asyncpg.Connection, room_id: str
    ) -> dict[str, set[tuple[Any, ...]]]:
        """Every projection row of a room, as comparable tuples."""
        out: dict[str, set[tuple[Any, ...]]] = {}
        for table in PROJECTION_TABLES:
            rows = await conn.fetch(f"SELECT * FROM {table} WHERE room_id = $1", room_id)
            out[table] = {tuple(sorted(dict(r).items())) for r in rows}
        return out

    async def clear(self, conn: asyncpg.Connection, room_id: str) -> None:
        for table in PROJECTION_TABLES:
            await conn.execute(f"DELETE FROM {table} WHERE room_id = $1", room_id)

    async def computed_extremities(self, conn: asyncpg.Connection, room_id: str) -> list[str]:
        """Accepted events of the room that no accepted event points back to,
        from the room's last adopted head on (``adopted_heads``)."""
        rows = await conn.fetch(
            "SELECT e.event_id FROM events e WHERE e.room_id = $1 AND NOT e.outlier "
            "AND NOT e.soft_failed AND e.rejected_reason IS NULL "
            "AND e.stream_ordering >= COALESCE((SELECT max(a.stream_ordering) "
            "  FROM adopted_heads h JOIN events a USING (event_id) WHERE h.room_id = $1), "
            "  -9223372036854775808) AND NOT EXISTS ("
            "  SELECT 1 FROM event_edges x JOIN events c ON c.event_id = x.event_id "
            "  WHERE x.prev_event_id = e.event_id AND NOT c.outlier AND NOT c.soft_failed "
            "  AND c.rejected_reason IS NULL) ORDER BY e.stream_ordering",
            room_id,
        )
        return [r["event_id"] for r in rows]

    async def state_ids_of_type(self, room_id: str, type: str) -> dict[str, str]:
        """state key → event id of the room's current state of one type
        (a space's children, without loading every member)."""
        rows = await self._db.fetch(
            "SELECT state_key, event_id FROM current_state WHERE room_id = $1 AND type = $2",
            room_id,
            type,
        )
        return {r["state_key"]: r["event_id"] for r in rows}

    async def room_stats_many(self, room_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows = await self._db.fetch(
            "SELECT * FROM room_stats WHERE room_id = ANY($1::text[])", list(room_ids)
        )
        return {r["room_id"]: dict(r) for r in rows}
