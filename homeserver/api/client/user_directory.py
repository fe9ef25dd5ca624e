"""POST /user_directory/search (Client-Server API "User directory")."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import USER_DIRECTORY
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"
DEFAULT_LIMIT = 10


@routes.post(P + "/user_directory/search")
async def search_users(request: web.Request) -> web.Response:
    me = await require_user(request)
    body = await v.read_json(request)
    term = v.get(body, "search_term", str)
    limit = v.get(body, "limit", int, DEFAULT_LIMIT)
    found, limited = await request.app[USER_DIRECTORY].search(me.user_id, term, limit)
    results: list[dict[str, Any]] = []
    for u in found:
        one: dict[str, Any] = {"user_id": u.user_id}
        if u.display_name is not None:
            one["display_name"] = u.display_name
        if u.avatar_url is not None:
            one["avatar_url"] = u.avatar_url
        results.append(one)
    return json_response({"results": results, "limited": limited})
