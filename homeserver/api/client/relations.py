"""Around an event: ``/context``, ``/relations`` (its three forms) and
``/threads`` (Client-Server API "Event context", "Relationships")."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.auth import require_user
from homeserver.api.client.rooms import event_filter_param
from homeserver.api.errors import invalid_param, json_response
from homeserver.services.event_context import ContextService
from homeserver.services.relations import RelationsService
from homeserver.services.timeline import check_direction

CONTEXT = web.AppKey("event_context", ContextService)
RELATIONS = web.AppKey("relations", RelationsService)

routes = web.RouteTableDef()
V3 = "/_matrix/client/{version:(?:v3|r0)}"
V1 = "/_matrix/client/v1"

# Page sizes when the client names none, and the most served at once
# (Synapse's defaults).
CONTEXT_LIMIT = (10, 1000)
RELATIONS_LIMIT = (5, 1000)
THREADS_LIMIT = (5, 100)


@routes.get(V3 + "/rooms/{room_id}/context/{event_id}")
async def context(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    default, most = CONTEXT_LIMIT
    out = await request.app[CONTEXT].context(
        room_id,
        requester.user_id,
        requester.device_id,
        event_id,
        limit=v.query_int(request, "limit", default, lo=0, hi=most),
        event_filter=event_filter_param(request),
    )
    return json_response(out)


@routes.get(V1 + "/rooms/{room_id}/relations/{event_id}")
@routes.get(V1 + "/rooms/{room_id}/relations/{event_id}/{rel_type}")
@routes.get(V1 + "/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}")
async def relations(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    q = request.query
    default, most = RELATIONS_LIMIT
    out = await request.app[RELATIONS].relations(
        room_id,
        requester.user_id,
        requester.device_id,
        event_id,
        rel_type=request.match_info.get("rel_type"),
        event_type=request.match_info.get("event_type"),
        from_token=q.get("from"),
        to_token=q.get("to"),
        backwards=check_direction(q.get("dir", "b")) == "b",
        limit=v.query_int(request, "limit", default, lo=1, hi=most),
        recurse=v.query_bool(request, "recurse") if "recurse" in q else None,
    )
    return json_response(out)


@routes.get(V1 + "/rooms/{room_id}/threads")
async def threads(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    include = request.query.get("include", "all")
    if include not in ("all", "participated"):
        raise invalid_param("include must be 'all' or 'participated'")
    default, most = THREADS_LIMIT
    out = await request.app[RELATIONS].threads(
        room_id,
        requester.user_id,
        requester.device_id,
        participated=include == "participated",
        from_token=request.query.get("from"),
        limit=v.query_int(request, "limit", default, lo=1, hi=most),
    )
    return json_response(out)
