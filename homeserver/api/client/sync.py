"""/sync, filters, typing, receipts and read markers."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import EPHEMERAL, FILTERS, PRESENCE, SYNC
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response
from homeserver.services.sync import SyncFilter
from homeserver.services.timeline import parse_token

routes = web.RouteTableDef()
P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.get(P + "/sync")
async def sync(request: web.Request) -> web.Response:
    requester = await require_user(request)
    q = request.query
    since = parse_token(q["since"]) if q.get("since") else None
    timeout = v.query_int(request, "timeout", 0, lo=0, hi=600_000)
    full_state = v.query_bool(request, "full_state")
    set_presence = q.get("set_presence", "online")
    if set_presence not in ("online", "offline", "unavailable"):
        raise MatrixError(400, "M_INVALID_PARAM", "Invalid set_presence")
    await request.app[PRESENCE].from_sync(requester.user_id, set_presence)
    flt = SyncFilter()
    raw = q.get("filter")
    if raw:
        if raw.lstrip().startswith("{"):
            obj = v.parse_body(raw, "filter")
        else:
            try:
                fid = int(raw)
            except ValueError as e:
                raise MatrixError(400, "M_INVALID_PARAM", "Unknown filter id") from e
            obj = await request.app[FILTERS].get_filter(requester.user_id, fid)
            if obj is None:
                raise MatrixError(404, "M_NOT_FOUND", "Filter not found")
        if not isinstance(obj, dict):
            raise MatrixError(400, "M_BAD_JSON", "filter must be an object")
        flt = SyncFilter.from_json(obj)
    out = await request.app[SYNC].sync(
        requester.user_id, requester.device_id, since, timeout, full_state, flt
    )
    return json_response(out)


@routes.post(P + "/user/{user_id}/filter")
async def create_filter(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    if user_id != requester.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "Cannot create filters for other users")
    body = await v.read_json(request)
    SyncFilter.from_json(body)  # validate
    fid = await request.app[FILTERS].put_filter(user_id, body)
    return json_response({"filter_id": str(fid)})


@routes.get(P + "/user/{user_id}/filter/{filter_id}")
async def get_filter(request: web.Request) -> web.Response:
    requester = await require_user(request)
    user_id = v.user_id(request.match_info["user_id"])
    if user_id != requester.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "Cannot read filters of other users")
    try:
        fid = int(request.match_info["filter_id"])
    except ValueError as e:
        raise MatrixError(404, "M_NOT_FOUND", "Filter not found") from e
    obj = await request.app[FILTERS].get_filter(user_id, fid)
    if obj is None:
        raise MatrixError(404, "M_NOT_FOUND", "Filter not found")
    return json_response(obj)


@routes.put(P + "/rooms/{room_id}/typing/{user_id}")
async def typing(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    user_id = v.user_id(request.match_info["user_id"])
    body = await v.read_json(request)
    is_typing = v.get(body, "typing", bool)
    timeout = v.get(body, "timeout", int, None)
    await request.app[EPHEMERAL].set_typing(requester.user_id, room_id, user_id, is_typing, timeout)
    return json_response({})


@routes.post(P + "/rooms/{room_id}/receipt/{receipt_type}/{event_id}")
async def receipt(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    body = await v.read_json(request, allow_empty=True)
    thread_id = v.get(body, "thread_id", str, None)
    await request.app[EPHEMERAL].receipt(
        requester.user_id, room_id, request.match_info["receipt_type"], event_id, thread_id
    )
    return json_response({})


@routes.post(P + "/rooms/{room_id}/read_markers")
async def read_markers(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    body = await v.read_json(request)
    service = request.app[EPHEMERAL]
    fully_read = v.get(body, "m.fully_read", str, None)
    if fully_read is not None:
        await service.read_marker(requester.user_id, room_id, v.event_id(fully_read))
    for rtype in ("m.read", "m.read.private"):
        eid = v.get(body, rtype, str, None)
        if eid is not None:
            await service.receipt(requester.user_id, room_id, rtype, v.event_id(eid))
    return json_response({})
