"""Room aliases and the public room directory."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import CONFIG, DIRECTORY
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response
from homeserver.core.ids import RoomAlias

routes = web.RouteTableDef()
P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.get(P + "/directory/room/{alias}")
async def get_alias(request: web.Request) -> web.Response:
    alias = RoomAlias(v.room_alias(request.match_info["alias"]))
    room_id, servers = await request.app[DIRECTORY].resolve(alias)
    return json_response({"room_id": room_id, "servers": servers})


@routes.put(P + "/directory/room/{alias}")
async def put_alias(request: web.Request) -> web.Response:
    requester = await require_user(request)
    alias = v.room_alias(request.match_info["alias"])
    body = await v.read_json(request)
    room_id = v.room_id(v.get(body, "room_id", str))
    await request.app[DIRECTORY].put_alias(requester.user_id, alias, room_id)
    return json_response({})


@routes.delete(P + "/directory/room/{alias}")
async def delete_alias(request: web.Request) -> web.Response:
    requester = await require_user(request)
    alias = v.room_alias(request.match_info["alias"])
    await request.app[DIRECTORY].delete_alias(requester.user_id, alias, is_admin=requester.is_admin)
    return json_response({})


@routes.get(P + "/rooms/{room_id}/aliases")
async def room_aliases(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    return json_response(
        {"aliases": await request.app[DIRECTORY].aliases(requester.user_id, room_id)}
    )


@routes.get(P + "/directory/list/room/{room_id}")
async def get_visibility(request: web.Request) -> web.Response:
    room_id = v.room_id(request.match_info["room_id"])
    return json_response({"visibility": await request.app[DIRECTORY].get_visibility(room_id)})


@routes.put(P + "/directory/list/room/{room_id}")
async def set_visibility(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request)
    visibility = v.get(body, "visibility", str, "public")
    await request.app[DIRECTORY].set_visibility(
        room_id, visibility, requester.user_id, is_admin=requester.is_admin
    )
    return json_response({})


@routes.get(P + "/publicRooms")
async def public_rooms_get(request: web.Request) -> web.Response:
    # The spec lets servers require a token here; like Synapse's
    # allow_public_rooms_without_auth, ours does unless the operator opens it.
    if not request.app[CONFIG].directory.allow_public_rooms_without_auth:
        await require_user(request)
    limit = v.query_int(request, "limit", 0, lo=0) or None
    server = request.query.get("server")
    if server is not None:
        v.server_name(server)
    out = await request.app[DIRECTORY].public_rooms(None, request.query.get("since"), limit)
    return json_response(out)


@routes.post(P + "/publicRooms")
async def public_rooms_post(request: web.Request) -> web.Response:
    await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    limit = v.get(body, "limit", int, None)
    since = v.get(body, "since", str, None)
    flt = v.get(body, "filter", dict, {})
    term = v.get(flt, "generic_search_term", str, None)
    if limit is not None and limit < 0:
        raise MatrixError(400, "M_INVALID_PARAM", "limit must not be negative")
    return json_response(await request.app[DIRECTORY].public_rooms(term, since, limit))
