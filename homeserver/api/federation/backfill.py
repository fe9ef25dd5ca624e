"""``GET /_matrix/federation/v1/backfill/{roomId}``: older history."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.errors import MatrixError, json_response
from homeserver.api.federation.common import FEDERATION, authenticate

routes = web.RouteTableDef()


@routes.get("/_matrix/federation/v1/backfill/{room_id}")
async def backfill(request: web.Request) -> web.Response:
    origin, _ = await authenticate(request)
    room_id = v.room_id(request.match_info["room_id"])
    ids = [v.event_id(e) for e in request.query.getall("v", [])]
    if not ids:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing v")
    raw = request.query.get("limit")
    if raw is None or not raw.isdigit():
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be a positive integer")
    served = request.app[FEDERATION].served
    return json_response(await served.backfill(origin, room_id, ids, int(raw)))
