"""Room aliases and the public room directory.

Aliases and directory visibility are server-local data (not room events);
the room's name, topic and member counts come from the room_stats projection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from homeserver.core.auth import get_user_power_level
from homeserver.core.ids import RoomAlias
from homeserver.services.errors import MatrixError, forbidden, not_found
from homeserver.services.room_state import RoomState
from homeserver.storage.rooms import AliasExists, RoomStore

MAX_PUBLIC_ROOMS_PAGE = 1000


class RemoteDirectory(Protocol):
    async def query_alias(self, alias: str) -> tuple[str, list[str]] | None: ...


class DirectoryService:
    def __init__(self, rooms: RoomStore, state: RoomState, server_name: str) -> None:
        self._rooms = rooms
        self._state = state
        self._server_name = server_name
        self.remote: RemoteDirectory | None = None

    async def resolve_local(self, alias: str) -> str | None:
        rec = await self._rooms.get_alias(alias)
        return rec.room_id if rec else None

    async def resolve(self, alias: RoomAlias) -> tuple[str, list[str]]:
        """(room id, servers) for an alias, asking its server if remote."""
        if alias.server_name != self._server_name:
            if self.remote is None:
                raise not_found(f"Room alias {alias} not found")
            got = await self.remote.query_alias(alias)
            if got is None:
                raise not_found(f"Room alias {alias} not found")
            return got
        room_id = await self.resolve_local(alias)
        if room_id is None:
            raise not_found(f"Room alias {alias} not found")
        servers = sorted(await self._state.projections.room_servers(room_id)) or [self._server_name]
        if self._server_name in servers:
            servers.remove(self._server_name)
            servers.insert(0, self._server_name)
        return room_id, servers

    async def create_alias(self, alias: str, room_id: str, creator: str) -> None:
        if RoomAlias(alias).server_name != self._server_name:
            raise MatrixError(400, "M_INVALID_PARAM", "Alias must be on this server")
        try:
            await self._rooms.create_alias(alias, room_id, creator)
        except AliasExists as e:
            raise MatrixError(409, "M_UNKNOWN", f"Room alias {alias} already exists") from e

    async def put_alias(self, user_id: str, alias: str, room_id: str) -> None:
        await self._state.require_room(room_id)
        await self.create_alias(alias, room_id, user_id)

    async def delete_alias(self, user_id: str, alias: str, *, is_admin: bool) -> None:
        rec = await self._rooms.get_alias(alias)
        if rec is None:
            raise not_found(f"Room alias {alias} not found")
        if (
            not is_admin
            and rec.creator != user_id
            and not await self._can_moderate(rec.room_id, user_id)
        ):
            raise forbidden("You may not delete this alias")
        await self._rooms.delete_alias(alias)

    async def _can_moderate(self, room_id: str, user_id: str) -> bool:
        pl = await self._state.event(room_id, "m.room.power_levels")
        create = await self._state.event(room_id, "m.room.create")
        if create is None:
            return False
        need = 50
        if pl is not None:
            events = pl.content.get("events", {})
            need = events.get("m.room.canonical_alias", pl.content.get("state_default", 50))
        return get_user_power_level(user_id, pl, create) >= need

    async def aliases(self, user_id: str, room_id: str) -> list[str]:
        await self._state.require_room(room_id)
        hv = await self._state.content(room_id, "m.room.history_visibility")
        if hv.get("history_visibility") != "world_readable":
            await self._state.require_joined(room_id, user_id)
        return await self._rooms.aliases_for_room(room_id)

    async def get_visibility(self, room_id: str) -> str:
        await self._state.require_room(room_id)
        return await self._rooms.get_visibility(room_id)

    async def set_visibility(
        self, room_id: str, visibility: str, user_id: str | None = None, *, is_admin: bool = False
    ) -> None:
        if visibility not in ("public", "private"):
            raise MatrixError(400, "M_INVALID_PARAM", "visibility must be public or private")
        await self._state.require_room(room_id)
        if user_id is not None and not is_admin:
            await self._state.require_joined(room_id, user_id)
            if not await self._can_moderate(room_id, user_id):
                raise forbidden("You need the power to change the room's aliases")
        await self._rooms.set_visibility(room_id, visibility)

    async def public_rooms(
        self, search: str | None, since: str | None, limit: int | None
    ) -> dict[str, Any]:
        offset = 0
        if since:
            try:
                offset = int(since.lstrip("o"))
            except ValueError as e:
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid since token") from e
            if not 0 <= offset < 2**31:
                raise MatrixError(400, "M_INVALID_PARAM", "Invalid since token")
        # (a larger limit gets the largest page, for GET and POST alike)
        page = min(limit, MAX_PUBLIC_ROOMS_PAGE) if limit and limit > 0 else 100
        rows, total = await self._rooms.public_rooms(search, offset, page)
        chunk = [room_summary(r) for r in rows]
        out: dict[str, Any] = {"chunk": chunk, "total_room_count_estimate": total}
        if offset + len(chunk) < total:
            out["next_batch"] = f"o{offset + len(chunk)}"
        if offset > 0:
            out["prev_batch"] = f"o{max(0, offset - page)}"
        return out


def room_summary(r: Mapping[str, Any]) -> dict[str, Any]:
    """A room as the directory and the space hierarchy show it (the spec's
    ``PublicRoomsChunk``), from its ``room_stats`` row."""
    entry: dict[str, Any] = {
        "room_id": r["room_id"],
        "num_joined_members": r["joined_members"],
        "world_readable": r["history_visibility"] == "world_readable",
        "guest_can_join": r["guest_access"] == "can_join",
        "join_rule": r["join_rule"] or "invite",
    }
    for key in ("name", "topic", "canonical_alias", "avatar_url", "room_type"):
        if r[key] is not None:
            entry[key] = r[key]
    return entry
