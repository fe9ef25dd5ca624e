"""Access-token authentication of client requests."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.appkeys import ACCOUNTS
from homeserver.api.errors import MatrixError
from homeserver.services.accounts import Requester

_REQUESTER = web.RequestKey[Requester]("requester")


def access_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return request.query.get("access_token") or None


async def require_user(request: web.Request) -> Requester:
    """The authenticated requester, or 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN."""
    cached = request.get(_REQUESTER)
    if cached is not None:
        return cached
    token = access_token(request)
    if token is None:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    requester = await request.app[ACCOUNTS].authenticate(token)
    if requester is None:
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "Unrecognised access token", soft_logout=False)
    request[_REQUESTER] = requester
    return requester


async def require_admin(request: web.Request) -> Requester:
    requester = await require_user(request)
    if not requester.is_admin:
        raise MatrixError(403, "M_FORBIDDEN", "You are not a server admin")
    return requester
