"""Leaving (and rejecting invites) through this server: ``make_leave``,
``send_leave`` v1 (``[200, {}]``) and v2 (``{}``)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.errors import json_response
from homeserver.api.federation.common import FEDERATION, authenticate

routes = web.RouteTableDef()


@routes.get("/_matrix/federation/v1/make_leave/{room_id}/{user_id}")
async def make_leave(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    user_id = v.user_id(request.match_info["user_id"])
    resident = request.app[FEDERATION].resident
    return json_response(await resident.make_leave(origin, room_id, user_id))


@routes.put("/_matrix/federation/v1/send_leave/{room_id}/{event_id}")
async def send_leave_v1(request: web.Request) -> web.Response:
    origin, body = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    await request.app[FEDERATION].resident.send_leave(origin, room_id, event_id, body)
    return json_response([200, {}])


@routes.put("/_matrix/federation/v2/send_leave/{room_id}/{event_id}")
async def send_leave_v2(request: web.Request) -> web.Response:
    origin, body = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    await request.app[FEDERATION].resident.send_leave(origin, room_id, event_id, body)
    return json_response({})
