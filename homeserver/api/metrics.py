"""The metrics listener (``listen.metrics_port``): ``GET /metrics`` in the
Prometheus text format and ``GET /health``; and the middleware that observes
every request of the client and federation listeners."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from homeserver.api.appkeys import METRICS
from homeserver.api.errors import json_response
from homeserver.services.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FEDERATION_PREFIXES = ("/_matrix/federation/", "/_matrix/key/")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        listener = "federation" if request.path.startswith(_FEDERATION_PREFIXES) else "client"
        request.app[METRICS].observe(
            listener, request.method, route, status, time.perf_counter() - started
        )


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.refresh()
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def metrics_app(metrics: Metrics) -> web.Application:
    """The application of the metrics listener (nothing else is served there)."""
    app = web.Application()
    app[METRICS] = metrics
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    return app
