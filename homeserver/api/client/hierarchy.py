"""GET /_matrix/client/v1/rooms/{roomId}/hierarchy (Client-Server API "Spaces")."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import HIERARCHY
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response

routes = web.RouteTableDef()


def _bool(request: web.Request, key: str) -> bool:
    raw = request.query.get(key, "false")
    if raw not in ("true", "false"):
        raise MatrixError(400, "M_INVALID_PARAM", f"{key} must be true or false")
    return raw == "true"


def _optional_int(request: web.Request, key: str) -> int | None:
    """A query integer, None when absent; out of range is the service's 400."""
    if request.query.get(key) is None:
        return None
    return v.query_int(request, key, 0, lo=-1, hi=1_000_000)


@routes.get("/_matrix/client/v1/rooms/{room_id}/hierarchy")
async def hierarchy(request: web.Request) -> web.Response:
    me = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    limit = _optional_int(request, "limit")
    max_depth = _optional_int(request, "max_depth")
    out = await request.app[HIERARCHY].hierarchy(
        me.user_id,
        room_id,
        suggested_only=_bool(request, "suggested_only"),
        limit=limit,
        max_depth=max_depth,
        from_token=request.query.get("from"),
    )
    return json_response(out)
