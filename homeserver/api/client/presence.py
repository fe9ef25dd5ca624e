"""GET/PUT /presence/{userId}/status (Client-Server API "Presence")."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import PRESENCE
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.put(P + "/presence/{user_id}/status")
async def set_presence(request: web.Request) -> web.Response:
    me = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    body = await v.read_json(request)
    await request.app[PRESENCE].set_status(
        me.user_id, user_id, body.get("presence"), body.get("status_msg")
    )
    return json_response({})


@routes.get(P + "/presence/{user_id}/status")
async def get_presence(request: web.Request) -> web.Response:
    me = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    return json_response(await request.app[PRESENCE].get_status(me.user_id, user_id))
