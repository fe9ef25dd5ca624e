"""Server identity over federation: ``/_matrix/key/v2/server`` and version."""

from __future__ import annotations

from aiohttp import web

import homeserver
from homeserver.api.appkeys import SERVER_KEYS
from homeserver.api.errors import json_response

routes = web.RouteTableDef()


@routes.get("/_matrix/key/v2/server")
@routes.get("/_matrix/key/v2/server/{key_id}")
async def server_keys(request: web.Request) -> web.Response:
    return json_response(request.app[SERVER_KEYS].server_keys_response())


@routes.get("/_matrix/federation/v1/version")
async def version(request: web.Request) -> web.Response:
    return json_response({"server": {"name": "homeserver", "version": homeserver.__version__}})
