"""Push rules, notifications and pushers (tables push_rules, push_actions,
push_evaluated, pushers). See services/push.py for how they are used."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.storage.database import Database


def _receipts_sql(rooms: str) -> str:
    """The furthest read receipt per (room, thread) of user $1 in ``rooms``
    (an SQL array): '' is an unthreaded receipt, which reads every thread
    (spec "Threaded read receipts")."""
    return f"""
SELECT rc.room_id, rc.thread_id, max(ev.stream_ordering) AS pos
FROM receipts rc JOIN events ev ON ev.event_id = rc.event_id
WHERE rc.user_id = $1 AND rc.room_id = ANY({rooms})
  AND rc.receipt_type IN ('m.read', 'm.read.private')
GROUP BY rc.room_id, rc.thread_id
"""


# A notification is read when a receipt of its thread, or an unthreaded
# one, is at or after it.
_READ_BOUND = """GREATEST(
    COALESCE((SELECT pos FROM rc WHERE rc.room_id = pa.room_id AND rc.thread_id = ''), 0),
    COALESCE((SELECT pos FROM rc WHERE rc.room_id = pa.room_id
                AND rc.thread_id = pa.thread_id), 0))"""


@dataclass(frozen=True)
class Pending:
    """Events of a room not yet evaluated for a user: (event id, position)
    oldest first, after ``lower``; ``more`` when the page was full."""

    room_id: str
    lower: int
    events: tuple[tuple[str, int], ...]
    more: bool


@dataclass(frozen=True)
class Found:
    """An event that notifies a user."""

    room_id: str
    stream_ordering: int
    event_id: str
    thread_id: str
    highlight: bool
    actions: tuple[Any, ...]
    ts: int


@dataclass(frozen=True)
class Counts:
    notifications: int
    highlights: int


@dataclass(frozen=True)
class Notification:
    room_id: str
    stream_ordering: int
    event_id: str
    actions: list[Any]
    ts: int
    read: bool


@dataclass(frozen=True)
class Pusher:
    user_id: str
    app_id: str
    pushkey: str
    kind: str
    app_display_name: str
    device_display_name: str
    profile_tag: str | None
    lang: str
    data: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "app_id": self.app_id,
            "pushkey": self.pushkey,
            "kind": self.kind,
            "app_display_name": self.app_display_name,
            "device_display_name": self.device_display_name,
            "lang": self.lang,
            "data": self.data,
        }
        if self.profile_tag is not None:
            out["profile_tag"] = self.profile_tag
        return out


class PushStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----------------------------------------------------------- rules
    async def rules(self, user_id: str) -> tuple[dict[str, Any], int]:
        """The user's rules document and its version ({} and 0: none)."""
        row = await self._db.fetchrow(
            "SELECT doc, version FROM push_rules WHERE user_id = $1", user_id
        )
        return (dict(row["doc"]), int(row["version"])) if row else ({}, 0)

    async def update_rules(
        self, user_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply ``change`` to the user's document under a row lock (two
        concurrent changes never lose one another); returns the new one.
        ``change`` may raise to refuse, and nothing is written."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO push_rules (user_id, doc, version) VALUES ($1, '{}', 0) "
                "ON CONFLICT (user_id) DO NOTHING",
                user_id,
            )
            doc = await conn.fetchval(
                "SELECT doc FROM push_rules WHERE user_id = $1 FOR UPDATE", user_id
            )
            new = change(dict(doc))
            await conn.execute(
                "UPDATE push_rules SET doc = $2, version = version + 1 WHERE user_id = $1",
                user_id,
                new,
            )
        return new

    # ------------------------------------------------------ evaluation
    async def pending(
        self, user_id: str, room_ids: Sequence[str], upto: int, limit: int, *, counts: bool = False
    ) -> tuple[int, list[Pending], dict[str, dict[str, Counts]] | None]:
        """The user's rules version, and per room the events from others
        after what was evaluated (or after the user's membership event, the
        first time) up to ``upto``: at most ``limit`` per room. With
        ``counts``, also the counts of ``counts()`` as they stand (final
        when nothing is pending: one round trip for a /sync whose rooms are
        evaluated already)."""
        extra_ctes = f", {_counts_ctes('$2::text[]', '$3')}, cnt AS ({_COUNT_SELECT})"
        extra_select = (
            ", (SELECT json_agg(json_build_array(room_id, thread_id, n, h, tail)) FROM cnt)"
            " AS counts"
        )
        row = await self._db.fetchrow(
            f"""
            WITH p AS (
                SELECT q.room_id, b.lower, x.event_id, x.stream_ordering
                FROM unnest($2::text[]) AS q(room_id)
                CROSS JOIN LATERAL (SELECT GREATEST(
                    (SELECT upto FROM push_evaluated pe
                      WHERE pe.user_id = $1 AND pe.room_id = q.room_id),
                    (SELECT m.stream_ordering FROM room_members m
                      WHERE m.room_id = q.room_id AND m.user_id = $1), 0) AS lower) b
                LEFT JOIN LATERAL (
                    SELECT e.event_id, e.stream_ordering FROM events e
                    WHERE e.room_id = q.room_id AND e.stream_ordering > b.lower
                      AND e.stream_ordering <= $3 AND e.sender <> $1
                      AND NOT e.outlier AND NOT e.soft_failed AND e.rejected_reason IS NULL
                    ORDER BY e.stream_ordering LIMIT $4
                ) x ON true
                WHERE b.lower < $3
            ){extra_ctes if counts else ""}
            SELECT COALESCE((SELECT version FROM push_rules WHERE user_id = $1), 0) AS version,
                   (SELECT json_agg(json_build_array(room_id, lower, event_id, stream_ordering)
                                    ORDER BY room_id, stream_ordering) FROM p) AS rows
                   {extra_select if counts else ""}
            """,
            user_id,
            list(room_ids),
            upto,
            limit,
        )
        assert row is not None
        by_room: dict[str, tuple[int, list[tuple[str, int]]]] = {}
        for room_id, lower, event_id, pos in row["rows"] or ():
            _lower, evs = by_room.setdefault(room_id, (int(lower), []))
            if event_id is not None:
                evs.append((event_id, int(pos)))
        now: dict[str, dict[str, Counts]] | None = None
        if counts:
            now = await self._counted(user_id, row["counts"] or (), upto)
        pending = [
            Pending(room, lower, tuple(evs), len(evs) >= limit)
            for room, (lower, evs) in by_room.items()
        ]
        return int(row["version"]), pending, now

    async def record(
        self,
        user_id: str,
        found: Sequence[Found],
        evaluated: dict[str, int],
        count: tuple[Sequence[str], int] | None = None,
    ) -> dict[str, dict[str, Counts]]:
        """Store what notifies and how far each room was evaluated, in one
        statement (so a crash never leaves one without the other); with
        ``count`` (rooms, upto), the same statement also returns ``counts``
        for them, the rows it inserts included."""
        tail = "SELECT 1"
        if count is not None:
            tail = f"""{_counts_ctes("$11::text[]", "$12", also="ins")}
            {_COUNT_SELECT}"""
        rows = await self._db.fetch(
            f"""
            WITH ins AS (
                INSERT INTO push_actions
                    (user_id, room_id, stream_ordering, event_id, thread_id, highlight,
                     actions, ts)
                SELECT $1, r, s, e, t, h, a::jsonb, ts
                FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::bool[],
                            $7::text[], $8::bigint[]) AS f(r, s, e, t, h, a, ts)
                ON CONFLICT DO NOTHING
                RETURNING room_id, thread_id, stream_ordering, highlight
            ),
            -- Derived data, redone from the log if lost: a crash may drop the
            -- last few records (the next read evaluates those events again,
            -- and the inserts are idempotent), so the commit waits for no
            -- fsync (the setting is read at commit: this statement's own).
            upd AS (
                INSERT INTO push_evaluated (user_id, room_id, upto)
                SELECT $1, r, u FROM unnest($9::text[], $10::bigint[]) AS v(r, u),
                     (SELECT set_config('synchronous_commit', 'off', true)) AS cfg
                ON CONFLICT (user_id, room_id)
                DO UPDATE SET upto = GREATEST(push_evaluated.upto, EXCLUDED.upto)
            ){"," if count is not None else ""}
            {tail}
            """,
            user_id,
            [f.room_id for f in found],
            [f.stream_ordering for f in found],
            [f.event_id for f in found],
            [f.thread_id for f in found],
            [f.highlight for f in found],
            [json.dumps(list(f.actions)) for f in found],
            [f.ts for f in found],
            list(evaluated),
            list(evaluated.values()),
            *((list(count[0]), count[1]) if count is not None else ()),
        )
        return await self._counted(user_id, rows, count[1]) if count is not None else {}

    async def _summarise(self, user_id: str, room_ids: Sequence[str], upto: int) -> None:
        """Materialise the counts of each room at the furthest position that
        is both within ``upto`` and evaluated (every notification up to it is
        written): later counts read only what comes after. One statement per
        room, so the counts and the receipts they hold for are one snapshot."""
        for room_id in room_ids:
            await self._db.execute(
                f"""
                WITH lim AS (
                    SELECT LEAST($3::bigint, COALESCE((SELECT upto FROM push_evaluated
                        WHERE user_id = $1 AND room_id = $2), 0)) AS p
                ),
                {_counts_ctes("ARRAY[$2::text]", "(SELECT p FROM lim)")},
                cnt AS ({_COUNT_SELECT})
                INSERT INTO push_summary (user_id, room_id, pos, sig, counts)
                SELECT $1, $2, (SELECT p FROM lim), (SELECT sig FROM sg),
                       COALESCE((SELECT jsonb_object_agg(thread_id, jsonb_build_array(n, h))
                                 FROM cnt), '{{}}'::jsonb)
                ON CONFLICT (user_id, room_id) DO UPDATE SET
                    pos = EXCLUDED.pos, sig = EXCLUDED.sig, counts = EXCLUDED.counts
                """,
                user_id,
                room_id,
                upto,
            )

    async def _counted(
        self, user_id: str, rows: Sequence[Any], upto: int
    ) -> dict[str, dict[str, Counts]]:
        out, due = _counts_of(rows)
        if due:
            await self._summarise(user_id, due, upto)
        return out

    async def counts(
        self, user_id: str, room_ids: Sequence[str], upto: int
    ) -> dict[str, dict[str, Counts]]:
        """Unread notifications per room and thread ('main' for the main
        timeline) up to ``upto``, after the furthest read receipt (m.read
        or m.read.private) of the thread or an unthreaded one."""
        rows = await self._db.fetch(
            f"""
            WITH {_counts_ctes("$2::text[]", "$3")}
            {_COUNT_SELECT}
            """,
            user_id,
            list(room_ids),
            upto,
        )
        return await self._counted(user_id, rows, upto)

    async def notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> list[Notification]:
        """The user's notifications, newest first, before position ``before``."""
        rows = await self._db.fetch(
            f"""
            WITH page AS (
                SELECT * FROM push_actions
                WHERE user_id = $1 AND ($2::bigint IS NULL OR stream_ordering < $2)
                  AND (NOT $4 OR highlight)
                ORDER BY stream_ordering DESC LIMIT $3
            ),
            rc AS ({_receipts_sql("ARRAY(SELECT room_id FROM page)")})
            SELECT pa.room_id, pa.stream_ordering, pa.event_id, pa.actions, pa.ts,
                   pa.stream_ordering <= {_READ_BOUND} AS read
            FROM page pa ORDER BY pa.stream_ordering DESC
            """,
            user_id,
            before,
            limit,
            only_highlight,
        )
        return [
            Notification(
                r["room_id"],
                int(r["stream_ordering"]),
                r["event_id"],
                list(r["actions"]),
                int(r["ts"]),
                bool(r["read"]),
            )
            for r in rows
        ]

    # --------------------------------------------------------- pushers
    async def pushers(self, user_id: str) -> list[Pusher]:
        rows = await self._db.fetch(
            "SELECT user_id, app_id, pushkey, kind, app_display_name, device_display_name, "
            "profile_tag, lang, data FROM pushers WHERE user_id = $1 ORDER BY created_ts",
            user_id,
        )
        return [Pusher(**dict(r)) for r in rows]

    async def set_pusher(self, p: Pusher, *, append: bool, now_ms: int) -> None:
        """Add or replace the pusher (app id, pushkey) of ``p.user_id``;
        unless ``append``, the same pusher of other users goes (spec)."""
        async with self._db.transaction() as conn:
            if not append:
                await conn.execute(
                    "DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
                    p.app_id,
                    p.pushkey,
                    p.user_id,
                )
            await conn.execute(
                "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, "
                "device_display_name, profile_tag, lang, data, created_ts) "
                "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
                "ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET kind = EXCLUDED.kind, "
                "app_display_name = EXCLUDED.app_display_name, "
                "device_display_name = EXCLUDED.device_display_name, "
                "profile_tag = EXCLUDED.profile_tag, lang = EXCLUDED.lang, data = EXCLUDED.data",
                p.user_id,
                p.app_id,
                p.pushkey,
                p.kind,
                p.app_display_name,
                p.device_display_name,
                p.profile_tag,
                p.lang,
                p.data,
                now_ms,
            )

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self._db.execute(
            "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
            user_id,
            app_id,
            pushkey,
        )


