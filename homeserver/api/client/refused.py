"""Endpoints of the versions we advertise that this server refuses on
purpose, each with the error the spec gives for that case (not a bare 404),
so that client libraries take their documented fallback.

- ``POST /refresh``: login never hands out refresh tokens, so any given is
  unknown (401 ``M_UNKNOWN_TOKEN``, soft_logout false).
- Application-service-only endpoints: no application services are
  registered, so no caller is one (403 ``M_FORBIDDEN``).
"""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.errors import MatrixError

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.post(P + "/refresh")
async def refresh(request: web.Request) -> web.Response:
    body = await v.read_json(request)
    v.get(body, "refresh_token", str)
    raise MatrixError(
        401, "M_UNKNOWN_TOKEN", "This server does not issue refresh tokens", soft_logout=False
    )


@routes.post("/_matrix/client/v1/appservice/{appservice_id}/ping")
@routes.put(P + "/directory/list/appservice/{network_id}/{room_id}")
async def appservice_only(request: web.Request) -> web.Response:
    raise MatrixError(403, "M_FORBIDDEN", "No application services are registered here")
