"""Events and state for servers in the room: ``/event``, ``/state``,
``/state_ids``, ``/event_auth``, ``/get_missing_events``, ``/timestamp_to_event``, ``/hierarchy``."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import HIERARCHY, TIMESTAMPS
from homeserver.api.errors import MatrixError, json_response
from homeserver.api.federation.common import FEDERATION, authenticate, require_object
from homeserver.services.timestamps import parse_query

routes = web.RouteTableDef()
V1 = "/_matrix/federation/v1"


def _event_id_query(request: web.Request) -> str:
    eid = request.query.get("event_id")
    if eid is None:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing event_id")
    return v.event_id(eid)


@routes.get(V1 + "/event/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    eid = v.event_id(request.match_info["event_id"])
    return json_response(await request.app[FEDERATION].served.event(origin, eid))


@routes.get(V1 + "/state/{room_id}")
async def get_state(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    served = request.app[FEDERATION].served
    return json_response(await served.state(origin, room_id, _event_id_query(request)))


@routes.get(V1 + "/state_ids/{room_id}")
async def get_state_ids(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    served = request.app[FEDERATION].served
    return json_response(await served.state_ids(origin, room_id, _event_id_query(request)))


@routes.get(V1 + "/event_auth/{room_id}/{event_id}")
async def get_event_auth(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    eid = v.event_id(request.match_info["event_id"])
    return json_response(await request.app[FEDERATION].served.event_auth(origin, room_id, eid))


@routes.post(V1 + "/get_missing_events/{room_id}")
async def get_missing_events(request: web.Request) -> web.Response:
    origin, body = await authenticate(request)
    body = require_object(body)
    room_id = v.room_id(request.match_info["room_id"])
    earliest = v.get_str_list(body, "earliest_events")
    latest = v.get_str_list(body, "latest_events")
    limit = v.get(body, "limit", int, 10)
    min_depth = v.get(body, "min_depth", int, 0)
    served = request.app[FEDERATION].served
    return json_response(
        await served.get_missing_events(origin, room_id, earliest, latest, limit, min_depth)
    )


@routes.get(V1 + "/timestamp_to_event/{room_id}")
async def timestamp_to_event(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    ts, forward = parse_query(request.query)
    await request.app[FEDERATION].served.require_server_in_room(origin, room_id)
    return json_response(await request.app[TIMESTAMPS].closest(room_id, ts, forward))


@routes.get(V1 + "/hierarchy/{room_id}")
async def hierarchy(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    suggested = request.query.get("suggested_only", "false")
    if suggested not in ("true", "false"):
        raise MatrixError(400, "M_INVALID_PARAM", "suggested_only must be true or false")
    answer = await request.app[HIERARCHY].for_server(origin, room_id, suggested == "true")
    return json_response(answer)
