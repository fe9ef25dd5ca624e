"""What every federation handler shares: the X-Matrix check of the caller.

``authenticate`` reads the body (when there is one), verifies the request's
``Authorization: X-Matrix`` signature against the origin's keys and our own
name as destination, and answers 401 ``M_UNAUTHORIZED`` when it does not
hold. A request from a server also tells the sender that server is up.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from homeserver.api.errors import MatrixError
from homeserver.services.federation.keyring import Unauthorized
from homeserver.services.federation.service import Federation

FEDERATION = web.AppKey("federation", Federation)


async def authenticate(request: web.Request) -> tuple[str, Any]:
    """(origin, parsed JSON body or None)."""
    raw = await request.read()
    body: Any = None
    if raw.strip():
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise MatrixError(400, "M_NOT_JSON", "Content not JSON.") from e
    fed = request.app[FEDERATION]
    try:
        origin = await fed.keyring.authenticate_request(
            request.method, request.raw_path, request.headers.getall("Authorization", []), body
        )
    except Unauthorized as e:
        raise MatrixError(401, "M_UNAUTHORIZED", str(e)) from e
    fed.sender.peer_is_up(origin)
    return origin, body


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MatrixError(400, "M_NOT_JSON", "Expected a JSON object")
    return body
