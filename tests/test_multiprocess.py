"""Two server processes on one database: a /sync long-poll served by process
A wakes for a message sent through process B (LISTEN/NOTIFY), and both see
the same rooms."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.ports import free_port

CS = "/_matrix/client/v3"


@pytest.fixture
def two_servers(db_url: str, tmp_path: Path) -> Iterator[list[str]]:
    procs = []
    urls = []
    fed = free_port()
    for name in ("a", "b"):
        port = free_port()
        data = tmp_path / name
        data.mkdir()
        # Same server name and signing key: two processes of ONE homeserver.
        if name == "b":
            (data / "signing.key").write_bytes((tmp_path / "a" / "signing.key").read_bytes())
        env = dict(
            os.environ,
            HOMESERVER_REGISTRATION_ENABLED="true",
            HOMESERVER_RATE_LIMITS_ENABLED="false",
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "homeserver.cli",
                    "serve",
                    "--server-name",
                    "hs.test",
                    "--data-dir",
                    str(data),
                    "--database-url",
                    db_url,
                    "--client-port",
                    str(port),
                    "--federation-port",
                    str(fed if name == "a" else free_port()),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / f"{name}.log", "wb"),
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
    try:
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


async def call(
    s: aiohttp.ClientSession, method: str, url: str, token: str | None = None, body: object = None
) -> dict:
    h = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.request(method, url, json=body, headers=h) as r:
        data = await r.json()
        assert r.status == 200, (method, url, r.status, data)
        return data  # type: ignore[no-any-return]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_long_poll_on_a_wakes_for_send_on_b(
    two_servers: list[str], session: aiohttp.ClientSession
) -> None:
    a, b = two_servers
    reg = {"password": "pw", "auth": {"type": "m.login.dummy"}}
    alice = await call(session, "POST", f"{a}{CS}/register", body={"username": "alice", **reg})
    bob = await call(session, "POST", f"{b}{CS}/register", body={"username": "bob", **reg})
    room = (
        await call(
            session, "POST", f"{b}{CS}/createRoom", bob["access_token"], {"preset": "public_chat"}
        )
    )["room_id"]
    await call(session, "POST", f"{a}{CS}/join/{room}", alice["access_token"], {})
    first = await call(session, "GET", f"{a}{CS}/sync?timeout=0", alice["access_token"])
    poll = asyncio.create_task(
        call(
            session,
            "GET",
            f"{a}{CS}/sync?timeout=20000&since={first['next_batch']}",
            alice["access_token"],
        )
    )
    await asyncio.sleep(0.5)
    assert not poll.done()
    t0 = time.monotonic()
    await call(
        session,
        "PUT",
        f"{b}{CS}/rooms/{room}/send/m.room.message/t1",
        bob["access_token"],
        {"msgtype": "m.text", "body": "from B"},
    )
    got = await asyncio.wait_for(poll, 10)
    assert time.monotonic() - t0 < 3
    bodies = [e["content"].get("body") for e in got["rooms"]["join"][room]["timeline"]["events"]]
    assert bodies == ["from B"]
    # writes through both processes interleave into one consistent room
    await asyncio.gather(
        *(
            call(
                session,
                "PUT",
                f"{(a, b)[i % 2]}{CS}/rooms/{room}/send/m.room.message/x{i}",
                (alice, bob)[i % 2]["access_token"],
                {"msgtype": "m.text", "body": str(i)},
            )
            for i in range(20)
        )
    )
    msgs = await call(
        session, "GET", f"{a}{CS}/rooms/{room}/messages?dir=b&limit=50", alice["access_token"]
    )
    assert sorted(
        int(e["content"]["body"])
        for e in msgs["chunk"]
        if e["type"] == "m.room.message" and e["content"]["body"].isdigit()
    ) == list(range(20))


async def test_logout_through_b_is_seen_by_a(
    two_servers: list[str], session: aiohttp.ClientSession
) -> None:
    a, b = two_servers
    reg = {"password": "pw", "auth": {"type": "m.login.dummy"}}
    carol = await call(session, "POST", f"{a}{CS}/register", body={"username": "carol", **reg})
    token = carol["access_token"]
    await call(session, "GET", f"{a}{CS}/account/whoami", token)  # now cached on A
    await call(session, "POST", f"{b}{CS}/logout", token, {})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        async with session.get(
            f"{a}{CS}/account/whoami", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            if r.status == 401:
                assert (await r.json())["errcode"] == "M_UNKNOWN_TOKEN"
                return
        await asyncio.sleep(0.05)
    raise AssertionError("process A still accepts a token logged out through B")
