"""Server-side request forgery, written as the attack (issue 16, finding 3).

Anyone may ask our notary endpoint for the keys of any server name, and
the name decides where we connect: ``127.0.0.1:PORT`` would make us open a
connection to an internal service. With the default
``federation.ip_range_blocklist`` (no allowlist) nothing may reach a
loopback port, whatever spelling of the address is used — an IP literal, a
host name that resolves to it, an IPv4-mapped IPv6 literal — nor through a
well-known redirect or an SRV record pointing there. The refusal is a log
line and an answer at once (a Matrix error where the caller is a user)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest
import signedjson.key
from aiohttp import web

from homeserver.core.ip_ranges import DEFAULT_BLOCKLIST, IPRangeFilter
from homeserver.services.federation.client import FederationClient, FederationError, SrvRecord
from tests.federation.conftest import free_port, running_server
from tests.federation.fake import insecure_tls, serve_tls
from tests.federation.harness import CS, Client, OurServer, q

Q = "/_matrix/key/v2/query"


class Listener:
    """A TCP port on a loopback address that counts who connects to it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.close()

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture(scope="module")
async def default_server(pg_url: str, template_url: str) -> AsyncIterator[OurServer]:
    """Our server as deployed: the default blocklist and no allowlist."""
    env = {"HOMESERVER_FEDERATION_IP_RANGE_ALLOWLIST": ""}
    async with running_server(pg_url, "ssrf", env) as srv:
        yield srv


async def test_key_query_to_loopback_makes_no_connection(default_server: OurServer) -> None:
    srv = default_server
    log_start = srv.log_path.stat().st_size
    async with Listener() as internal, aiohttp.ClientSession() as http:
        names = [
            f"127.0.0.1:{internal.port}",
            f"localhost:{internal.port}",  # resolves to loopback
            f"[::ffff:127.0.0.1]:{internal.port}",  # IPv4-mapped
        ]
        base = f"https://127.0.0.1:{srv.fed_port}{Q}"
        started = time.monotonic()
        for name in names:
            async with http.get(f"{base}/{quote(name)}", ssl=insecure_tls()) as r:
                assert r.status == 200
                assert (await r.json())["server_keys"] == []
        body = {"server_keys": {name: {} for name in names}}
        async with http.post(base, json=body, ssl=insecure_tls()) as r:
            assert r.status == 200
            assert (await r.json())["server_keys"] == []
        assert time.monotonic() - started < 10  # answered, not hung
        await asyncio.sleep(0.2)  # a late connection would still be counted
        assert internal.connections == 0
    log = srv.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "blocked by federation.ip_range_blocklist" in log


async def test_joining_through_a_blocked_server_is_a_clear_matrix_error(
    default_server: OurServer,
) -> None:
    async with Listener() as internal, aiohttp.ClientSession() as http:
        user = await Client(http, default_server.base, default_server.server_name).register(
            f"u{uuid.uuid4().hex[:6]}"
        )
        via = f"127.0.0.1:{internal.port}"
        got = await user.call(
            "POST", f"{CS}/join/{q('!room:' + via)}?server_name={q(via)}", {}, expect=None
        )
        assert got["_status"] == 502, got
        assert got["errcode"] == "M_UNKNOWN"
        assert "ip_range_blocklist" in got["error"]
        assert internal.connections == 0


# ----------------------------------------------------- every hop, in-process
class RedirectingSite:
    """HTTPS on 127.0.0.1 whose well-known redirects to ``location``."""

    def __init__(self, location: str) -> None:
        self.port = free_port()
        self.location = location
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def _well_known(self, request: web.Request) -> web.Response:
        self.hits += 1
        raise web.HTTPFound(self.location)

    async def __aenter__(self) -> RedirectingSite:
        app = web.Application()
        app.router.add_get("/.well-known/matrix/server", self._well_known)
        self._runner = await serve_tls(app, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_redirects_and_srv_targets_are_filtered_too() -> None:
    """Only 127.0.0.1 is allowed: the well-known site there is asked, but
    neither its redirect to 127.0.0.2 nor the SRV record pointing at
    127.0.0.2 leads to a connection there."""
    only_site = IPRangeFilter.from_strings(DEFAULT_BLOCKLIST, ["127.0.0.1/32"])
    async with Listener("127.0.0.2") as internal:
        location = f"https://127.0.0.2:{internal.port}/.well-known/matrix/server"
        async with RedirectingSite(location) as site:
            asked: list[str] = []

            async def srv(name: str) -> list[SrvRecord]:
                asked.append(name)
                return [(10, 0, internal.port, "127.0.0.2")]

            client = FederationClient(
                "us.test",
                signedjson.key.generate_signing_key("t"),
                verify_certificates=False,
                well_known_port=site.port,
                srv=srv,
                ip_filter=only_site,
            )
            try:
                with pytest.raises(FederationError) as e:
                    await client.get_json("localhost", "/_matrix/federation/v1/version")
            finally:
                await client.close()
            assert e.value.blocked and "ip_range_blocklist" in str(e.value)
            assert site.hits == 1  # the allowed hop happened
            assert asked == ["_matrix-fed._tcp.localhost"]
        assert internal.connections == 0
