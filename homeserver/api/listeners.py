"""Listeners: which API each socket serves, and how long a connection may
take or idle (DESIGN rule 15: each listener serves only its own API).

Every path belongs to a *resource*: ``client`` (the Client-Server API, our
``/_homeserver/client`` extensions, static files), ``admin`` (the operator
API), ``federation`` (the Server-Server API) and ``keys`` (server keys and
the notary). ``/.well-known/matrix/*`` belongs to both client and
federation, ``/health`` to every listener. A listener answers a path only when it serves one of its
resources (``listen.client_resources``, ``listen.federation_resources``);
anything else is 404 ``M_UNRECOGNIZED``, as if the route did not exist.

Each accepted connection is wrapped (``GuardedProtocol``) around aiohttp's
own protocol to enforce, per listener:

- at most ``max_per_address`` open connections from one IP address (the
  next is closed at once);
- ``header_timeout``: a request's headers must be complete within this many
  seconds of the connection opening or of the request's first byte — a
  client sending headers slowly ("slowloris") or never is closed;
- ``idle_timeout``: a kept-alive connection with no request in progress is
  closed after this many seconds.

The listener middleware tells the guard when a request's handler starts and
ends, which is when the headers are known to be complete. Apps served
without a guard (the test client) serve every resource.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from homeserver.api.errors import MatrixError
from homeserver.config import LISTENER_RESOURCES

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PREFIXES: tuple[tuple[str, frozenset[str]], ...] = (
    ("/_matrix/client/", frozenset({"client"})),
    ("/_homeserver/client/", frozenset({"client"})),
    ("/_homeserver/static/", frozenset({"client"})),
    ("/_matrix/federation/", frozenset({"federation"})),
    ("/_matrix/key/", frozenset({"keys"})),
    ("/_homeserver/admin/", frozenset({"admin"})),
    ("/_synapse/admin/", frozenset({"admin"})),
    ("/.well-known/matrix/", frozenset({"client", "federation"})),
)


def resources_of(path: str) -> frozenset[str]:
    """The resources a request path belongs to (empty: none, so 404)."""
    if path == "/":
        return frozenset({"client"})  # the demo page among the static files
    if path == "/health" or path.startswith("/health/"):
        return LISTENER_RESOURCES  # probes reach every listener (as Synapse's)
    for prefix, resources in _PREFIXES:
        if path.startswith(prefix):
            return resources
    return frozenset()


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    idle_timeout: float
    max_per_address: int


class Listener:
    """One listening socket's policy and its open connections."""

    def __init__(
        self,
        name: str,
        resources: frozenset[str],
        limits: ConnectionLimits,
        registry: ConnectionRegistry,
    ) -> None:
        self.name = name
        self.resources = resources
        self.limits = limits
        self.registry = registry
        self._per_address: dict[str, int] = {}

    def protocol_factory(
        self, inner: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        return lambda: GuardedProtocol(self, inner())

    def admit(self, address: str) -> bool:
        n = self._per_address.get(address, 0)
        if n >= self.limits.max_per_address:
            return False
        self._per_address[address] = n + 1
        return True

    def release(self, address: str) -> None:
        n = self._per_address.get(address, 0) - 1
        if n > 0:
            self._per_address[address] = n
        else:
            self._per_address.pop(address, None)

    def open_connections(self, address: str) -> int:
        return self._per_address.get(address, 0)


class ConnectionRegistry:
    """Open guarded connections by transport, so the middleware can find the
    listener and guard of a request (one registry per application)."""

    def __init__(self) -> None:
        self._by_transport: dict[object, GuardedProtocol] = {}

    def add(self, transport: object, guard: GuardedProtocol) -> None:
        self._by_transport[transport] = guard

    def remove(self, transport: object) -> None:
        self._by_transport.pop(transport, None)

    def lookup(self, transport: object) -> GuardedProtocol | None:
        return self._by_transport.get(transport) if transport is not None else None


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler protocol, with the listener's limits."""

    def __init__(self, listener: Listener, inner: asyncio.Protocol) -> None:
        self.listener = listener
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._address = ""
        self._admitted = False
        self._in_flight = 0
        self._awaiting_first_byte = False
        self._deadline: asyncio.TimerHandle | None = None

    # ---------------------------------------------------- asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        if not self.listener.admit(self._address):
            log.warning(
                "%s listener: refusing a connection from %s (already %d open)",
                self.listener.name,
                self._address,
                self.listener.open_connections(self._address),
            )
            transport.abort()
            return
        self._admitted = True
        self.listener.registry.add(transport, self)
        self._arm(self.listener.limits.header_timeout)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._awaiting_first_byte and self._in_flight == 0:
            # The next request began: its headers have header_timeout.
            self._awaiting_first_byte = False
            self._arm(self.listener.limits.header_timeout, sooner_only=True)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._admitted:
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._admitted:
            return
        self._admitted = False
        self.listener.release(self._address)
        self.listener.registry.remove(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # ------------------------------------------------- request lifecycle
    def request_started(self) -> None:
        """Headers complete, handler running: no timeout while it works."""
        self._in_flight += 1
        self._disarm()

    def request_finished(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._awaiting_first_byte = True
            self._arm(self.listener.limits.idle_timeout)

    # ---------------------------------------------------------- timers
    def _arm(self, seconds: float, *, sooner_only: bool = False) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        if sooner_only and self._deadline is not None and self._deadline.when() <= when:
            return
        self._disarm()
        self._deadline = loop.call_at(when, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        transport = self._transport
        if transport is None or transport.is_closing() or self._in_flight:
            return
        if transport.get_write_buffer_size():
            # A response is still being delivered to a slow reader.
            self._arm(self.listener.limits.idle_timeout)
            return
        log.info(
            "%s listener: closing a connection from %s (no complete request in time)",
            self.listener.name,
            self._address,
        )
        transport.close()


CONNECTIONS = web.AppKey("connections", ConnectionRegistry)


@web.middleware
async def listener_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve only the listener's resources; tell its guard when a request
    is being handled (so no timeout closes a connection mid-request)."""
    guard = request.app[CONNECTIONS].lookup(request.transport)
    if guard is None:
        return await handler(request)
    if not resources_of(request.path) & guard.listener.resources:
        raise MatrixError(404, "M_UNRECOGNIZED", "Unrecognized request")
    guard.request_started()
    try:
        return await handler(request)
    finally:
        guard.request_finished()


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through its listener's guard."""

    __slots__ = ("_listener",)

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        listener: Listener,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._listener = listener

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._listener.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            # A TLS handshake is part of reading the request's head.
            ssl_handshake_timeout=(
                self._listener.limits.header_timeout if self._ssl_context else None
            ),
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
