"""Discovery endpoints: spec versions and .well-known."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.appkeys import CONFIG
from homeserver.api.errors import MatrixError, json_response

routes = web.RouteTableDef()

SUPPORTED_VERSIONS = [f"v1.{n}" for n in range(1, 13)] + ["r0.6.1"]


@routes.get("/_matrix/client/versions")
async def versions(request: web.Request) -> web.Response:
    return json_response({"versions": SUPPORTED_VERSIONS, "unstable_features": {}})


@routes.get("/.well-known/matrix/client")
async def well_known_client(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    base = f"{request.scheme}://{request.host}"
    return json_response(
        {"m.homeserver": {"base_url": base}, "io.homeserver": {"server_name": cfg.server_name}}
    )


@routes.get("/.well-known/matrix/support")
async def well_known_support(request: web.Request) -> web.Response:
    """The operators to contact: the configured admins (404 without any,
    as the spec allows)."""
    admins = request.app[CONFIG].admins
    if not admins:
        raise MatrixError(404, "M_NOT_FOUND", "No support contacts are configured")
    return json_response(
        {"contacts": [{"matrix_id": str(a), "role": "m.role.admin"} for a in admins]}
    )


@routes.get("/.well-known/matrix/server")
async def well_known_server(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    host = cfg.server_name.host
    return json_response({"m.server": f"{host}:{cfg.listen.federation_port}"})


@routes.get("/_matrix/client/{version:(?:v3|r0)}/capabilities")
async def capabilities(request: web.Request) -> web.Response:
    from homeserver.api.auth import require_user
    from homeserver.core.room_versions import DEFAULT_ROOM_VERSION, KNOWN_ROOM_VERSIONS

    await require_user(request)
    return json_response(
        {
            "capabilities": {
                "m.room_versions": {
                    "default": DEFAULT_ROOM_VERSION.identifier,
                    "available": {k: "stable" for k in KNOWN_ROOM_VERSIONS},
                },
                "m.change_password": {"enabled": True},
                "m.set_displayname": {"enabled": True},
                "m.set_avatar_url": {"enabled": True},
                "m.3pid_changes": {"enabled": False},
            }
        }
    )
