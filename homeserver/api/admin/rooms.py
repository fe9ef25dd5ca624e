"""Operator API: list, inspect, create (for others) and delete rooms (server
admins only)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import ROOM_ADMIN
from homeserver.api.auth import require_admin
from homeserver.api.errors import json_response
from homeserver.services.room_admin import OperatorRoom

routes = web.RouteTableDef()
P = "/_homeserver/admin/v1"


@routes.get(P + "/rooms")
async def list_rooms(request: web.Request) -> web.Response:
    requester = await require_admin(request)
    q = request.query
    await request.app[ROOM_ADMIN].audit(requester.user_id, "list_rooms", None, **dict(q))
    out = await request.app[ROOM_ADMIN].list_rooms(
        search=q.get("search_term"),
        order_by=q.get("order_by", "name"),
        direction=q.get("dir", "f"),
        offset=v.query_int(request, "from", 0),
        limit=v.query_int(request, "limit", 100, lo=1, hi=1000),
    )
    return json_response(out)


@routes.post(P + "/rooms")
async def create_room(request: web.Request) -> web.Response:
    """Create a room for others: ``{"owner", "kind"?, "name"?, "topic"?,
    "invite"?: [...], "add"?: [...], "room_version"?}``. The operator does not
    become a member; the action is audited by the service (with the room id)."""
    requester = await require_admin(request)
    body = await v.read_json(request)
    spec = OperatorRoom(
        owner=v.user_id(v.get(body, "owner", str), "owner"),
        kind=v.get(body, "kind", str, "persistent"),
        name=v.get(body, "name", str, None),
        topic=v.get(body, "topic", str, None),
        invite=tuple(v.user_id(u, "invite") for u in v.get_str_list(body, "invite", [])),
        add=tuple(v.user_id(u, "add") for u in v.get_str_list(body, "add", [])),
        room_version=v.get(body, "room_version", str, None),
    )
    out = await request.app[ROOM_ADMIN].create_for_others(requester.user_id, spec)
    return json_response(out)


@routes.get(P + "/rooms/{room_id}")
async def room_details(request: web.Request) -> web.Response:
    requester = await require_admin(request)
    room_id = v.room_id(request.match_info["room_id"])
    await request.app[ROOM_ADMIN].audit(requester.user_id, "inspect_room", room_id)
    return json_response(await request.app[ROOM_ADMIN].room_details(room_id))


@routes.get(P + "/rooms/{room_id}/members")
async def room_members(request: web.Request) -> web.Response:
    requester = await require_admin(request)
    room_id = v.room_id(request.match_info["room_id"])
    await request.app[ROOM_ADMIN].audit(requester.user_id, "list_members", room_id)
    members = await request.app[ROOM_ADMIN].members(room_id)
    return json_response({"members": members, "total": len(members)})


@routes.get(P + "/rooms/{room_id}/state")
async def room_state(request: web.Request) -> web.Response:
    requester = await require_admin(request)
    room_id = v.room_id(request.match_info["room_id"])
    await request.app[ROOM_ADMIN].audit(requester.user_id, "show_state", room_id)
    return json_response({"state": await request.app[ROOM_ADMIN].state(room_id)})


@routes.post(P + "/rooms/{room_id}/members")
async def add_member(request: web.Request) -> web.Response:
    requester = await require_admin(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request)
    user_id = v.user_id(v.get(body, "user_id", str))
    await request.app[ROOM_ADMIN].audit(requester.user_id, "add_user", room_id, user_id=user_id)
    await request.app[ROOM_ADMIN].add_user(room_id, user_id, requester.user_id)
    return json_response({})


@routes.delete(P + "/rooms/{room_id}")
async def delete_room(request: web.Request) -> web.Response:
    requester = await require_admin(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request, allow_empty=True)
    await request.app[ROOM_ADMIN].audit(requester.user_id, "delete_room", room_id, **body)
    out = await request.app[ROOM_ADMIN].delete_room(
        room_id,
        requester.user_id,
        reason=v.get(body, "reason", str, None),
        purge=v.get(body, "purge", bool, False),
        block=v.get(body, "block", bool, True),
    )
    return json_response(out)