def _counts_ctes(rooms: str, upto: str, also: str | None = None) -> str:
    """CTEs ``rc`` (receipts), ``sg`` (each room's receipts as one string),
    ``sm`` (the room's push_summary row while its receipts are unchanged
    and it is not past ``upto``) and ``pa`` (the user's notifications in
    ``rooms`` up to ``upto`` after any unthreaded receipt and after the
    summary — plus, with ``also``, the rows of that CTE: ones inserted by
    the same statement, which its own reads cannot see). The scan of ``pa``
    starts at the bound in the index, room by room: only the rows since the
    summary are read, however many the user left unread."""
    extra = (
        f"UNION ALL SELECT room_id, thread_id, stream_ordering, highlight FROM {also}"
        if also
        else ""
    )
    return f"""rc AS ({_receipts_sql(rooms)}),
    sg AS (
        SELECT q.room_id, COALESCE((SELECT string_agg(rc.thread_id || '@' || rc.pos, ','
                                                     ORDER BY rc.thread_id)
                                    FROM rc WHERE rc.room_id = q.room_id), '') AS sig
        FROM unnest({rooms}) AS q(room_id)
    ),
    sm AS (
        SELECT s.room_id, s.pos, s.counts FROM push_summary s
        JOIN sg ON sg.room_id = s.room_id AND sg.sig = s.sig
        WHERE s.user_id = $1 AND s.room_id = ANY({rooms}) AND s.pos <= {upto}
    ),
    pa AS (
        SELECT x.room_id, x.thread_id, x.stream_ordering, x.highlight
        FROM unnest({rooms}) AS q(room_id)
        CROSS JOIN LATERAL (SELECT GREATEST(
            COALESCE((SELECT pos FROM rc WHERE rc.room_id = q.room_id AND rc.thread_id = ''), 0),
            COALESCE((SELECT pos FROM sm WHERE sm.room_id = q.room_id), 0)) AS lower) b
        -- (OFFSET 0 keeps the scan per room, its bounds in the index: joined
        -- as a whole, the generic plan reads every row of the user)
        CROSS JOIN LATERAL (
            SELECT p.room_id, p.thread_id, p.stream_ordering, p.highlight FROM push_actions p
            WHERE p.user_id = $1 AND p.room_id = q.room_id
              AND p.stream_ordering > b.lower AND p.stream_ordering <= {upto}
            OFFSET 0
        ) x
        {extra}
    )"""


