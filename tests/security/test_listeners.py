"""Finding 6: deep JSON, half-sent requests, listeners serving every API.

Against a real server process (``live``: header timeout 2 s, idle timeout
3 s, body timeout 2 s, 10 connections per address):

- ``[[[[…]]]]`` 100,000 levels deep answered 500 (RecursionError), and on
  the federation port the body was parsed before the signature check;
- connections that never finished their headers were kept forever;
- the client API was served on the federation TLS port and federation on
  the plain-HTTP client port.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from homeserver.core.signing import sign_request
from homeserver.services.server_keys import ensure_tls_certificate
from tests.federation.conftest import free_port
from tests.federation.fake import FakeOrigin, insecure_tls
from tests.federation.harness import Client, OurServer

DEEP = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
V1 = "/_matrix/federation/v1"


async def request(
    url: str,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, Any]:
    """(status, content type, parsed JSON body) of one request."""
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, URL(url, encoded=True), data=data, headers=headers, ssl=insecure_tls()
        ) as r,
    ):
        text = await r.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return r.status, r.content_type, body


def client_url(srv: OurServer, path: str) -> str:
    return f"http://127.0.0.1:{srv.client_port}{path}"


def fed_url(srv: OurServer, path: str) -> str:
    return f"https://127.0.0.1:{srv.fed_port}{path}"


def signed_headers(
    fake: FakeOrigin, srv: OurServer, method: str, path: str, content: Any = None
) -> dict[str, str]:
    """X-Matrix headers of ``fake`` for a request with ``content`` (a deep
    body cannot even be encoded to be signed: the test signs ``{}``)."""
    auth = sign_request(method, path, fake.server_name, srv.server_name, content, fake.key)
    return {"Authorization": auth, "Content-Type": "application/json"}


# ------------------------------------------------------------ deep JSON


async def test_deep_json_on_the_client_listener(live: OurServer) -> None:
    for path in ("/_matrix/client/v3/register", "/_matrix/client/v3/login"):
        status, ctype, body = await request(client_url(live, path), "POST", DEEP)
        assert (status, ctype) == (400, "application/json"), (path, status, body)
        assert body["errcode"] == "M_BAD_JSON", body
    # a deep filter in the query string, too
    deep_filter = "%5B" * 3000 + "%5D" * 3000
    status, _, body = await request(
        client_url(live, f"/_matrix/client/v3/sync?filter={deep_filter}")
    )
    assert status in (400, 401), body  # refused before or after the token check, never 500


async def test_deep_json_on_the_federation_listener(live: OurServer, fake: FakeOrigin) -> None:
    path = f"{V1}/send/deep-{time.monotonic_ns()}"
    # Unsigned: refused before the body is even read.
    status, ctype, body = await request(fed_url(live, path), "PUT", DEEP)
    assert (status, ctype) == (401, "application/json"), (status, body)
    assert body["errcode"] == "M_UNAUTHORIZED"
    # Signed by a real server: the body is parsed, and refused as too deep.
    headers = signed_headers(fake, live, "PUT", path, {})
    status, ctype, body = await request(fed_url(live, path), "PUT", DEEP, headers)
    assert (status, ctype) == (400, "application/json"), (status, body)
    assert body["errcode"] == "M_BAD_JSON"


async def test_federation_ids_are_matched_whole(live: OurServer, fake: FakeOrigin) -> None:
    """Finding 7 on the federation API: a trailing newline in a query id."""
    for path in (
        f"{V1}/query/profile?user_id=%40alice%3A{live.server_name}%0A",
        f"{V1}/query/directory?room_alias=%23town%3A{live.server_name}%0A",
        f"{V1}/event/%24abc%0A",
    ):
        headers = signed_headers(fake, live, "GET", path)
        status, _, body = await request(fed_url(live, path), "GET", None, headers)
        assert status == 400 and body["errcode"] in ("M_INVALID_PARAM", "M_BAD_JSON"), (
            path,
            status,
            body,
        )


# ------------------------------------------------------ listener separation


async def test_client_api_refused_on_the_federation_listener(live: OurServer) -> None:
    for path in (
        "/_matrix/client/versions",
        "/_matrix/client/v3/login",
        "/_homeserver/client/v1/invites",
        "/_homeserver/admin/v1/rooms",
        "/_synapse/admin/v1/register",
        "/",
    ):
        status, ctype, body = await request(fed_url(live, path))
        assert (status, ctype) == (404, "application/json"), (path, status, body)
        assert body["errcode"] == "M_UNRECOGNIZED"
    # what belongs there is served
    status, _, body = await request(fed_url(live, "/_matrix/key/v2/server"))
    assert status == 200 and body["server_name"] == live.server_name
    status, _, _ = await request(fed_url(live, f"{V1}/version"))
    assert status == 200


async def test_health_probes_reach_every_listener(live: OurServer) -> None:
    for url in (client_url(live, "/health"), fed_url(live, "/health/ready")):
        status, _, body = await request(url)
        assert status == 200, (url, body)


async def test_federation_api_refused_on_the_client_listener(live: OurServer) -> None:
    for path in (
        "/_matrix/key/v2/server",
        f"{V1}/version",
        f"/_matrix/key/v2/query/{live.server_name}",
    ):
        status, ctype, body = await request(client_url(live, path))
        assert (status, ctype) == (404, "application/json"), (path, status, body)
        assert body["errcode"] == "M_UNRECOGNIZED"
    status, _, _ = await request(client_url(live, "/_matrix/client/versions"))
    assert status == 200


# ----------------------------------------------------- connection limits


async def read_until_closed(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closed the connection (EOF or reset)."""
    t = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - t


