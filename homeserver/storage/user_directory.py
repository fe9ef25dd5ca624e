"""The user directory, derived from room memberships and profiles.

Who is listed follows Synapse's default (``search_all_users: false``): the
users who share a room with the searcher, and the members of public rooms.
Local users' names come from their profiles, remote users' from their
latest member event in a room the searcher can see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    user_id: str
    display_name: str | None
    avatar_url: str | None


def _like(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class UserDirectoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def search(self, searcher: str, words: Sequence[str], limit: int) -> list[DirectoryUser]:
        """Users visible to ``searcher`` whose id or name contains every
        word; names that start with the first word first. ``limit`` + 1 rows
        at most (so the caller can tell ``limited``)."""
        rows = await self._db.fetch(
            "WITH rooms AS ("
            "  SELECT room_id FROM room_members WHERE user_id = $1 AND membership = 'join'"
            "  UNION SELECT room_id FROM room_stats WHERE join_rule = 'public'), "
            "seen AS ("
            "  SELECT DISTINCT ON (m.user_id) m.user_id, m.displayname, m.avatar_url "
            "  FROM room_members m JOIN rooms USING (room_id) WHERE m.membership = 'join' "
            "  ORDER BY m.user_id, m.stream_ordering DESC), "
            "named AS ("
            "  SELECT s.user_id, COALESCE(p.displayname, s.displayname) AS name, "
            "  COALESCE(p.avatar_url, s.avatar_url) AS avatar "
            "  FROM seen s LEFT JOIN profiles p USING (user_id)) "
            "SELECT user_id, name, avatar FROM named "
            "WHERE (SELECT bool_and(user_id ILIKE w OR COALESCE(name, '') ILIKE w) "
            "       FROM unnest($2::text[]) AS w) "
            "ORDER BY (lower(COALESCE(name, '')) LIKE lower($3) || '%' "
            "          OR lower(split_part(substr(user_id, 2), ':', 1)) LIKE lower($3) || '%') DESC, "
            "         name NULLS LAST, user_id LIMIT $4",
            searcher,
            [_like(w) for w in words],
            words[0].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"),
            limit + 1,
        )
        return [DirectoryUser(r[0], r[1], r[2]) for r in rows]

    async def mutual_rooms(self, a: str, b: str) -> list[str]:
        """Rooms both users are joined to."""
        rows = await self._db.fetch(
            "SELECT x.room_id FROM room_members x JOIN room_members y USING (room_id) "
            "WHERE x.user_id = $1 AND x.membership = 'join' AND y.user_id = $2 "
            "AND y.membership = 'join' ORDER BY x.room_id",
            a,
            b,
        )
        return [r[0] for r in rows]
