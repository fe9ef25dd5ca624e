"""Account data, global and per room (table account_data). Each write takes a
stream position so /sync can return what changed since a token."""

from __future__ import annotations

from typing import Any

from homeserver.storage.database import Database
from homeserver.storage.events import EventStore

_TAGS = (
    "CASE WHEN jsonb_typeof(account_data.content->'tags') = 'object' "
    "THEN account_data.content->'tags' ELSE '{}'::jsonb END"
)
_ADD_TAG_SQL = (
    "INSERT INTO account_data (user_id, room_id, type, content, stream_ordering) "
    "VALUES ($1, $2, 'm.tag', jsonb_build_object('tags', jsonb_build_object($3::text, $4::jsonb)),"
    " $5) ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = jsonb_set("
    f"account_data.content, '{{tags}}', {_TAGS} || jsonb_build_object($3::text, $4::jsonb)), "
    "stream_ordering = EXCLUDED.stream_ordering"
)
_REMOVE_TAG_SQL = (
    "INSERT INTO account_data (user_id, room_id, type, content, stream_ordering) "
    "VALUES ($1, $2, 'm.tag', jsonb_build_object('tags', '{}'::jsonb), $4) "
    "ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = jsonb_set("
    f"account_data.content, '{{tags}}', {_TAGS} - $3::text), "
    "stream_ordering = EXCLUDED.stream_ordering"
)


class AccountDataStore:
    def __init__(self, db: Database, events: EventStore) -> None:
        self._db = db
        self._events = events

    async def put(self, user_id: str, room_id: str, type: str, content: dict[str, Any]) -> int:
        return await self._events.write_at_new_position(
            user_id,
            "INSERT INTO account_data (user_id, room_id, type, content, stream_ordering) "
            "VALUES ($1,$2,$3,$4,$5) ON CONFLICT (user_id, room_id, type) DO UPDATE "
            "SET content = EXCLUDED.content, stream_ordering = EXCLUDED.stream_ordering",
            user_id,
            room_id,
            type,
            content,
        )

    async def set_tag(
        self, user_id: str, room_id: str, tag: str, content: dict[str, Any] | None
    ) -> int:
        """Add (``content``) or remove (None) one tag of ``m.tag`` in one
        statement, so that concurrent tag changes do not lose each other."""
        if content is not None:
            return await self._events.write_at_new_position(
                user_id, _ADD_TAG_SQL, user_id, room_id, tag, content
            )
        return await self._events.write_at_new_position(
            user_id, _REMOVE_TAG_SQL, user_id, room_id, tag
        )

    async def get(self, user_id: str, room_id: str, type: str) -> dict[str, Any] | None:
        v = await self._db.fetchval(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND type = $3",
            user_id,
            room_id,
            type,
        )
        return v  # type: ignore[no-any-return]

    async def changed(
        self, user_id: str, after: int, upto: int
    ) -> list[tuple[str, str, dict[str, Any]]]:
        rows = await self._db.fetch(
            "SELECT room_id, type, content FROM account_data WHERE user_id = $1 "
            "AND stream_ordering > $2 AND stream_ordering <= $3 ORDER BY stream_ordering",
            user_id,
            after,
            upto,
        )
        return [(r["room_id"], r["type"], r["content"]) for r in rows]

    async def users_with_type(self, type: str) -> list[tuple[str, dict[str, Any]]]:
        rows = await self._db.fetch(
            "SELECT user_id, content FROM account_data WHERE room_id = '' AND type = $1", type
        )
        return [(r["user_id"], r["content"]) for r in rows]
