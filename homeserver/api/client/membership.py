"""Membership endpoints: join, leave, forget, invite, kick, ban, unban, knock."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import DIRECTORY, LIFECYCLE, MEMBERSHIP, RATE_LIMITS
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response
from homeserver.core.ids import RoomAlias
from homeserver.services.accounts import Requester

routes = web.RouteTableDef()
P = "/_matrix/client/{version:(?:v3|r0)}"


def _reason(body: dict[str, object]) -> str | None:
    return v.get(body, "reason", str, None)  # type: ignore[no-any-return]


def _join_extra(body: dict[str, object]) -> dict[str, object]:
    """The body's other keys, kept in the member event's content as Synapse
    does (the spec's examples carry ``reason``; clients add their own keys).
    ``membership`` is the endpoint's to say, and ``third_party_signed`` is a
    signature for the join, not content."""
    return {k: x for k, x in body.items() if k not in ("membership", "third_party_signed")}


def _via(request: web.Request) -> list[str]:
    servers = request.query.getall("via", []) + request.query.getall("server_name", [])
    return [v.server_name(s) for s in servers]


async def _join(
    request: web.Request,
    requester: Requester,
    room_id: str,
    via: list[str],
    reason: str | None,
    extra: dict[str, object],
) -> str:
    """Join, counted against the local or the remote join limit (which one
    only the membership service knows) and the room's join limit."""
    limits = request.app[RATE_LIMITS]
    return await request.app[MEMBERSHIP].join(
        requester.user_id,
        room_id,
        via,
        reason,
        extra,
        ratelimit=lambda remote: limits.join(requester, room_id, remote),
    )


async def _resolve(request: web.Request, id_or_alias: str) -> tuple[str, list[str]]:
    if id_or_alias.startswith("#"):
        alias = v.room_alias(id_or_alias)
        return await request.app[DIRECTORY].resolve(RoomAlias(alias))
    if id_or_alias.startswith("!"):
        return v.room_id(id_or_alias), []
    raise MatrixError(400, "M_INVALID_PARAM", f"{id_or_alias} is neither a room id nor an alias")


@routes.post(P + "/join/{room}")
async def join_by_id_or_alias(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    room_id, servers = await _resolve(request, request.match_info["room"])
    room_id = await _join(
        request, requester, room_id, _via(request) or servers, _reason(body), _join_extra(body)
    )
    return json_response({"room_id": room_id})


@routes.post(P + "/rooms/{room_id}/join")
async def join(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    room_id = v.room_id(request.match_info["room_id"])
    joined = await _join(
        request, requester, room_id, _via(request), _reason(body), _join_extra(body)
    )
    return json_response({"room_id": joined})


@routes.post(P + "/knock/{room}")
async def knock(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    room_id, servers = await _resolve(request, request.match_info["room"])
    room_id = await request.app[MEMBERSHIP].knock(
        requester.user_id, room_id, _via(request) or servers, _reason(body)
    )
    return json_response({"room_id": room_id})


@routes.post(P + "/rooms/{room_id}/leave")
async def leave(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request, allow_empty=True)
    room_id = v.room_id(request.match_info["room_id"])
    await request.app[MEMBERSHIP].leave(requester.user_id, room_id, _reason(body))
    return json_response({})


@routes.post(P + "/rooms/{room_id}/forget")
async def forget(request: web.Request) -> web.Response:
    requester = await require_user(request)
    room_id = v.room_id(request.match_info["room_id"])
    await request.app[MEMBERSHIP].forget(requester.user_id, room_id)
    return json_response({})


@routes.post(P + "/rooms/{room_id}/invite")
async def invite(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request)
    room_id = v.room_id(request.match_info["room_id"])
    if "user_id" not in body and "id_server" in body:
        raise MatrixError(400, "M_UNKNOWN", "Third-party invites are not supported")
    target = v.user_id(v.get(body, "user_id", str))
    expires = v.get(body, "expires_in_ms", int, None)
    request.app[RATE_LIMITS].invite(requester, room_id, target)
    await request.app[LIFECYCLE].invite(requester.user_id, room_id, target, _reason(body), expires)
    return json_response({})


async def _moderate(request: web.Request, action: str) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request)
    room_id = v.room_id(request.match_info["room_id"])
    target = v.user_id(v.get(body, "user_id", str))
    service = request.app[MEMBERSHIP]
    fn = {"kick": service.kick, "ban": service.ban, "unban": service.unban}[action]
    await fn(requester.user_id, room_id, target, _reason(body))
    return json_response({})


@routes.post(P + "/rooms/{room_id}/kick")
async def kick(request: web.Request) -> web.Response:
    return await _moderate(request, "kick")


@routes.post(P + "/rooms/{room_id}/ban")
async def ban(request: web.Request) -> web.Response:
    return await _moderate(request, "ban")


@routes.post(P + "/rooms/{room_id}/unban")
async def unban(request: web.Request) -> web.Response:
    return await _moderate(request, "unban")
