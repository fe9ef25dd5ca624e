"""POST /rooms/{roomId}/report[/{eventId}] (Client-Server API "Reporting content")."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import REPORTS
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.post(P + "/rooms/{room_id}/report/{event_id}")
async def report_event(request: web.Request) -> web.Response:
    me = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    body = await v.read_json(request, allow_empty=True)
    await request.app[REPORTS].report_event(
        me.user_id, room_id, event_id, body.get("reason"), body.get("score")
    )
    return json_response({})


@routes.post(P + "/rooms/{room_id}/report")
async def report_room(request: web.Request) -> web.Response:
    me = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request, allow_empty=True)
    await request.app[REPORTS].report_room(me.user_id, room_id, body.get("reason"))
    return json_response({})
