"""Rate-limit buckets shared by every process on the database (table:
rate_limit_buckets). Only the limits that guard credentials live here —
login and registration — so that several processes behind one name count
one attacker once; the hot paths keep their buckets in memory."""

from __future__ import annotations

from collections.abc import Callable

from homeserver.core.ratelimit import Bucket, Rate
from homeserver.storage.database import Database


class RateLimitStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def bucket(self, name: str, key: str) -> Bucket | None:
        row = await self._db.fetchrow(
            "SELECT level, at FROM rate_limit_buckets WHERE name = $1 AND key = $2", name, key
        )
        return Bucket(row["level"], row["at"]) if row else None

    async def update(
        self, name: str, key: str, rate: Rate, decide: Callable[[Bucket | None], Bucket | None]
    ) -> None:
        """Lock the bucket, let ``decide`` compute its next value from the
        current one (None: leave it), and store that — one attempt at a time
        per bucket across processes."""
        async with self._db.transaction() as conn:
            row = await conn.fetchrow(
                "SELECT level, at FROM rate_limit_buckets WHERE name = $1 AND key = $2 FOR UPDATE",
                name,
                key,
            )
            if row is None:
                # Make the row (or wait for a concurrent maker), then lock it.
                await conn.execute(
                    "INSERT INTO rate_limit_buckets (name, key, level, at, empty_at) "
                    "VALUES ($1, $2, 0, 0, 0) ON CONFLICT DO NOTHING",
                    name,
                    key,
                )
                row = await conn.fetchrow(
                    "SELECT level, at FROM rate_limit_buckets "
                    "WHERE name = $1 AND key = $2 FOR UPDATE",
                    name,
                    key,
                )
            current = Bucket(row["level"], row["at"]) if row and row["at"] else None
            new = decide(current)
            if new is not None:
                await conn.execute(
                    "UPDATE rate_limit_buckets SET level = $3, at = $4, empty_at = $5 "
                    "WHERE name = $1 AND key = $2",
                    name,
                    key,
                    new.level,
                    new.at,
                    new.empty_at(rate),
                )

    async def forget_empty(self, now: float) -> int:
        """Drop buckets that have drained completely (they count nothing)."""
        status = await self._db.execute("DELETE FROM rate_limit_buckets WHERE empty_at < $1", now)
        return int(status.split()[-1])
