"""What every federation handler shares: the X-Matrix check of the caller.

``authenticate`` first checks what it can without the body (an X-Matrix
header naming a valid origin, us as destination, and a key of the origin
we hold or can fetch), then reads and parses the body (depth-capped), then
verifies the signature, which covers the body — answering 401
``M_UNAUTHORIZED`` when it does not hold. An anonymous or forged-origin
request is thus refused before its body is read. A request from a server
also tells the sender that server is up.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from homeserver.api.errors import MatrixError
from homeserver.api.validate import parse_body, read_body
from homeserver.services.federation.keyring import Unauthorized
from homeserver.services.federation.service import Federation

FEDERATION = web.AppKey("federation", Federation)


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
    return origin, body


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MatrixError(400, "M_NOT_JSON", "Expected a JSON object")
    return body
