"""Federation's tables, and the reads over the log that only federation needs.

Tables owned: federation_server_keys, federation_key_responses,
federation_outbox, federation_destinations, federation_received_txns,
federation_backfill_seq. Reads only: events, event_edges, room_members.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from homeserver.storage.database import Database

FED_CHANNEL = "hs_federation"  # payload: a destination that is reachable again


@dataclass(frozen=True, slots=True)
class StoredKey:
    server_name: str
    key_id: str
    verify_key: str  # unpadded base64
    valid_until_ts: int
    is_old: bool


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    event_id: str | None
    edu: dict[str, Any] | None
    created_ts: int


@dataclass(frozen=True, slots=True)
class Destination:
    destination: str
    retry_after_ts: int
    backoff_ms: int
    failures: int
    last_success_ts: int | None


class FederationStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db

    # ---------------------------------------------------------------- keys
    async def server_keys(self, server_name: str) -> dict[str, StoredKey]:
        rows = await self._db.fetch(
            "SELECT server_name, key_id, verify_key, valid_until_ts, is_old "
            "FROM federation_server_keys WHERE server_name = $1",
            server_name,
        )
        return {r["key_id"]: StoredKey(*r) for r in rows}

    async def store_server_keys(
        self,
        server_name: str,
        keys: Sequence[StoredKey],
        response: dict[str, Any] | None,
        valid_until_ts: int,
        now: int,
    ) -> None:
        async with self._db.transaction() as conn:
            for k in keys:
                # A key once known as old never becomes current again, and a
                # validity never shrinks because of a stale answer.
                await conn.execute(
                    "INSERT INTO federation_server_keys (server_name, key_id, verify_key, "
                    "valid_until_ts, is_old, fetched_ts) VALUES ($1,$2,$3,$4,$5,$6) "
                    "ON CONFLICT (server_name, key_id) DO UPDATE SET "
                    "verify_key = EXCLUDED.verify_key, "
                    "valid_until_ts = CASE WHEN EXCLUDED.is_old THEN EXCLUDED.valid_until_ts "
                    "  ELSE GREATEST(federation_server_keys.valid_until_ts, "
                    "  EXCLUDED.valid_until_ts) END, "
                    "is_old = federation_server_keys.is_old OR EXCLUDED.is_old, "
                    "fetched_ts = EXCLUDED.fetched_ts",
                    server_name,
                    k.key_id,
                    k.verify_key,
                    k.valid_until_ts,
                    k.is_old,
                    now,
                )
            if response is not None:
                await conn.execute(
                    "INSERT INTO federation_key_responses (server_name, response, "
                    "valid_until_ts, fetched_ts) VALUES ($1,$2,$3,$4) "
                    "ON CONFLICT (server_name) DO UPDATE SET response = EXCLUDED.response, "
                    "valid_until_ts = EXCLUDED.valid_until_ts, fetched_ts = EXCLUDED.fetched_ts",
                    server_name,
                    json.dumps(response),
                    valid_until_ts,
                    now,
                )

    async def key_response(self, server_name: str) -> tuple[dict[str, Any], int] | None:
        row = await self._db.fetchrow(
            "SELECT response, valid_until_ts FROM federation_key_responses WHERE server_name = $1",
            server_name,
        )
        return (json.loads(row["response"]), row["valid_until_ts"]) if row else None

    # -------------------------------------------------------------- outbox
    async def enqueue(
        self,
        conn: asyncpg.Connection | None,
        items: Iterable[tuple[str, str | None, dict[str, Any] | None]],
        now: int,
    ) -> int:
        """Queue (destination, event_id, edu) rows; on ``conn`` when given
        (inside the caller's transaction)."""
        rows = [
            (dest, eid, json.dumps(edu) if edu is not None else None, now)
            for dest, eid, edu in items
        ]
        if not rows:
            return 0
        sql = (
            "INSERT INTO federation_outbox (destination, event_id, edu, created_ts) "
            "VALUES ($1,$2,$3,$4)"
        )
        if conn is not None:
            await conn.executemany(sql, rows)
        else:
            async with self._db.pool.acquire() as c:
                await c.executemany(sql, rows)
        return len(rows)

    async def queued_destinations(self) -> list[str]:
        rows = await self._db.fetch("SELECT DISTINCT destination FROM federation_outbox")
        return [r["destination"] for r in rows]

    async def next_batch(
        self, destination: str, max_pdus: int, max_edus: int
    ) -> tuple[list[OutboxItem], list[OutboxItem]]:
        pdus = await self._db.fetch(
            "SELECT id, event_id, edu, created_ts FROM federation_outbox "
            "WHERE destination = $1 AND event_id IS NOT NULL ORDER BY id LIMIT $2",
            destination,
            max_pdus,
        )
        edus = await self._db.fetch(
            "SELECT id, event_id, edu, created_ts FROM federation_outbox "
            "WHERE destination = $1 AND event_id IS NULL ORDER BY id LIMIT $2",
            destination,
            max_edus,
        )
        return (
            [OutboxItem(r["id"], r["event_id"], None, r["created_ts"]) for r in pdus],
            [OutboxItem(r["id"], None, json.loads(r["edu"]), r["created_ts"]) for r in edus],
        )

    async def queue_length(self, destination: str) -> int:
        return int(
            await self._db.fetchval(
                "SELECT count(*) FROM federation_outbox WHERE destination = $1", destination
            )
        )

    async def queue_summary(self) -> list[tuple[str, int, int]]:
        """(destination, queued items, oldest item's created_ts) for every
        destination with something queued."""
        rows = await self._db.fetch(
            "SELECT destination, count(*), min(created_ts) FROM federation_outbox "
            "GROUP BY destination ORDER BY destination"
        )
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    async def delete_outbox(self, ids: Sequence[int]) -> None:
        await self._db.execute("DELETE FROM federation_outbox WHERE id = ANY($1::bigint[])", ids)

    # -------------------------------------------------------- destinations
    async def destination(self, destination: str) -> Destination | None:
        row = await self._db.fetchrow(
            "SELECT destination, retry_after_ts, backoff_ms, failures, last_success_ts "
            "FROM federation_destinations WHERE destination = $1",
            destination,
        )
        return Destination(*row) if row else None

    async def acquire_lease(self, destination: str, owner: str, now: int, until: int) -> bool:
        row = await self._db.fetchrow(
            "INSERT INTO federation_destinations (destination, lease_owner, lease_until_ts) "
            "VALUES ($1,$2,$4) ON CONFLICT (destination) DO UPDATE SET "
            "lease_owner = EXCLUDED.lease_owner, lease_until_ts = EXCLUDED.lease_until_ts "
            "WHERE federation_destinations.lease_owner IS NULL "
            "OR federation_destinations.lease_owner = $2 "
            "OR federation_destinations.lease_until_ts < $3 RETURNING destination",
            destination,
            owner,
            now,
            until,
        )
        return row is not None

    async def take_over_leases(self, owner: str) -> int:
        """Free every destination lease held by another owner (the process
        that gains the sending duty: whoever held them lost the duty, most
        likely by dying mid-queue). Returns how many were freed."""
        rows = await self._db.fetch(
            "UPDATE federation_destinations SET lease_owner = NULL, lease_until_ts = 0 "
            "WHERE lease_owner IS NOT NULL AND lease_owner <> $1 RETURNING destination",
            owner,
        )
        return len(rows)

    async def release_lease(self, destination: str, owner: str) -> None:
        await self._db.execute(
            "UPDATE federation_destinations SET lease_owner = NULL, lease_until_ts = 0 "
            "WHERE destination = $1 AND lease_owner = $2",
            destination,
            owner,
        )

    async def record_failure(self, destination: str, backoff_ms: int, retry_after_ts: int) -> None:
        await self._db.execute(
            "INSERT INTO federation_destinations (destination, retry_after_ts, backoff_ms, "
            "failures) VALUES ($1,$2,$3,1) ON CONFLICT (destination) DO UPDATE SET "
            "retry_after_ts = EXCLUDED.retry_after_ts, backoff_ms = EXCLUDED.backoff_ms, "
            "failures = federation_destinations.failures + 1",
            destination,
            retry_after_ts,
            backoff_ms,
        )

    async def record_success(self, destination: str, now: int) -> None:
        await self._db.execute(
            "INSERT INTO federation_destinations (destination, last_success_ts) VALUES ($1,$2) "
            "ON CONFLICT (destination) DO UPDATE SET retry_after_ts = 0, backoff_ms = 0, "
            "failures = 0, last_success_ts = EXCLUDED.last_success_ts",
            destination,
            now,
        )

    async def reset_backoff(self, destination: str) -> bool:
        """The destination contacted us: it is up. True when it was backed off."""
        # Other processes hear it (FED_CHANNEL): the one holding the
        # destination's lease resumes sending at once, not when its backoff ends.
        rows = await self._db.fetch(
            "WITH u AS (UPDATE federation_destinations SET retry_after_ts = 0, backoff_ms = 0, "
            "  failures = 0 WHERE destination = $1 AND failures > 0 RETURNING destination) "
            "SELECT pg_notify($2, destination) FROM u",
            destination,
            FED_CHANNEL,
        )
        return bool(rows)

    # ------------------------------------------------ received transactions
    async def received_txn(self, origin: str, txn_id: str) -> dict[str, Any] | None:
        v = await self._db.fetchval(
            "SELECT response FROM federation_received_txns WHERE origin = $1 AND txn_id = $2",
            origin,
            txn_id,
        )
        return json.loads(v) if v is not None else None

    async def store_received_txn(
        self, origin: str, txn_id: str, response: dict[str, Any], now: int
    ) -> None:
        await self._db.execute(
            "INSERT INTO federation_received_txns (origin, txn_id, response, received_ts) "
            "VALUES ($1,$2,$3,$4) ON CONFLICT DO NOTHING",
            origin,
            txn_id,
            json.dumps(response),
            now,
        )

    async def prune_received_txns(self, before_ts: int) -> int:
        """Forget transactions received before ``before_ts`` (a retry comes
        within minutes; a replay after that is handled by event ids)."""
        r = await self._db.execute(
            "DELETE FROM federation_received_txns WHERE received_ts < $1", before_ts
        )
        return int(r.split()[-1])

    # ----------------------------------------------------- reads over the log
    async def backfill_positions(self, n: int) -> list[int]:
        """``n`` fresh negative stream positions, decreasing."""
        rows = await self._db.fetch(
            "SELECT -nextval('federation_backfill_seq') AS pos FROM generate_series(1, $1)", n
        )
        return sorted((int(r["pos"]) for r in rows), reverse=True)

    async def joined_servers(self, conn: asyncpg.Connection | None, room_id: str) -> set[str]:
        sql = "SELECT user_id FROM room_members WHERE room_id = $1 AND membership = 'join'"
        rows = await (
            conn.fetch(sql, room_id) if conn is not None else self._db.fetch(sql, room_id)
        )
        return {r["user_id"].split(":", 1)[1] for r in rows}

    async def children(self, event_ids: Sequence[str]) -> dict[str, list[str]]:
        rows = await self._db.fetch(
            "SELECT prev_event_id, event_id FROM event_edges WHERE prev_event_id = ANY($1::text[])",
            list(event_ids),
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r["prev_event_id"], []).append(r["event_id"])
        return out

    async def backward_extremities(self, room_id: str, limit: int = 20) -> list[tuple[str, int]]:
        """(missing prev event id, depth of its child) for the room's oldest
        gaps: prev events of timeline events we do not have in the timeline."""
        rows = await self._db.fetch(
            "SELECT x.prev_event_id, min(e.depth) AS depth FROM event_edges x "
            "JOIN events e ON e.event_id = x.event_id "
            "WHERE x.room_id = $1 AND NOT e.outlier AND NOT EXISTS ("
            "  SELECT 1 FROM events p WHERE p.event_id = x.prev_event_id AND NOT p.outlier) "
            "GROUP BY x.prev_event_id ORDER BY min(e.depth) DESC LIMIT $2",
            room_id,
            limit,
        )
        return [(r["prev_event_id"], int(r["depth"])) for r in rows]

    async def earliest_timeline_position(self, room_id: str) -> int | None:
        v = await self._db.fetchval(
            "SELECT min(stream_ordering) FROM events WHERE room_id = $1 AND NOT outlier", room_id
        )
        return int(v) if v is not None else None

    async def events_for_backfill(
        self, room_id: str, start_ids: Sequence[str], limit: int
    ) -> list[str]:
        """Breadth-first walk back along prev_events from ``start_ids``
        (included), newest depth first, up to ``limit`` events we hold in the
        timeline."""
        rows = await self._db.fetch(
            "WITH RECURSIVE walk(event_id, depth, n) AS ("
            "  SELECT e.event_id, e.depth, 0 FROM events e "
            "  WHERE e.event_id = ANY($2::text[]) AND e.room_id = $1 AND NOT e.outlier"
            "  UNION"
            "  SELECT p.event_id, p.depth, w.n + 1 FROM walk w "
            "  JOIN event_edges x ON x.event_id = w.event_id "
            "  JOIN events p ON p.event_id = x.prev_event_id AND NOT p.outlier "
            "  WHERE w.n < $3) "
            "SELECT event_id, max(depth) AS depth FROM walk GROUP BY event_id "
            "ORDER BY max(depth) DESC LIMIT $3",
            room_id,
            list(start_ids),
            limit,
        )
        return [r["event_id"] for r in rows]

    async def has_local_member(
        self, room_id: str, server_name: str, memberships: Sequence[str]
    ) -> bool:
        return bool(
            await self._db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 "
                "AND membership = ANY($3::text[]) AND user_id LIKE '%:' || $2)",
                room_id,
                server_name,
                list(memberships),
            )
        )

    async def record_state_before(
        self, conn: asyncpg.Connection, event_id: str, group: int
    ) -> None:
        await conn.execute(
            "INSERT INTO federation_state_before (event_id, state_group) VALUES ($1,$2) "
            "ON CONFLICT DO NOTHING",
            event_id,
            group,
        )

    async def state_before_group(self, event_id: str) -> int | None:
        v = await self._db.fetchval(
            "SELECT state_group FROM federation_state_before WHERE event_id = $1", event_id
        )
        return int(v) if v is not None else None

    async def min_depth(self, room_id: str) -> int:
        v = await self._db.fetchval(
            "SELECT min(depth) FROM events WHERE room_id = $1 AND NOT outlier", room_id
        )
        return int(v or 0)
