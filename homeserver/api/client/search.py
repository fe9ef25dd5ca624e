"""POST /search (Client-Server API "Server Side Search")."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import SEARCH
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.post(P + "/search")
async def search(request: web.Request) -> web.Response:
    me = await require_user(request)
    body = await v.read_json(request)
    out = await request.app[SEARCH].search(
        me.user_id, me.device_id, body, request.query.get("next_batch")
    )
    return json_response(out)
