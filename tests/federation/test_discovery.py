"""Server discovery (Server-Server API, "Resolving server names"): IP
literals, explicit ports, /.well-known/matrix/server with its cache rules
(served by a small TLS server on loopback), SRV _matrix-fed._tcp then the
deprecated _matrix._tcp (an injected lookup: there is no DNS to ask here),
port 8448 by default; and certificate verification on by default."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import signedjson.key
from aiohttp import web

from homeserver.config import load_config
from homeserver.services.federation.client import (
    FederationClient,
    FederationError,
    ServerResolver,
    SrvRecord,
    Target,
)
from tests.federation.conftest import free_port
from tests.federation.fake import serve_tls
from tests.federation.harness import LOOPBACK_OPEN

H = 3600.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class WellKnownSite:
    """HTTPS on loopback with a self-signed certificate: answers
    /.well-known/matrix/server as told, and a federation version."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.body: Any = {}
        self.headers: dict[str, str] = {}
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def _well_known(self, request: web.Request) -> web.Response:
        self.hits += 1
        text = self.body if isinstance(self.body, str) else json.dumps(self.body)
        return web.Response(
            status=self.status, text=text, headers=self.headers, content_type="application/json"
        )

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"server": {"name": "site"}})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/.well-known/matrix/server", self._well_known)
        app.router.add_get("/_matrix/federation/v1/version", self._version)
        self._runner = await serve_tls(app, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def site() -> AsyncIterator[WellKnownSite]:
    s = WellKnownSite()
    await s.start()
    yield s
    await s.stop()


def srv_table(table: dict[str, list[SrvRecord]]) -> Any:
    asked: list[str] = []

    async def lookup(name: str) -> list[SrvRecord]:
        asked.append(name)
        return table.get(name, [])

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


async def no_well_known(hostname: str) -> tuple[str | None, float]:
    raise AssertionError(f"well-known must not be asked for {hostname}")


async def failing_well_known(hostname: str) -> tuple[str | None, float]:
    raise OSError("no such host")


async def no_srv(name: str) -> list[SrvRecord]:
    raise AssertionError(f"SRV must not be asked for {name}")


KEY = signedjson.key.generate_signing_key("t")


def client(site: WellKnownSite, clock: Clock, srv: Any = no_srv, verify: bool = False) -> Any:
    return FederationClient(
        "us.test",
        KEY,
        verify_certificates=verify,
        well_known_port=site.port,
        srv=srv,
        clock=clock,
        ip_filter=LOOPBACK_OPEN,
    )


# --------------------------------------------------------------- 1. and 2.
async def test_ip_literals_and_explicit_ports_skip_well_known_and_srv() -> None:
    r = ServerResolver(no_well_known, no_srv)
    assert await r.resolve("127.0.0.1") == Target("127.0.0.1", 8448, "127.0.0.1", "127.0.0.1")
    assert await r.resolve("127.0.0.1:8008") == Target(
        "127.0.0.1", 8008, "127.0.0.1:8008", "127.0.0.1"
    )
    assert await r.resolve("[::1]:9000") == Target("::1", 9000, "[::1]:9000", "::1")
    assert await r.resolve("[::1]") == Target("::1", 8448, "[::1]", "::1")
    assert await r.resolve("example.org:1234") == Target(
        "example.org", 1234, "example.org:1234", "example.org"
    )


# ------------------------------------------------------------------- 3.
async def test_well_known_delegation_is_cached_for_its_max_age(site: WellKnownSite) -> None:
    clock = Clock()
    c = client(site, clock)
    site.body = {"m.server": "delegated.test:4321"}
    site.headers = {"Cache-Control": "public, max-age=600"}
    try:
        want = Target("delegated.test", 4321, "delegated.test:4321", "delegated.test")
        assert await c.resolver.resolve("localhost") == want
        assert c.resolver.cached("localhost") == ("delegated.test:4321", clock.t + 600)
        clock.t += 599
        assert await c.resolver.resolve("localhost") == want
        assert site.hits == 1
        clock.t += 2  # expired: asked again
        site.body = {"m.server": "127.0.0.2"}
        assert await c.resolver.resolve("localhost") == Target(
            "127.0.0.2", 8448, "127.0.0.2", "127.0.0.2"
        )
        assert site.hits == 2
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("headers", "ttl"),
    [
        ({}, 24 * H),  # no cache headers: 24 hours
        ({"Cache-Control": "max-age=1209600"}, 48 * H),  # two weeks, capped at 48 hours
        ({"Expires": "IN_2H"}, 2 * H),
        ({"Expires": "IN_30D"}, 48 * H),
        ({"Cache-Control": "no-store"}, 0.0),
    ],
)
async def test_well_known_cache_lifetime(
    site: WellKnownSite, headers: dict[str, str], ttl: float
) -> None:
    clock = Clock()
    c = client(site, clock)
    if headers.get("Expires") == "IN_2H":
        headers = {"Expires": email.utils.formatdate(time.time() + 2 * H, usegmt=True)}
    elif headers.get("Expires") == "IN_30D":
        headers = {"Expires": email.utils.formatdate(time.time() + 30 * 24 * H, usegmt=True)}
    site.body = {"m.server": "delegated.test:4321"}
    site.headers = headers
    try:
        await c.resolver.resolve("localhost")
        got = c.resolver.cached("localhost")
        assert got is not None and got[0] == "delegated.test:4321"
        assert got[1] - clock.t == pytest.approx(ttl, abs=5)
    finally:
        await c.close()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, {"errcode": "M_NOT_FOUND"}),
        (200, "not json"),
        (200, {"m.server": 7}),
        (200, []),
        (200, {"m.server": "bad name!"}),
        (503, {}),
    ],
)
async def test_well_known_errors_back_off_exponentially_up_to_an_hour(
    site: WellKnownSite, status: int, body: Any
) -> None:
    """Errors are cached (the spec: "for up to an hour ... exponentially back
    off for repeated failures"): 2 minutes, doubling per repeated failure,
    capped at an hour; meanwhile SRV decides. A success resets the backoff."""
    clock = Clock()
    srv = srv_table({"_matrix-fed._tcp.localhost": [(10, 0, 7777, "box.test")]})
    c = client(site, clock, srv)
    site.status, site.body = status, body
    via_srv = Target("box.test", 7777, "localhost", "localhost")
    try:
        ttls = []
        for _ in range(7):
            assert await c.resolver.resolve("localhost") == via_srv
            cached = c.resolver.cached("localhost")
            assert cached is not None and cached[0] is None
            ttls.append(cached[1] - clock.t)
            await c.resolver.resolve("localhost")  # within the period: not asked again
            clock.t = cached[1] + 1
        assert ttls == [120, 240, 480, 960, 1920, H, H]
        assert site.hits == 7
        site.status, site.body = 200, {"m.server": "127.0.0.2"}
        assert (await c.resolver.resolve("localhost")).connect_host == "127.0.0.2"
        site.status, site.body = status, body
        clock.t += 25 * H  # the delegation expired; the next failure starts over
        await c.resolver.resolve("localhost")
        cached = c.resolver.cached("localhost")
        assert cached is not None and cached[1] - clock.t == 120
    finally:
        await c.close()


