"""GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import TIMESTAMPS
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response
from homeserver.services.timestamps import parse_query

routes = web.RouteTableDef()


@routes.get("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event")
async def timestamp_to_event(request: web.Request) -> web.Response:
    me = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    ts, forward = parse_query(request.query)
    return json_response(await request.app[TIMESTAMPS].for_user(me.user_id, room_id, ts, forward))
