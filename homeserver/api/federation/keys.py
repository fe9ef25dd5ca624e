"""Server identity over federation: ``/_matrix/key/v2/server``, the notary
``/_matrix/key/v2/query`` (GET one server, POST several), and the version."""

from __future__ import annotations

from typing import Any

from aiohttp import web

import homeserver
from homeserver.api import validate as v
from homeserver.api.appkeys import SERVER_KEYS
from homeserver.api.errors import MatrixError, json_response
from homeserver.api.federation.common import FEDERATION

routes = web.RouteTableDef()


@routes.get("/_matrix/key/v2/server")
@routes.get("/_matrix/key/v2/server/{key_id}")
async def server_keys(request: web.Request) -> web.Response:
    return json_response(request.app[SERVER_KEYS].server_keys_response())


@routes.get("/_matrix/federation/v1/version")
async def version(request: web.Request) -> web.Response:
    return json_response({"server": {"name": "homeserver", "version": homeserver.__version__}})


def _min_ts(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        if not value.isdigit():
            raise MatrixError(400, "M_INVALID_PARAM", "minimum_valid_until_ts must be an integer")
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise MatrixError(400, "M_INVALID_PARAM", "minimum_valid_until_ts must be an integer")


@routes.get("/_matrix/key/v2/query/{server_name}")
async def query_one(request: web.Request) -> web.Response:
    server = v.server_name(request.match_info["server_name"])
    min_ts = _min_ts(request.query.get("minimum_valid_until_ts"))
    got = await request.app[FEDERATION].keyring.notary_response(server, min_ts)
    return json_response({"server_keys": [got] if got else []})


@routes.post("/_matrix/key/v2/query")
async def query_many(request: web.Request) -> web.Response:
    body = await v.read_json(request)
    wanted = v.get(body, "server_keys", dict)
    out = []
    for server, key_ids in wanted.items():
        server = v.server_name(server)
        min_ts = 0
        if isinstance(key_ids, dict):
            for crit in key_ids.values():
                if isinstance(crit, dict):
                    min_ts = max(min_ts, _min_ts(crit.get("minimum_valid_until_ts")))
        got = await request.app[FEDERATION].keyring.notary_response(server, min_ts)
        if got:
            out.append(got)
    return json_response({"server_keys": out})
