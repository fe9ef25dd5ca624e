"""Searching for users (Client-Server API "User directory"): whom a user may
find is decided in ``storage/user_directory.py`` (shared rooms and public
rooms, as Synapse by default); this caps and shapes the answer."""

from __future__ import annotations

from homeserver.services.errors import MatrixError
from homeserver.storage.user_directory import DirectoryUser, UserDirectoryStore

MAX_LIMIT = 50
MAX_TERM = 200


class UserDirectoryService:
    def __init__(self, store: UserDirectoryStore) -> None:
        self._store = store

    async def search(
        self, searcher: str, term: str, limit: int
    ) -> tuple[list[DirectoryUser], bool]:
        """Up to ``limit`` users, and whether more matched."""
        if limit < 0:
            raise MatrixError(400, "M_INVALID_PARAM", "limit must not be negative")
        if len(term) > MAX_TERM:
            raise MatrixError(400, "M_INVALID_PARAM", "search_term is too long")
        words = term.split()
        if not words or limit == 0:
            return [], bool(words)
        limit = min(limit, MAX_LIMIT)
        found = await self._store.search(searcher, words, limit)
        return found[:limit], len(found) > limit

    async def mutual_rooms(self, a: str, b: str) -> list[str]:
        return await self._store.mutual_rooms(a, b)
