"""CORS on every response: browsers call the client API from other origins."""

from __future__ import annotations

from aiohttp import web

from homeserver.api.errors import Handler

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
    "Access-Control-Expose-Headers": "Synapse-Trace-Id, Server",
}


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS":
        # A preflight for any path is answered here, before routing.
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    if not response.prepared:
        response.headers.update(CORS_HEADERS)
    return response


def add_cors_on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """For responses prepared early (streamed), set the headers on prepare."""
    for k, v in CORS_HEADERS.items():
        response.headers.setdefault(k, v)
