"""POST /user_directory/search (Client-Server API "User directory")."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import USER_DIRECTORY
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response

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


@routes.get("/_matrix/client/v1/mutual_rooms")
async def mutual_rooms(request: web.Request) -> web.Response:
    """The rooms the requester and ``user_id`` are both joined to."""
    me = await require_user(request)
    raw = request.query.get("user_id")
    if raw is None:
        raise MatrixError(400, "M_MISSING_PARAM", "user_id is required")
    other = v.user_id(raw)
    if other == me.user_id:
        raise MatrixError(422, "M_UNKNOWN", "You are in every room you are in")
    rooms = await request.app[USER_DIRECTORY].mutual_rooms(me.user_id, other)
    return json_response({"joined": rooms})
