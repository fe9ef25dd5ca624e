"""PostgreSQL dies under two server processes.

While it is down every request is answered at once with 503
``IO.HOMESERVER.UNAVAILABLE`` and ``Retry-After`` (never a 500); when it is
back both processes serve again without anyone touching them, and what
travels between them over LISTEN/NOTIFY works again: a long-poll on A wakes
for a send through B, a logout through B is seen by A. With the embedded
database the server itself brings PostgreSQL back.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from homeserver.storage.embedded import EmbeddedPostgres, EmbeddedPostgresError
from tests.faults.procs import CS, Http, Proc, eventually_status

pytestmark = pytest.mark.slow


def restart_cluster(pg: EmbeddedPostgres, timeout: float = 30) -> None:
    """Start a killed cluster again (its orphaned backends take a moment to go)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pg.restart()
            return
        except EmbeddedPostgresError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def wake_across(http: Http, a: str, b: str, room: str, ta: str, tb: str, txn: str) -> float:
    """Seconds from a send through B to the end of a long-poll parked on A."""
    first = await http.ok("GET", f"{a}{CS}/sync?timeout=0", ta)
    poll = asyncio.create_task(
        http.call("GET", f"{a}{CS}/sync?timeout=15000&since={first['next_batch']}", ta)
    )
    await asyncio.sleep(0.5)
    assert not poll.done()
    t0 = time.monotonic()
    await http.ok(
        "PUT",
        f"{b}{CS}/rooms/{room}/send/m.room.message/{txn}",
        tb,
        {"msgtype": "m.text", "body": txn},
    )
    r = await asyncio.wait_for(poll, 20)
    took = time.monotonic() - t0
    assert r.status == 200
    bodies = [e["content"].get("body") for e in r.body["rooms"]["join"][room]["timeline"]["events"]]
    assert txn in bodies
    return took


async def test_postgres_killed_and_restarted_under_two_processes(data_root: Path) -> None:
    pg = EmbeddedPostgres(data_root / "pg")
    url = pg.start()
    a = Proc(data_root / "a", database_url=url)
    b = Proc(data_root / "b", database_url=url)
    try:
        await a.start()
        (b.data).mkdir(parents=True)
        (b.data / "signing.key").write_bytes((a.data / "signing.key").read_bytes())
        await b.start()
        async with aiohttp.ClientSession() as s:
            http = Http(s)
            alice, ta = await http.register(a.base, "alice")
            _bob, tb = await http.register(b.base, "bob")
            room = (
                await http.ok("POST", f"{b.base}{CS}/createRoom", tb, {"preset": "public_chat"})
            )["room_id"]
            await http.ok("POST", f"{a.base}{CS}/join/{room}", ta, {})
            assert await wake_across(http, a.base, b.base, room, ta, tb, "before") < 3
            _carol, tc = await http.register(a.base, "carol")
            await http.ok("GET", f"{a.base}{CS}/account/whoami", tc)  # cached on A

            # PostgreSQL dies (kill -9 of the postmaster: a crash).
            os.kill(pg.postmaster_pid() or 0, signal.SIGKILL)
            statuses: dict[str, list[int]] = {}
            for name, proc in (("a", a), ("b", b)):
                t0 = time.monotonic()
                r, seen = await eventually_status(
                    http, f"{proc.base}{CS}/rooms/{room}/messages?dir=b&limit=1", ta, 503, 10
                )
                statuses[name] = seen
                assert r.body["errcode"] == "IO.HOMESERVER.UNAVAILABLE", r.body
                assert r.body["retry_after_ms"] > 0
                assert int(r.headers["Retry-After"]) > 0
                assert r.headers["Content-Type"].startswith("application/json")
                assert time.monotonic() - t0 < 10
            # while it is down, answers are quick and never 500 (a token
            # not cached cannot be checked either)
            for base in (a.base, b.base):
                for path in ("/sync?timeout=0", f"/rooms/{room}/messages?dir=b", "/joined_rooms"):
                    t0 = time.monotonic()
                    r = await http.call("GET", f"{base}{CS}{path}", ta)
                    assert r.status == 503, (path, r.status, r.body)
                    assert time.monotonic() - t0 < 10  # answered, not hung
            r = await http.call(
                "PUT", f"{b.base}{CS}/rooms/{room}/send/m.room.message/down", tb, {"body": "x"}
            )
            assert r.status == 503, r.body
            # Alive, not ready (issue 19): liveness does not touch the database.
            assert (await http.call("GET", f"{a.base}/health", None)).status == 200
            r = await http.call("GET", f"{a.base}/health/ready", None)
            assert r.status == 503 and r.body["errcode"] == "IO.HOMESERVER.UNAVAILABLE", r.body

            await asyncio.get_running_loop().run_in_executor(None, restart_cluster, pg)
            t_back = time.monotonic()
            for proc, token in ((a, ta), (b, tb)):
                _r, seen = await eventually_status(
                    http, f"{proc.base}{CS}/joined_rooms", token, 200, timeout=20
                )
                assert set(seen) <= {200, 503}, seen  # never a 500 on the way back
            print(f"both serve {time.monotonic() - t_back:.2f} s after PostgreSQL is back")
            ready = await http.call("GET", f"{b.base}/health/ready", None)
            assert ready.status == 200 and ready.body["status"] == "ready", ready.body

            # Cross-process wake-up works again, without waiting out the
            # long-poll's timeout (the LISTEN connections were reopened).
            took = await asyncio.wait_for(
                _eventually_fast_wake(http, a.base, b.base, room, ta, tb), 40
            )
            print(f"cross-process wake-up after the restart: {took:.2f} s")
            # Token revocation across processes works again.
            await http.ok("POST", f"{b.base}{CS}/logout", tc, {})
            r, _ = await eventually_status(http, f"{a.base}{CS}/account/whoami", tc, 401, timeout=3)
            assert r.body["errcode"] == "M_UNKNOWN_TOKEN"
            # The retried send (same txn id) lands once.
            await http.ok(
                "PUT", f"{b.base}{CS}/rooms/{room}/send/m.room.message/down", tb, {"body": "x"}
            )
            msgs = await http.ok("GET", f"{a.base}{CS}/rooms/{room}/messages?dir=b&limit=50", ta)
            assert [e["content"].get("body") for e in msgs["chunk"]].count("x") == 1
            assert alice
        logs = a.log(2000) + b.log(2000)
        assert "unhandled error" not in logs, logs  # no 500 answered
        assert "LISTEN connection back" in a.log(2000) and "LISTEN connection back" in b.log(2000)
    finally:
        a.stop()
        b.stop()
        pg.stop()


