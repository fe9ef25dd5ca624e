"""Rooms: createRoom, sending events and state, redaction, reading state,
events, members and /messages (Client-Server API "Rooms" and "Events")."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import MESSAGES, RATE_LIMITS, ROOM_CREATION, TIMELINE
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response
from homeserver.services.filters import EventFilter
from homeserver.services.timeline import check_direction

routes = web.RouteTableDef()
P = "/_matrix/client/{version:(?:v3|r0)}"


@routes.post(P + "/createRoom")
async def create_room(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    invites = body.get("invite")
    request.app[RATE_LIMITS].room_creation(
        requester, len(invites) if isinstance(invites, list) else 0
    )
    room_id = await request.app[ROOM_CREATION].create_room(requester.user_id, body)
    return json_response({"room_id": room_id})


@routes.put(P + "/rooms/{room_id}/send/{type}/{txn_id}")
async def send(request: web.Request) -> web.Response:
    requester = await require_user(request)
    request.app[RATE_LIMITS].message(requester)
    room_id = v.room_id(request.match_info["room_id"])
    content = await v.read_json(request)
    event_id = await request.app[MESSAGES].send(
        requester.user_id,
        requester.device_id,
        room_id,
        request.match_info["type"],
        content,
        request.match_info["txn_id"],
    )
    return json_response({"event_id": event_id})


@routes.put(P + "/rooms/{room_id}/state/{type}")
@routes.put(P + "/rooms/{room_id}/state/{type}/{state_key:.*}")
async def put_state(request: web.Request) -> web.Response:
    requester = await require_user(request)
    request.app[RATE_LIMITS].message(requester)
    room_id = v.room_id(request.match_info["room_id"])
    content = await v.read_json(request)
    event_id = await request.app[MESSAGES].send_state(
        requester.user_id,
        room_id,
        request.match_info["type"],
        request.match_info.get("state_key", ""),
        content,
    )
    return json_response({"event_id": event_id})


@routes.get(P + "/rooms/{room_id}/state")
async def get_state(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    return json_response(await request.app[TIMELINE].state(room_id, requester.user_id))


@routes.get(P + "/rooms/{room_id}/state/{type}")
@routes.get(P + "/rooms/{room_id}/state/{type}/{state_key:.*}")
async def get_state_event(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    fmt = request.query.get("format", "content")
    if fmt not in ("content", "event"):
        raise MatrixError(400, "M_INVALID_PARAM", "format must be 'content' or 'event'")
    out = await request.app[TIMELINE].state_event(
        room_id,
        requester.user_id,
        request.match_info["type"],
        request.match_info.get("state_key", ""),
        full=fmt == "event",
    )
    return json_response(out)


@routes.get(P + "/rooms/{room_id}/event/{event_id}")
async def get_event(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    return json_response(
        await request.app[TIMELINE].event(room_id, requester.user_id, event_id, requester.device_id)
    )


@routes.put(P + "/rooms/{room_id}/redact/{event_id}/{txn_id}")
async def redact(request: web.Request) -> web.Response:
    requester = await require_user(request)
    request.app[RATE_LIMITS].message(requester)
    room_id = v.room_id(request.match_info["room_id"])
    event_id = v.event_id(request.match_info["event_id"])
    body = await v.read_json(request, allow_empty=True)
    reason = v.get(body, "reason", str, None)
    content: dict[str, Any] = {"reason": reason} if reason is not None else {}
    eid = await request.app[MESSAGES].redact(
        requester.user_id,
        requester.device_id,
        room_id,
        event_id,
        content,
        request.match_info["txn_id"],
    )
    return json_response({"event_id": eid})


@routes.get(P + "/rooms/{room_id}/members")
async def members(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    q = request.query
    for key in ("membership", "not_membership"):
        if key in q and q[key] not in ("join", "invite", "knock", "leave", "ban"):
            raise MatrixError(400, "M_INVALID_PARAM", f"Invalid {key}")
    chunk = await request.app[TIMELINE].members(
        room_id,
        requester.user_id,
        at=q.get("at"),
        membership=q.get("membership"),
        not_membership=q.get("not_membership"),
    )
    return json_response({"chunk": chunk})


@routes.get(P + "/rooms/{room_id}/joined_members")
async def joined_members(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    joined = await request.app[TIMELINE].joined_members(room_id, requester.user_id)
    return json_response({"joined": joined})


@routes.get(P + "/joined_rooms")
async def joined_rooms(request: web.Request) -> web.Response:
    requester = await require_user(request)
    return json_response(
        {"joined_rooms": await request.app[TIMELINE].joined_rooms(requester.user_id)}
    )


@routes.get(P + "/rooms/{room_id}/messages")
async def messages(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    q = request.query
    direction = check_direction(q.get("dir", "b"))
    limit = v.query_int(request, "limit", 10, lo=1, hi=1000)
    event_filter = event_filter_param(request)
    out = await request.app[TIMELINE].messages(
        room_id,
        requester.user_id,
        requester.device_id,
        from_token=q.get("from"),
        to_token=q.get("to"),
        direction=direction,
        limit=limit,
        filter_fn=event_filter,
    )
    return json_response(out)


def event_filter_param(request: web.Request) -> EventFilter | None:
    """The ``filter`` query parameter (a RoomEventFilter as JSON), if given."""
    if "filter" not in request.query:
        return None
    raw = v.parse_body(request.query["filter"], "filter")
    if not isinstance(raw, dict):
        raise MatrixError(400, "M_BAD_JSON", "filter must be an object")
    return EventFilter.from_json(raw)
