"""Push rules (``/pushrules``), ``/notifications`` and pushers
(``/pushers``, ``/pushers/set``): Client-Server API "Push Notifications"."""

from __future__ import annotations

from aiohttp import web

from homeserver.api import validate as v
from homeserver.api.appkeys import PUSH
from homeserver.api.auth import require_user
from homeserver.api.errors import MatrixError, json_response

routes = web.RouteTableDef()
P = "/_matrix/client/{version:(?:v3|r0)}"
RULE = P + "/pushrules/{scope}/{kind}/{rule_id}"


def _scope(request: web.Request) -> None:
    if request.match_info["scope"] != "global":
        raise MatrixError(400, "M_INVALID_PARAM", "The only push rule scope is 'global'")


@routes.get(P + "/pushrules/")
@routes.get(P + "/pushrules")
async def all_rules(request: web.Request) -> web.Response:
    requester = await require_user(request)
    return json_response(await request.app[PUSH].rendered(requester.user_id))


@routes.get(P + "/pushrules/global/")
@routes.get(P + "/pushrules/global")
async def global_rules(request: web.Request) -> web.Response:
    requester = await require_user(request)
    return json_response((await request.app[PUSH].rendered(requester.user_id))["global"])


@routes.get(RULE)
async def get_rule(request: web.Request) -> web.Response:
    requester = await require_user(request)
    _scope(request)
    m = request.match_info
    rule = await request.app[PUSH].rule(requester.user_id, m["kind"], m["rule_id"])
    return json_response(rule.to_json())


@routes.put(RULE)
async def put_rule(request: web.Request) -> web.Response:
    requester = await require_user(request)
    _scope(request)
    body = await v.read_json(request)
    m = request.match_info
    await request.app[PUSH].put_rule(
        requester.user_id,
        m["kind"],
        m["rule_id"],
        body,
        request.query.get("before"),
        request.query.get("after"),
    )
    return json_response({})


@routes.delete(RULE)
async def delete_rule(request: web.Request) -> web.Response:
    requester = await require_user(request)
    _scope(request)
    m = request.match_info
    await request.app[PUSH].delete_rule(requester.user_id, m["kind"], m["rule_id"])
    return json_response({})


@routes.get(RULE + "/{attr:(?:enabled|actions)}")
async def get_attribute(request: web.Request) -> web.Response:
    requester = await require_user(request)
    _scope(request)
    m = request.match_info
    rule = (await request.app[PUSH].rule(requester.user_id, m["kind"], m["rule_id"])).to_json()
    return json_response({m["attr"]: rule[m["attr"]]})


@routes.put(RULE + "/{attr:(?:enabled|actions)}")
async def put_attribute(request: web.Request) -> web.Response:
    requester = await require_user(request)
    _scope(request)
    body = await v.read_json(request)
    m = request.match_info
    push = request.app[PUSH]
    if m["attr"] == "enabled":
        enabled = v.get(body, "enabled", bool)
        await push.set_enabled(requester.user_id, m["kind"], m["rule_id"], enabled)
    else:
        await push.set_actions(
            requester.user_id, m["kind"], m["rule_id"], v.get(body, "actions", list)
        )
    return json_response({})


@routes.get(P + "/notifications")
async def notifications(request: web.Request) -> web.Response:
    requester = await require_user(request)
    raw = request.query.get("from")
    before = None
    if raw:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise MatrixError(400, "M_INVALID_PARAM", "Invalid 'from' token")
        before = int(raw)
    limit = v.query_int(request, "limit", 20, lo=1, hi=100)
    only = request.query.get("only")
    if only not in (None, "", "highlight"):
        raise MatrixError(400, "M_INVALID_PARAM", "'only' may only be 'highlight'")
    out = await request.app[PUSH].notifications(
        requester.user_id, before, limit, only == "highlight"
    )
    return json_response(out)


@routes.get(P + "/pushers")
async def pushers(request: web.Request) -> web.Response:
    requester = await require_user(request)
    found = await request.app[PUSH].pushers(requester.user_id)
    return json_response({"pushers": [p.to_json() for p in found]})


@routes.post(P + "/pushers/set")
async def set_pusher(request: web.Request) -> web.Response:
    requester = await require_user(request)
    body = await v.read_json(request)
    await request.app[PUSH].set_pusher(requester.user_id, body)
    return json_response({})