async def _eventually_fast_wake(http: Http, a: str, b: str, room: str, ta: str, tb: str) -> float:
    """The first wake-up may race the LISTEN reconnect (a notification sent
    before A listens again is lost, and A re-reads on reconnect): within a
    few seconds every wake-up is prompt."""
    deadline = time.monotonic() + 10
    i = 0
    while True:
        i += 1
        took = await wake_across(http, a, b, room, ta, tb, f"after{i}")
        if took < 3:
            return took
        assert time.monotonic() < deadline, f"wake-ups still slow ({took:.1f} s)"


async def test_embedded_postgres_is_brought_back_by_the_server(data_root: Path) -> None:
    p = Proc(data_root / "d")
    try:
        await p.start()
        async with aiohttp.ClientSession() as s:
            http = Http(s)
            _u, token = await http.register(p.base, "dave")
            pm = p.postmaster()
            assert pm is not None
            os.kill(pm.pid, signal.SIGKILL)
            t0 = time.monotonic()
            url = f"{p.base}{CS}/joined_rooms"
            # (its orphaned backends may answer a moment longer)
            _r, before = await eventually_status(http, url, token, 503, timeout=15)
            _r, seen = await eventually_status(http, url, token, 200, timeout=45)
            print(f"serving again {time.monotonic() - t0:.2f} s after PostgreSQL was killed")
            assert set(before + seen) <= {200, 503}, before + seen
            again = p.postmaster()
            assert again is not None and again.pid != pm.pid
            assert "embedded PostgreSQL died: restarting it" in p.log(200)
            deadline = time.monotonic() + 10  # pg_ctl may return just after it serves
            while "embedded PostgreSQL restarted" not in p.log(200):
                assert time.monotonic() < deadline, p.log(200)
                await asyncio.sleep(0.1)
        p.sigterm()
        assert p.wait(30) == 0
        assert p.postmaster() is None
    finally:
        p.stop()
