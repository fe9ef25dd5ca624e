"""``PUT /_matrix/federation/v2/invite/{roomId}/{eventId}``: a remote user
invites one of ours; we check, countersign and return the event."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import RATE_LIMITS
from homeserver.api.errors import json_response
from homeserver.api.federation.common import FEDERATION, authenticate

routes = web.RouteTableDef()


@routes.put("/_matrix/federation/v2/invite/{room_id}/{event_id}")
async def invite_v2(request: web.Request) -> web.Response:
    origin, body = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    event = body.get("event") if isinstance(body, dict) else None
    target = event.get("state_key") if isinstance(event, dict) else None
    if isinstance(target, str):
        request.app[RATE_LIMITS].remote_invite(target)
    resident = request.app[FEDERATION].resident
    return json_response(await resident.invite(origin, room_id, event_id, body))
