"""Profiles: display name and avatar, propagated into joined rooms."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import PROFILES
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response

routes = web.RouteTableDef()
P = "/_matrix/client/{version:(?:v3|r0)}"

_FIELDS = {"displayname": 256, "avatar_url": 1000}


@routes.get(P + "/profile/{user_id}")
async def get_profile(request: web.Request) -> web.Response:
    user_id = v.user_id(request.match_info["user_id"])
    p = await request.app[PROFILES].require(user_id)
    out = {
        k: val
        for k, val in (("displayname", p.displayname), ("avatar_url", p.avatar_url))
        if val is not None
    }
    return json_response(out)


@routes.get(P + "/profile/{user_id}/{field:(?:displayname|avatar_url)}")
async def get_field(request: web.Request) -> web.Response:
    user_id = v.user_id(request.match_info["user_id"])
    field = request.match_info["field"]
    p = await request.app[PROFILES].require(user_id)
    value = getattr(p, field)
    if value is None:
        raise MatrixError(404, "M_NOT_FOUND", f"The user has no {field}")
    return json_response({field: value})


@routes.put(P + "/profile/{user_id}/{field:(?:displayname|avatar_url)}")
async def put_field(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    field = request.match_info["field"]
    if user_id != requester.user_id and not requester.is_admin:
        raise MatrixError(403, "M_FORBIDDEN", "You cannot set another user's profile")
    body = await v.read_json(request)
    value = v.get(body, field, str, None)
    if value is not None and len(value) > _FIELDS[field]:
        raise MatrixError(400, "M_TOO_LARGE", f"{field} is too long")
    await request.app[PROFILES].set_field(user_id, field, value)
    return json_response({})