# Counts per room and thread: the summary's plus the ``pa`` rows not read
# (see _counts_ctes); ``tail`` is how many rows past the summary were counted.
_COUNT_SELECT = f"""SELECT c.room_id, c.thread_id, sum(c.n)::bigint AS n, sum(c.h)::bigint AS h,
       sum(c.tail)::bigint AS tail
FROM (
    SELECT pa.room_id, pa.thread_id, count(*) AS n, count(*) FILTER (WHERE pa.highlight) AS h,
           count(*) AS tail
    FROM pa WHERE pa.stream_ordering > {_READ_BOUND}
    GROUP BY pa.room_id, pa.thread_id
    UNION ALL
    SELECT sm.room_id, j.key, (j.value->>0)::bigint, (j.value->>1)::bigint, 0
    FROM sm, jsonb_each(sm.counts) AS j
) c GROUP BY c.room_id, c.thread_id"""

# A room's counts are materialised (push_summary) once this many of its
# notifications were counted past the summary.
SUMMARY_AFTER = 200


def _counts_of(rows: Sequence[Any]) -> tuple[dict[str, dict[str, Counts]], list[str]]:
    """The counts, and the rooms whose summary is due."""
    out: dict[str, dict[str, Counts]] = {}
    tails: dict[str, int] = {}
    for room_id, thread_id, n, h, tail in rows:
        out.setdefault(room_id, {})[thread_id] = Counts(int(n), int(h))
        tails[room_id] = tails.get(room_id, 0) + int(tail)
    return out, [r for r, t in tails.items() if t >= SUMMARY_AFTER]
