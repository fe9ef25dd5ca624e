"""Operator API for registration tokens (server admins only), in the shape
of Synapse's ``/_synapse/admin/v1/registration_tokens`` (served under that
path too, for the tools that speak it):

- ``GET    .../registration_tokens[?valid=true|false]`` → ``{"registration_tokens": [...]}``
- ``GET    .../registration_tokens/{token}``
- ``POST   .../registration_tokens/new`` ``{token?, uses_allowed?, expiry_time?, length?}``
- ``PUT    .../registration_tokens/{token}`` ``{uses_allowed?, expiry_time?}``
- ``DELETE .../registration_tokens/{token}`` (revoke)

Every call is written to the operator audit log.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import REGISTRATION_TOKENS, ROOM_ADMIN
from homeserver.api.auth import require_admin
from homeserver.api.errors import MatrixError, json_response
from homeserver.services.registration_tokens import RegistrationTokens

routes = web.RouteTableDef()
PREFIXES = ("/_homeserver/admin/v1", "/_synapse/admin/v1")


async def _operator(request: web.Request, action: str, **details: Any) -> RegistrationTokens:
    """The admin check and the audit record every call starts with."""
    requester = await require_admin(request)
    token = request.match_info.get("token")
    await request.app[ROOM_ADMIN].audit(requester.user_id, action, token, **details)
    return request.app[REGISTRATION_TOKENS]


async def list_tokens(request: web.Request) -> web.Response:
    valid_arg = request.query.get("valid")
    if valid_arg not in (None, "true", "false"):
        raise MatrixError(400, "M_INVALID_PARAM", "valid must be 'true' or 'false'")
    tokens = await _operator(request, "list_registration_tokens")
    found = await tokens.list(None if valid_arg is None else valid_arg == "true")
    return json_response({"registration_tokens": [t.to_json() for t in found]})


async def create_token(request: web.Request) -> web.Response:
    body = await v.read_json(request, allow_empty=True)
    tokens = await _operator(request, "create_registration_token")
    return json_response((await tokens.create(body)).to_json())


async def get_token(request: web.Request) -> web.Response:
    tokens = await _operator(request, "show_registration_token")
    return json_response((await tokens.get(request.match_info["token"])).to_json())


async def update_token(request: web.Request) -> web.Response:
    body = await v.read_json(request)
    tokens = await _operator(request, "update_registration_token", **body)
    return json_response((await tokens.update(request.match_info["token"], body)).to_json())


async def delete_token(request: web.Request) -> web.Response:
    tokens = await _operator(request, "revoke_registration_token")
    await tokens.delete(request.match_info["token"])
    return json_response({})


for _p in PREFIXES:
    routes.get(_p + "/registration_tokens")(list_tokens)
    routes.post(_p + "/registration_tokens/new")(create_token)
    routes.get(_p + "/registration_tokens/{token}")(get_token)
    routes.put(_p + "/registration_tokens/{token}")(update_token)
    routes.delete(_p + "/registration_tokens/{token}")(delete_token)
