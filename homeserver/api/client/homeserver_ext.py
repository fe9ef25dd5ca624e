"""Our own client endpoints under /_homeserver/client/v1 (DM lookup, room
deletion by its owner)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import ACCOUNT_DATA, DMS, LIFECYCLE, MEMBERSHIP, RATE_LIMITS, ROOM_ADMIN
from homeserver.api.auth import require_user
from homeserver.api.errors import json_response

routes = web.RouteTableDef()
P = "/_homeserver/client/v1"


@routes.get(P + "/dm/{user_id}")
async def dm_lookup(request: web.Request) -> web.Response:
    requester = await require_user(request)
    partner = v.user_id(request.match_info["user_id"])
    rooms = await request.app[ACCOUNT_DATA].dm_rooms(requester.user_id, partner)
    return json_response({"rooms": rooms})


@routes.post(P + "/rooms/{room_id}/delete")
async def delete_room(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request, allow_empty=True)
    service = request.app[ROOM_ADMIN]
    await service.check_owner(room_id, requester.user_id)
    out = await service.delete_room(
        room_id,
        requester.user_id,
        reason=v.get(body, "reason", str, None),
        purge=v.get(body, "purge", bool, False),
    )
    return json_response(out)


@routes.post(P + "/dm")
async def open_dm(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request)
    partner = v.user_id(v.get(body, "user_id", str))
    request.app[RATE_LIMITS].room_creation(requester, 1)
    return json_response(await request.app[DMS].get_or_create(requester.user_id, partner))


@routes.post(P + "/rooms/{room_id}/upgrade_to_group")
async def upgrade_to_group(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request)
    invite = [v.user_id(u) for u in v.get_str_list(body, "invite")]
    copy = v.get(body, "copy_history", int, 0)
    name = v.get(body, "name", str, None)
    out = await request.app[DMS].upgrade_to_group(requester.user_id, room_id, invite, copy, name)
    return json_response(out)


@routes.get(P + "/rooms/archived")
async def archived(request: web.Request) -> web.Response:
    requester = await require_user(request)
    rooms = await request.app[LIFECYCLE].archived_rooms(requester.user_id)
    return json_response({"rooms": rooms})


@routes.get(P + "/invites")
async def invites(request: web.Request) -> web.Response:
    requester = await require_user(request)
    pending = await request.app[LIFECYCLE].pending_invites(requester.user_id)
    return json_response({"invites": pending})


@routes.get(P + "/rooms/{room_id}/config")
async def get_config(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    return json_response(await request.app[LIFECYCLE].config(requester.user_id, room_id))


@routes.put(P + "/rooms/{room_id}/config")
async def put_config(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request)
    return json_response(await request.app[LIFECYCLE].set_config(requester.user_id, room_id, body))


@routes.post(P + "/rooms/{room_id}/revoke")
async def revoke_invite(request: web.Request) -> web.Response:
    """Withdraw a pending invite atomically (refused once the user joined)."""
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request)
    target = v.user_id(v.get(body, "user_id", str))
    await request.app[MEMBERSHIP].revoke_invite(
        requester.user_id, room_id, target, v.get(body, "reason", str, None)
    )
    return json_response({})
