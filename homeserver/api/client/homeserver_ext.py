"""Our own client endpoints under /_homeserver/client/v1 (DM lookup, room
deletion by its owner)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import ACCOUNT_DATA, ROOM_ADMIN
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response

routes = web.RouteTableDef()
P = "/_homeserver/client/v1"


@routes.get(P + "/dm/{user_id}")
async def dm_lookup(request: web.Request) -> web.Response:
    requester = await require_user(request)
    partner = v.user_id(request.match_info["user_id"])
    rooms = await request.app[ACCOUNT_DATA].dm_rooms(requester.user_id, partner)
    return json_response({"rooms": rooms})


@routes.post(P + "/rooms/{room_id}/delete")
async def delete_room(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request, allow_empty=True)
    service = request.app[ROOM_ADMIN]
    await service.check_owner(room_id, requester.user_id)
    out = await service.delete_room(
        room_id,
        requester.user_id,
        reason=v.get(body, "reason", str, None),
        purge=v.get(body, "purge", bool, False),
    )
    return json_response(out)
