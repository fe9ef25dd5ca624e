"""Queries: ``/query/directory`` (room aliases) and ``/query/profile``."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.errors import MatrixError, json_response
from homeserver.api.federation.common import FEDERATION, authenticate

routes = web.RouteTableDef()


@routes.get("/_matrix/federation/v1/query/directory")
async def query_directory(request: web.Request) -> web.Response:
    await authenticate(request)
    alias = request.query.get("room_alias")
    if alias is None:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing room_alias")
    return json_response(await request.app[FEDERATION].served.query_directory(alias))


@routes.get("/_matrix/federation/v1/query/profile")
async def query_profile(request: web.Request) -> web.Response:
    await authenticate(request)
    user_id = request.query.get("user_id")
    if user_id is None:
        raise MatrixError(400, "M_MISSING_PARAM", "Missing user_id")
    field = request.query.get("field")
    return json_response(await request.app[FEDERATION].served.query_profile(user_id, field))
