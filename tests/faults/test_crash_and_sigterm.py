"""A server killed with -9 under load, and one stopped with SIGTERM under load.

kill -9: every send that was acknowledged is there after a restart (which
adopts the embedded PostgreSQL the dead server left running), retrying any
send with its transaction id answers the same event and adds nothing, and
``homeserver verify`` with no options finds no drift. A SIGTERM after that
crash still stops the cluster.

SIGTERM: the parked long-poll is answered, requests in flight finish (none
gets a 5xx), the process exits 0 within the grace period, the embedded
PostgreSQL is stopped, and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.faults.procs import CS, Http, Proc, run_cli

pytestmark = pytest.mark.slow

CLIENTS = 6


@dataclass
class Load:
    """Senders writing into one room until told to stop: what was
    acknowledged, and which sends ended without an answer."""

    base: str
    room: str
    tokens: list[str]
    acked: dict[tuple[int, str], str] = field(default_factory=dict)
    unanswered: set[tuple[int, str]] = field(default_factory=set)
    statuses: list[int] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def sender(self, k: int) -> None:
        # a new connection per request: a closed listener is a clean refusal
        conn = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=conn) as s:
            http = Http(s)
            i = 0
            while not self.stop.is_set():
                txn = f"c{k}-{i}"
                i += 1
                try:
                    r = await http.call(
                        "PUT",
                        f"{self.base}{CS}/rooms/{self.room}/send/m.room.message/{txn}",
                        self.tokens[k],
                        {"msgtype": "m.text", "body": txn},
                        timeout=20,
                    )
                except (aiohttp.ClientError, TimeoutError):
                    self.unanswered.add((k, txn))
                    await asyncio.sleep(0.05)
                    continue
                self.statuses.append(r.status)
                if r.status == 200:
                    self.acked[(k, txn)] = r.body["event_id"]
                else:
                    self.unanswered.add((k, txn))

    def run(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.sender(k)) for k in range(len(self.tokens))]


async def setup_room(http: Http, base: str) -> tuple[str, list[str]]:
    tokens = [(await http.register(base, f"u{k}"))[1] for k in range(CLIENTS)]
    room = (await http.ok("POST", f"{base}{CS}/createRoom", tokens[0], {"preset": "public_chat"}))[
        "room_id"
    ]
    for t in tokens[1:]:
        await http.ok("POST", f"{base}{CS}/join/{room}", t, {})
    return room, tokens


async def all_bodies(http: Http, base: str, room: str, token: str) -> list[str]:
    out: list[str] = []
    frm = ""
    while True:
        page = await http.ok("GET", f"{base}{CS}/rooms/{room}/messages?dir=b&limit=500{frm}", token)
        out += [
            e["content"]["body"]
            for e in page["chunk"]
            if e["type"] == "m.room.message" and "body" in e["content"]
        ]
        if not page.get("end") or not page["chunk"]:
            return out
        frm = f"&from={page['end']}"


async def check_nothing_lost(http: Http, base: str, load: Load) -> None:
    """Acknowledged sends are there; a retry answers the same event; a send
    that got no answer, retried twice, lands exactly once."""
    for (k, txn), event_id in load.acked.items():
        r = await http.ok(
            "PUT",
            f"{base}{CS}/rooms/{load.room}/send/m.room.message/{txn}",
            load.tokens[k],
            {"msgtype": "m.text", "body": txn},
        )
        assert r["event_id"] == event_id, (txn, r, event_id)
    for k, txn in load.unanswered:
        ids = {
            (
                await http.ok(
                    "PUT",
                    f"{base}{CS}/rooms/{load.room}/send/m.room.message/{txn}",
                    load.tokens[k],
                    {"msgtype": "m.text", "body": txn},
                )
            )["event_id"]
            for _ in range(2)
        }
        assert len(ids) == 1
    bodies = await all_bodies(http, base, load.room, load.tokens[0])
    assert len(bodies) == len(set(bodies)), "a send landed twice"
    want = {txn for _k, txn in load.acked} | {txn for _k, txn in load.unanswered}
    assert want <= set(bodies)


async def test_kill_9_under_load_then_restart(data_root: Path) -> None:
    p = Proc(data_root / "d")
    try:
        await p.start()
        async with aiohttp.ClientSession() as s:
            http = Http(s)
            room, tokens = await setup_room(http, p.base)
            load = Load(p.base, room, tokens)
            tasks = load.run()
            deadline = time.monotonic() + 20
            while len(load.acked) < 150 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            p.kill9()
            await asyncio.sleep(0.5)
            load.stop.set()
            await asyncio.gather(*tasks)
            print(f"{len(load.acked)} acknowledged, {len(load.unanswered)} unanswered at kill -9")
            assert len(load.acked) >= 50
            assert set(load.statuses) == {200}
            cluster = p.postmaster()
            assert cluster is not None  # left behind by the dead server

            await p.start()  # the same data dir: adopts the running cluster
            assert f"adopting the running embedded PostgreSQL (pid {cluster.pid})" in p.log()
            await check_nothing_lost(http, p.base, load)

        p.sigterm()  # after a crash, SIGTERM still stops the cluster
        assert p.wait(30) == 0
        assert p.postmaster() is None
        assert not (p.data / "postgres" / "postmaster.pid").exists()
        # verify with no options: the server name comes from the database
        r = run_cli("verify", "--data-dir", str(p.data))
        assert r.returncode == 0 and "no drift" in r.stdout, r.stdout + r.stderr
        assert p.postmaster() is None  # the command stopped what it started
    finally:
        p.stop()


async def test_sigterm_under_load(data_root: Path) -> None:
    p = Proc(data_root / "d", extra_env={"HOMESERVER_SHUTDOWN_GRACE_SECONDS": "10"})
    try:
        await p.start()
        async with aiohttp.ClientSession() as s:
            http = Http(s)
            room, tokens = await setup_room(http, p.base)
            first = await http.ok("GET", f"{p.base}{CS}/sync?timeout=0", tokens[0])
            # a long-poll parked with nothing to wake it (a filter on no rooms)
            parked = asyncio.create_task(
                http.call(
                    "GET",
                    f"{p.base}{CS}/sync?timeout=60000&since={first['next_batch']}"
                    '&filter={"room":{"rooms":[]},"presence":{"types":[]},'
                    '"account_data":{"types":[]}}',
                    tokens[0],
                    timeout=60,
                )
            )
            load = Load(p.base, room, tokens)
            tasks = load.run()
            deadline = time.monotonic() + 20
            while len(load.acked) < 100 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not parked.done()
            t0 = time.monotonic()
            p.sigterm()
            r = await asyncio.wait_for(parked, 15)
            answered = time.monotonic() - t0
            assert r.status == 200, r.body  # answered, not cut
            code = await asyncio.get_running_loop().run_in_executor(None, p.wait, 30)
            stopped = time.monotonic() - t0
            load.stop.set()
            await asyncio.gather(*tasks)
            print(
                f"long-poll answered {answered:.2f} s and process exited {stopped:.2f} s "
                f"after SIGTERM; {len(load.acked)} acknowledged, {len(load.unanswered)} refused"
            )
            assert code == 0
            assert stopped < 10 + 5
            assert set(load.statuses) == {200}, load.statuses  # no 5xx while draining
            assert p.postmaster() is None
            assert "stopped" in p.log()
            assert "unhandled error" not in p.log(1000)

            await p.start()
            await check_nothing_lost(http, p.base, load)
    finally:
        p.stop()
