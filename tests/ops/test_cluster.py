"""Scale-out (issue 19): three processes on one database behind nginx
(Debian's package, scripts/nginx.conf.template) share the client traffic; a
matrix-nio client works through nginx; each singleton duty runs in exactly
one process (a lease), and when the process holding the federation-sender
lease is killed, another takes it and the queued events still reach the
peer, while clients carry on through nginx."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import create_test_database, drop_test_database
from tests.faults.procs import Proc, free_port
from tests.federation.harness import LOOPBACK, Client, OurServer, eventually
from tests.ops import nginx

SENDER = "this process now runs the federation-sender duty"


def holders(procs: list[Proc], duty: str) -> list[Proc]:
    return [p for p in procs if f"this process now runs the {duty} duty" in p.log(4000)]


async def test_three_processes_one_sender_lease_moves_on_kill(
    pg_url: str, template_url: str
) -> None:
    root = Path(tempfile.mkdtemp(prefix="hs-cluster-"))
    root.chmod(0o755)
    url = await create_test_database(pg_url)
    peer_url = await create_test_database(pg_url)
    fed = free_port()
    env = {
        "HOMESERVER_FEDERATION_VERIFY_CERTIFICATES": "false",
        "HOMESERVER_FEDERATION_IP_RANGE_ALLOWLIST": LOOPBACK,
    }
    name = f"localhost:{fed}"
    procs = [
        Proc(
            root / f"p{i}",
            server_name=name,
            database_url=url,
            extra_env=env,
            fed_port=fed if i == 0 else free_port(),
        )
        for i in range(3)
    ]
    peer = OurServer("peer", free_port(), free_port(), peer_url, root / "peer")
    if nginx.nginx_binary() is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx-light)")
    front_port = free_port()
    front = f"http://127.0.0.1:{front_port}"
    proxy = None
    try:
        await procs[0].start()
        for p in procs[1:]:
            p.data.mkdir(parents=True)
            (p.data / "signing.key").write_bytes((procs[0].data / "signing.key").read_bytes())
            await p.start()
        peer.start()
        await peer.wait_ready()
        proxy = nginx.start(root / "nginx", f"127.0.0.1:{front_port}", [p.port for p in procs])
        # Exactly one process holds each duty.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            len(holders(procs, "federation-sender")) != 1
            or len(holders(procs, "room-lifecycle")) != 1
        ):
            await asyncio.sleep(0.2)
        assert len(holders(procs, "federation-sender")) == 1
        assert len(holders(procs, "room-lifecycle")) == 1
        async with aiohttp.ClientSession() as s:
            await eventually(lambda: _status(s, f"{front}/health"), lambda st: st == 200)
            # Clients talk to nginx; the processes share the work.
            alice = await Client(s, front, name).register("alice")
            room = await alice.create_room(preset="public_chat")
            bob = await Client(s, peer.base, peer.server_name).register("bob")
            await bob.join(room, [name])
            for i, p in enumerate(procs):
                via = Client(s, p.base, name)
                via.token = alice.token
                await via.send(room, f"through process {i}")
            await eventually(
                lambda: bob.bodies(room), lambda b: "through process 2" in b, timeout=30
            )

            await _nio_through(front, room, alice)

            (sender,) = holders(procs, "federation-sender")
            sender.kill9()
            alive = [p for p in procs if p is not sender]
            # Through nginx, which routes around the dead process.
            for i in range(5):
                await alice.send(room, f"while the sender is gone {i}")
            # Another process takes the lease and sends what was queued.
            t0 = time.monotonic()
            await eventually(
                lambda: bob.bodies(room), lambda b: "while the sender is gone 4" in b, timeout=30
            )
            took = time.monotonic() - t0
            assert len(holders(alive, "federation-sender")) == 1
            bodies = await bob.bodies(room)
            assert all(f"while the sender is gone {i}" in bodies for i in range(5))
            print(f"queued events reached the peer {took:.1f} s after the sender was killed")
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(10)
        for p in procs:
            p.stop()
        peer.stop()
        for u in (url, peer_url):
            await drop_test_database(pg_url, u)


async def _status(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url) as r:
        return r.status


async def _nio_through(front: str, room: str, alice: Client) -> None:
    """matrix-nio's own client through nginx: register, join, send, and its
    sync sees alice's message."""
    from nio import AsyncClient, JoinResponse, RegisterResponse, RoomMessageText, SyncResponse

    nio = AsyncClient(front, "carol")
    try:
        reg = await nio.register("carol", "pw-carol")
        assert isinstance(reg, RegisterResponse), reg
        assert isinstance(await nio.join(room), JoinResponse)
        await nio.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "carol here"})
        await alice.send(room, "hello carol")
        seen: list[str] = []
        for _ in range(20):
            sync = await nio.sync(timeout=3000)
            assert isinstance(sync, SyncResponse), sync
            joined = sync.rooms.join.get(room)
            if joined is not None:
                seen += [e.body for e in joined.timeline.events if isinstance(e, RoomMessageText)]
            if "hello carol" in seen:
                break
        assert "hello carol" in seen and "carol here" in seen, seen
    finally:
        await nio.close()