async def test_well_known_site_down_keeps_the_last_delegation(site: WellKnownSite) -> None:
    """A site that fails to answer (5xx, unreachable) does not cut off the
    server it delegated to within the last 48 hours; one that answers "no
    delegation" (404) does."""
    clock = Clock()
    c = client(site, clock, srv_table({}))
    site.body = {"m.server": "127.0.0.2:4444"}
    want = Target("127.0.0.2", 4444, "127.0.0.2:4444", "127.0.0.2")
    try:
        assert await c.resolver.resolve("localhost") == want
        clock.t += 25 * H
        site.status = 502
        assert await c.resolver.resolve("localhost") == want
        cached = c.resolver.cached("localhost")
        assert cached == ("127.0.0.2:4444", clock.t + 120)
        await site.stop()  # unreachable
        clock.t += 121
        assert await c.resolver.resolve("localhost") == want
        clock.t += 24 * H  # 49 hours after the delegation was fetched: dropped
        assert (await c.resolver.resolve("localhost")).connect_host == "localhost"
        await site.start()
        site.status, site.body = 200, {"m.server": "127.0.0.2:4444"}
        c.resolver.forget("localhost")
        assert await c.resolver.resolve("localhost") == want
        clock.t += 25 * H
        site.status, site.body = 404, {"errcode": "M_NOT_FOUND"}
        assert (await c.resolver.resolve("localhost")).connect_host == "localhost"
    finally:
        await c.close()


async def test_delegated_name_without_port_goes_through_srv(site: WellKnownSite) -> None:
    clock = Clock()
    srv = srv_table({"_matrix-fed._tcp.delegated.test": [(10, 0, 7777, "box.delegated.test")]})
    c = client(site, clock, srv)
    site.body = {"m.server": "delegated.test"}
    try:
        # Host header and certificate name: the delegated name, not the SRV target.
        assert await c.resolver.resolve("localhost") == Target(
            "box.delegated.test", 7777, "delegated.test", "delegated.test"
        )
        site.body = {"m.server": "other.test"}
        c.resolver.forget("localhost")
        assert await c.resolver.resolve("localhost") == Target(
            "other.test", 8448, "other.test", "other.test"
        )
        assert srv.asked[-2:] == ["_matrix-fed._tcp.other.test", "_matrix._tcp.other.test"]
    finally:
        await c.close()


# ---------------------------------------------------------------- 4. to 6.
async def test_srv_then_deprecated_srv_then_port_8448() -> None:
    srv = srv_table(
        {
            "_matrix-fed._tcp.a.test": [(10, 0, 1111, "fed.a.test")],
            "_matrix._tcp.a.test": [(10, 0, 2222, "old.a.test")],
            "_matrix._tcp.b.test": [(10, 0, 3333, "old.b.test")],
        }
    )
    r = ServerResolver(failing_well_known, srv)
    assert await r.resolve("a.test") == Target("fed.a.test", 1111, "a.test", "a.test")
    assert await r.resolve("b.test") == Target("old.b.test", 3333, "b.test", "b.test")
    assert await r.resolve("c.test") == Target("c.test", 8448, "c.test", "c.test")
    assert srv.asked == [
        "_matrix-fed._tcp.a.test",
        "_matrix-fed._tcp.b.test",
        "_matrix._tcp.b.test",
        "_matrix-fed._tcp.c.test",
        "_matrix._tcp.c.test",
    ]


# ------------------------------------------------------------ certificates
async def test_certificates_are_verified_unless_configured_off(site: WellKnownSite) -> None:
    assert load_config(None, environ={}).federation.verify_certificates is True
    clock = Clock()
    dest = f"127.0.0.1:{site.port}"
    strict = client(site, clock, verify=True)
    try:
        with pytest.raises(FederationError) as e:
            await strict.get_json(dest, "/_matrix/federation/v1/version")
        assert e.value.status is None and "certificate" in str(e.value).lower()
    finally:
        await strict.close()
    lax = client(site, clock, verify=False)
    try:
        got = await lax.get_json(dest, "/_matrix/federation/v1/version")
        assert got == {"server": {"name": "site"}}
    finally:
        await lax.close()
