"""Joining and knocking through this server: ``make_join``, ``send_join``
(v1 answers ``[200, body]``, v2 the body), ``make_knock``, ``send_knock``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import RATE_LIMITS
from homeserver.api.errors import json_response
from homeserver.api.federation.common import FEDERATION, authenticate

routes = web.RouteTableDef()
V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


def _ids(request: web.Request, second: str) -> tuple[str, str]:
    room_id = v.room_id(request.match_info["room_id"])
    other = request.match_info[second]
    return room_id, v.user_id(other) if second == "user_id" else v.event_id(other)


@routes.get(V1 + "/make_join/{room_id}/{user_id}")
async def make_join(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id, user_id = _ids(request, "user_id")
    versions = request.query.getall("ver", [])
    resident = request.app[FEDERATION].resident
    return json_response(await resident.make_join(origin, room_id, user_id, versions))


async def _send_join(request: web.Request) -> Any:
    """The send_join answer, under the room's join limit (counted only for
    a join that went through)."""
    origin, body = await authenticate(request)
    room_id, event_id = _ids(request, "event_id")
    limits = request.app[RATE_LIMITS]
    limits.remote_join_allowed(room_id)
    out = await request.app[FEDERATION].resident.send_join(origin, room_id, event_id, body)
    limits.remote_joined(room_id)
    return out


@routes.put(V1 + "/send_join/{room_id}/{event_id}")
async def send_join_v1(request: web.Request) -> web.Response:
    return json_response([200, await _send_join(request)])


@routes.put(V2 + "/send_join/{room_id}/{event_id}")
async def send_join_v2(request: web.Request) -> web.Response:
    return json_response(await _send_join(request))


@routes.get(V1 + "/make_knock/{room_id}/{user_id}")
async def make_knock(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id, user_id = _ids(request, "user_id")
    versions = request.query.getall("ver", [])
    resident = request.app[FEDERATION].resident
    return json_response(await resident.make_knock(origin, room_id, user_id, versions))


@routes.put(V1 + "/send_knock/{room_id}/{event_id}")
async def send_knock(request: web.Request) -> web.Response:
    origin, body = await authenticate(request)
    room_id, event_id = _ids(request, "event_id")
    resident = request.app[FEDERATION].resident
    return json_response(await resident.send_knock(origin, room_id, event_id, body))
