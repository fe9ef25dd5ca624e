"""GET /health (liveness) and GET /health/ready (readiness)."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.appkeys import HEALTH
from homeserver.api.errors import json_response

routes = web.RouteTableDef()


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    return json_response(await request.app[HEALTH].readiness())