async def test_half_sent_requests_are_closed_after_the_header_timeout(live: OurServer) -> None:
    conns = []
    for _ in range(5):  # half of the per-address cap
        reader, writer = await asyncio.open_connection("127.0.0.1", live.client_port)
        writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
        conns.append((reader, writer))

    async def slowloris(writer: asyncio.StreamWriter) -> None:
        # one more header line every half second: never a complete request
        for i in range(20):
            await asyncio.sleep(0.5)
            if writer.is_closing():
                return
            writer.write(f"X-Slow-{i}: y\r\n".encode())

    trickles = [asyncio.create_task(slowloris(w)) for _, w in conns[:2]]
    closed_after = await asyncio.gather(*(read_until_closed(r, 8) for r, _ in conns))
    for t in trickles:
        t.cancel()
    for _, w in conns:
        w.close()
    # header timeout 2 s: all closed around then, trickling or not
    assert all(t < 6 for t in closed_after), closed_after
    # A TLS connection that never shakes hands is closed too.
    reader, writer = await asyncio.open_connection("127.0.0.1", live.fed_port)
    assert await read_until_closed(reader, 8) < 6
    writer.close()


async def test_idle_kept_alive_connection_is_closed(live: OurServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live.client_port)
    writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    assert await read_until_closed(reader, 8) < 6  # idle timeout 3 s
    writer.close()


async def test_withheld_body_does_not_hold_a_handler(live: OurServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", live.client_port)
    writer.write(
        b"POST /_matrix/client/v3/register HTTP/1.1\r\nHost: x\r\n"
        b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"user'
    )
    t = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 8)
    assert head.startswith(b"HTTP/1.1 408"), head
    assert time.monotonic() - t < 6
    writer.close()


async def long_poll_from(srv: OurServer, source: str, token: str, since: str) -> Any:
    """A connection from ``source`` busy in a 20 s /sync long-poll (so no
    timeout of ours closes it while the test runs)."""
    r, w = await asyncio.open_connection("127.0.0.1", srv.client_port, local_addr=(source, 0))
    w.write(
        f"GET /_matrix/client/v3/sync?since={since}&timeout=20000 HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    return r, w


async def test_connections_per_address_are_capped(live: OurServer) -> None:
    """From one address, 10 open connections at most; others are unaffected.
    (The attacker connects from 127.0.0.2, so the other tests' connections
    from 127.0.0.1 do not count.)"""
    source = "127.0.0.2"
    async with aiohttp.ClientSession() as s:
        user = await Client(s, live.base, live.server_name).register(f"cap{time.monotonic_ns()}")
        since = (await user.call("GET", "/_matrix/client/v3/sync?timeout=0"))["next_batch"]
    held = [await long_poll_from(live, source, str(user.token), since) for _ in range(10)]
    r, w = await asyncio.open_connection("127.0.0.1", live.client_port, local_addr=(source, 0))
    assert await read_until_closed(r, 5) < 1.5  # the 11th is closed at once
    w.close()
    # another address is still served meanwhile
    status, _, _ = await request(client_url(live, "/_matrix/client/versions"))
    assert status == 200
    for _, hw in held:
        hw.close()
        await hw.wait_closed()
    # once they are gone, the address may connect again
    await asyncio.sleep(0.2)
    r, w = await asyncio.open_connection("127.0.0.1", live.client_port, local_addr=(source, 0))
    w.write(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
    w.close()


# ------------------------------------------------------------ public rooms


async def test_public_rooms_need_a_token_by_default(live: OurServer) -> None:
    status, _, body = await request(client_url(live, "/_matrix/client/v3/publicRooms"))
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", body


async def test_deep_json_from_a_remote_server_is_no_500(live: OurServer, tmp_path: Path) -> None:
    """The other way round: a server we ask for its keys answers 100,000
    levels deep (our notary endpoint makes us ask)."""

    async def deep(request: web.Request) -> web.Response:
        return web.Response(body=DEEP, content_type="application/json")

    ensure_tls_certificate(tmp_path / "tls.crt", tmp_path / "tls.key", "localhost")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    app = web.Application()
    app.router.add_get("/_matrix/key/v2/server", deep)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    try:
        url = fed_url(live, f"/_matrix/key/v2/query/localhost:{port}")
        status, ctype, body = await request(url)
    finally:
        await runner.cleanup()
    assert ctype == "application/json" and status < 500, (status, body)
