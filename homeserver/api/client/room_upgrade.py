"""``POST /rooms/{roomId}/upgrade`` (Client-Server API "Room Upgrades")."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response
from homeserver.services.room_upgrade import RoomUpgradeService

ROOM_UPGRADE = web.AppKey("room_upgrade", RoomUpgradeService)

routes = web.RouteTableDef()


@routes.post("/_matrix/client/{version:(?:v3|r0)}/rooms/{room_id}/upgrade")
async def upgrade(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request)
    new_room = await request.app[ROOM_UPGRADE].upgrade(
        requester.user_id,
        room_id,
        v.get(body, "new_version", str),
        v.get_str_list(body, "additional_creators", []),
    )
    return json_response({"replacement_room": new_room})
