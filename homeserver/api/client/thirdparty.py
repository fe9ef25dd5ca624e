"""VoIP TURN credentials and third-party networks (Client-Server API "Voice
over IP", "Application service protocols").

No application services bridge to other networks here, so there are no
protocols (``{}``, as Synapse answers without any) and lookups in one are
404s. TURN credentials are minted from ``voip.turn_shared_secret`` the way
coturn's ``use-auth-secret`` checks them: user name ``<expiry s>:<user id>``,
password the base64 HMAC-SHA1 of it; without a TURN server, ``{}``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from aiohttp import web

from homeserver.api.appkeys import CONFIG
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response

routes = web.RouteTableDef()

P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.get(P + "/voip/turnServer")
async def turn_server(request: web.Request) -> web.Response:
    me = await require_user(request)
    voip = request.app[CONFIG].voip
    if not voip.turn_uris or voip.turn_shared_secret is None:
        return json_response({})
    expiry = int(time.time()) + voip.turn_user_lifetime_ms // 1000
    username = f"{expiry}:{me.user_id}"
    mac = hmac.new(voip.turn_shared_secret.encode(), username.encode(), hashlib.sha1)
    return json_response(
        {
            "username": username,
            "password": base64.b64encode(mac.digest()).decode(),
            "uris": list(voip.turn_uris),
            "ttl": voip.turn_user_lifetime_ms // 1000,
        }
    )


@routes.get(P + "/thirdparty/protocols")
async def protocols(request: web.Request) -> web.Response:
    await require_user(request)
    return json_response({})


@routes.get(P + "/thirdparty/protocol/{protocol}")
@routes.get(P + "/thirdparty/location/{protocol}")
@routes.get(P + "/thirdparty/user/{protocol}")
async def one_protocol(request: web.Request) -> web.Response:
    await require_user(request)
    raise MatrixError(404, "M_NOT_FOUND", f"No protocol {request.match_info['protocol']!r} here")


@routes.get(P + "/thirdparty/location")
@routes.get(P + "/thirdparty/user")
async def reverse_lookup(request: web.Request) -> web.Response:
    await require_user(request)
    return json_response([])
