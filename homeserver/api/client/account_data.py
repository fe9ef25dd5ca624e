"""Account data, global and per room."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import ACCOUNT_DATA
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response

routes = web.RouteTableDef()
P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.put(P + "/user/{user_id}/account_data/{type}")
async def put_global(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    content = await v.read_json(request)
    await request.app[ACCOUNT_DATA].put(
        requester.user_id, user_id, "", request.match_info["type"], content
    )
    return json_response({})


@routes.get(P + "/user/{user_id}/account_data/{type}")
async def get_global(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    return json_response(
        await request.app[ACCOUNT_DATA].get(
            requester.user_id, user_id, "", request.match_info["type"]
        )
    )


@routes.put(P + "/user/{user_id}/rooms/{room_id}/account_data/{type}")
async def put_room(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    room_id = v.room_id(request.match_info["room_id"])
    content = await v.read_json(request)
    await request.app[ACCOUNT_DATA].put(
        requester.user_id, user_id, room_id, request.match_info["type"], content
    )
    return json_response({})


@routes.get(P + "/user/{user_id}/rooms/{room_id}/account_data/{type}")
async def get_room(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    room_id = v.room_id(request.match_info["room_id"])
    return json_response(
        await request.app[ACCOUNT_DATA].get(
            requester.user_id, user_id, room_id, request.match_info["type"]
        )
    )


@routes.get(P + "/user/{user_id}/rooms/{room_id}/tags")
async def get_tags(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    room_id = v.room_id(request.match_info["room_id"])
    tags = await request.app[ACCOUNT_DATA].tags(requester.user_id, user_id, room_id)
    return json_response({"tags": tags})


@routes.put(P + "/user/{user_id}/rooms/{room_id}/tags/{tag}")
async def put_tag(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    room_id = v.room_id(request.match_info["room_id"])
    content = await v.read_json(request, allow_empty=True)
    await request.app[ACCOUNT_DATA].set_tag(
        requester.user_id, user_id, room_id, request.match_info["tag"], content
    )
    return json_response({})


@routes.delete(P + "/user/{user_id}/rooms/{room_id}/tags/{tag}")
async def delete_tag(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    room_id = v.room_id(request.match_info["room_id"])
    await request.app[ACCOUNT_DATA].set_tag(
        requester.user_id, user_id, room_id, request.match_info["tag"], None
    )
    return json_response({})
