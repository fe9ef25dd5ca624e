"""What every federation handler shares: the X-Matrix check of the caller.

``authenticate`` first checks what it can without the body (an X-Matrix
header naming a valid origin, us as destination, and a key of the origin
we hold or can fetch), then reads and parses the body (depth-capped), then
verifies the signature, which covers the body — answering 401
``M_UNAUTHORIZED`` when it does not hold. An anonymous or forged-origin
request is thus refused before its body is read. A request from a server
also tells the sender that server is up.

An authenticated request then takes one of its origin's slots
(``services/ratelimit.py: FederationLimiter``), which
``federation_slot_middleware`` gives back when the response is done.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.appkeys import RATE_LIMITS
from homeserver.api.errors import Handler, MatrixError
from homeserver.api.validate import parse_body, read_body
from homeserver.services.federation.keyring import Unauthorized
from homeserver.services.federation.service import Federation

FEDERATION = web.AppKey("federation", Federation)
_SLOT = web.RequestKey("federation_slot", str)


async def authenticate(request: web.Request) -> tuple[str, Any]:
    """(origin, parsed JSON body or None)."""
    fed = request.app[FEDERATION]
    headers = request.headers.getall("Authorization", [])
    try:
        await fed.keyring.precheck_request(headers)
    except Unauthorized as e:
        raise MatrixError(401, "M_UNAUTHORIZED", str(e)) from e
    raw = await read_body(request)
    # Each PDU is judged on its own later: no U+0000 check of the whole body.
    body = parse_body(raw, check_text=False) if raw.strip() else None
    try:
        origin = await fed.keyring.authenticate_request(
            request.method, request.raw_path, headers, body
        )
    except Unauthorized as e:
        raise MatrixError(401, "M_UNAUTHORIZED", str(e)) from e
    fed.sender.peer_is_up(origin)
    limits = request.app[RATE_LIMITS]
    if limits.enabled and _SLOT not in request:
        await limits.federation.enter(origin)
        request[_SLOT] = origin
    return origin, body


@web.middleware
async def federation_slot_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give back the origin's slot taken in ``authenticate``, however the
    handler ends."""
    try:
        return await handler(request)
    finally:
        origin = request.get(_SLOT)
        if origin is not None:
            request.app[RATE_LIMITS].federation.leave(origin)


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MatrixError(400, "M_NOT_JSON", "Expected a JSON object")
    return body
