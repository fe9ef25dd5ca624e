"""Soak: two server processes (each with its embedded PostgreSQL) federating,
under a bounded mixed load for a given time, sampled every interval.

Also per interval, from each server's metrics: what it still has queued
for the other (federation PDUs and EDUs, and the age of the oldest), its
live memory (C heap bytes in use, Python's allocated blocks) and how full
each in-memory cache is (weight against bound, in percent): memory that
grows while a cache is still filling is that cache's, not a leak.

Load (all loopback): long-polls (/sync with a timeout) by the users of A,
sends into a shared room through A and through B (so every message crosses
federation), and join/leave churn (new local users join and leave; B users
re-join over federation). Per interval it prints one JSON line: the RSS of
each server process, the PSS of each PostgreSQL cluster (postmaster and
backends; shared buffers counted once) and its process count, and p50/p99
latency of sends, joins and immediate syncs. The summary at the end
gives, per memory figure, the first and last interval, and from the
interval where every cache stopped filling to the end: at warm-up, at the
end, lowest and highest.

usage: scripts/soak [--minutes 3] [--interval 60] [--rate 5] [--churn-pool 0]
                    [--rejoiners 2] [--cache-factor 1.0] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CS = "/_matrix/client/v3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_kb(path: str, field: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _proc_kb(f"/proc/{pid}/status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size: shared pages divided among their users, so
    PostgreSQL's shared buffers count once for the whole cluster."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def cluster_pss_kb(pgdata: Path) -> tuple[int, int]:
    """The postmaster and all its children (backends, background workers):
    their summed PSS and how many processes."""
    try:
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    pids = [postmaster]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == postmaster:
                pids.append(int(d.name))
    return sum(pss_kb(p) for p in pids), len(pids)


class Server:
    def __init__(self, root: Path, name: str, cache_factor: float = 1.0) -> None:
        self.data = root / name
        self.cache_factor = cache_factor
        self.port, self.fed, self.metrics = free_port(), free_port(), free_port()
        self.server_name = f"localhost:{self.fed}"
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"{name}.log"

    def start(self) -> None:
        env = dict(
            os.environ,
            HOMESERVER_FEDERATION_VERIFY_CERTIFICATES="false",
            # The two servers federate over loopback, which the default
            # outbound filter refuses.
            HOMESERVER_FEDERATION_IP_RANGE_ALLOWLIST="127.0.0.0/8,::1/128",
            HOMESERVER_REGISTRATION_ENABLED="true",
            # Lifted, as the Synapse peer's are: this measures the server.
            HOMESERVER_RATE_LIMITS_ENABLED="false",
            HOMESERVER_LISTEN_METRICS_PORT=str(self.metrics),
            HOMESERVER_CACHES_GLOBAL_FACTOR=str(self.cache_factor),
        )
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "homeserver.cli",
                "serve",
                "--data-dir",
                str(self.data),
                "--server-name",
                self.server_name,
                "--client-port",
                str(self.port),
                "--federation-port",
                str(self.fed),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115 - the child keeps it
        )

    async def scrape(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        """From the server's Prometheus metrics: what it has queued for
        other servers (PDUs and EDUs, and the age of the oldest: whether
        federation keeps up), and its live memory (C heap in use, Python's
        allocated blocks: RSS that grows while these stay flat is the
        allocators' fragmentation, not a leak)."""
        async with s.get(f"http://127.0.0.1:{self.metrics}/metrics") as r:
            text = await r.text()
        items, age = 0, 0.0
        heap: dict[str, float] = {}
        weight: dict[str, float] = {}
        bound: dict[str, float] = {}
        for line in text.splitlines():
            for prefix, into in (
                ('homeserver_cache_weight{cache="', weight),
                ('homeserver_cache_bound{cache="', bound),
            ):
                if line.startswith(prefix):
                    name, value = line[len(prefix) :].split('"}', 1)
                    into[name] = float(value)
            if line.startswith("homeserver_federation_queue_items{"):
                items += int(float(line.rsplit(" ", 1)[1]))
            elif line.startswith("homeserver_federation_queue_oldest_age_seconds{"):
                age = max(age, float(line.rsplit(" ", 1)[1]))
            elif line.startswith(("homeserver_malloc_in_use_bytes ", "homeserver_python_")):
                name, value = line.split(" ", 1)
                heap[name] = float(value)
        n = self.data.name
        return {
            f"fed_queue_{n}": items,
            f"fed_oldest_{n}_s": round(age, 1),
            f"malloc_in_use_{n}_mb": round(
                heap.get("homeserver_malloc_in_use_bytes", 0) / 2**20, 1
            ),
            f"py_blocks_{n}_k": round(heap.get("homeserver_python_allocated_blocks", 0) / 1000),
            # percent of its bound (entries when unbounded here: bound 0)
            f"caches_{n}": {
                k: round(100 * w / bound[k], 1) if bound.get(k) else int(w)
                for k, w in sorted(weight.items())
            },
        }

    async def ready(self, s: aiohttp.ClientSession) -> None:
        for _ in range(1200):
            try:
                async with s.get(f"{self.base}/_matrix/client/versions") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.server_name} did not start; see {self.log}")

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


class Soak:
    def __init__(self, a: Server, b: Server, s: aiohttp.ClientSession) -> None:
        self.a, self.b, self.s = a, b, s
        self.lat: dict[str, list[float]] = {"send": [], "join": [], "sync0": []}
        self.errors: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def call(
        self, kind: str | None, method: str, url: str, token: str, body: Any = None
    ) -> Any:
        t0 = time.monotonic()
        try:
            async with self.s.request(
                method,
                url,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=60),
            ) as r:
                data = await r.json(content_type=None)
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
            return None
        if status != 200:
            key = f"{status} {data.get('errcode') if isinstance(data, dict) else ''}"
            self.errors[key] = self.errors.get(key, 0) + 1
            return None
        if kind is not None:
            self.lat[kind].append((time.monotonic() - t0) * 1000)
        return data

    async def register(self, server: Server, name: str) -> str:
        body = {"username": name, "password": "pw", "auth": {"type": "m.login.dummy"}}
        async with self.s.post(f"{server.base}{CS}/register", json=body) as r:
            return str((await r.json())["access_token"])

    async def poller(self, token: str) -> None:
        sync = await self.call("sync0", "GET", f"{self.a.base}{CS}/sync?timeout=0", token)
        since = sync["next_batch"] if sync else ""
        while not self.stop.is_set():
            r = await self.call(
                None, "GET", f"{self.a.base}{CS}/sync?timeout=10000&since={since}", token
            )
            if r:
                since = r["next_batch"]
            else:
                await asyncio.sleep(1)

    async def sender(self, server: Server, token: str, room: str, k: int, rate: float) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            await self.call(
                "send",
                "PUT",
                f"{server.base}{CS}/rooms/{room}/send/m.room.message/s{k}-{i}",
                token,
                {"msgtype": "m.text", "body": f"{k}/{i}"},
            )
            await asyncio.sleep(1 / rate)

    async def churn(self, room: str, b_tokens: list[str], pool: int) -> None:
        """A local user joins and leaves; a B user leaves and re-joins over
        federation; an immediate sync in between. With ``pool`` 0 each local
        user is a new account (the room's state and the user count grow for
        the whole run); otherwise ``pool`` accounts take turns (a steady
        population: what memory after warm-up is measured against)."""
        n = 0
        tokens: dict[int, str] = {}
        while not self.stop.is_set():
            n += 1
            k = n if pool == 0 else n % pool
            t = tokens.get(k) or await self.register(self.a, f"churn{k}")
            if pool:
                tokens[k] = t
            await self.call("join", "POST", f"{self.a.base}{CS}/join/{room}", t, {})
            await self.call("sync0", "GET", f"{self.a.base}{CS}/sync?timeout=0", t)
            await self.call(None, "POST", f"{self.a.base}{CS}/rooms/{room}/leave", t, {})
            bt = b_tokens[n % len(b_tokens)]
            await self.call(None, "POST", f"{self.b.base}{CS}/rooms/{room}/leave", bt, {})
            await self.call(
                "join",
                "POST",
                f"{self.b.base}{CS}/join/{room}?server_name={self.a.server_name}",
                bt,
                {},
            )
            await asyncio.sleep(2)

    def sample(self, minute: int) -> dict[str, Any]:
        row: dict[str, Any] = {"interval": minute}
        for s in (self.a, self.b):
            assert s.proc is not None
            row[f"rss_{s.data.name}_mb"] = round(rss_kb(s.proc.pid) / 1024, 1)
            pss, procs = cluster_pss_kb(s.data / "postgres")
            row[f"pss_pg_{s.data.name}_mb"] = round(pss / 1024, 1)
            row[f"pg_{s.data.name}_processes"] = procs
        for kind, xs in self.lat.items():
            if xs:
                q = statistics.quantiles(xs, n=100, method="inclusive")
                row[kind] = {"n": len(xs), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1)}
            self.lat[kind] = []
        row["errors"], self.errors = self.errors, {}
        return row


def warm_at(rows: list[dict[str, Any]]) -> int:
    """The interval from which no cache fills any more: each cache's fill
    is within a point of where it ends (a cache whose users are fewer than
    its bound ends below it)."""
    at = 1
    for key in (k for k in rows[-1] if k.startswith("caches_")):
        for name, end in rows[-1][key].items():
            filling = [r["interval"] for r in rows if abs(r.get(key, {}).get(name, 0) - end) > 1]
            at = max(at, max(filling, default=0) + 1)
    return at


def after_warm_up(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Memory from the interval every cache is full (or steady) to the end:
    (at warm-up, at the end, lowest, highest) of each live-memory figure.
    Flat after warm-up is what the soak is for."""
    at = warm_at(rows)
    warm = [r for r in rows if r["interval"] >= at]
    out: dict[str, Any] = {"caches_steady_from_interval": at}
    if len(warm) < 2:
        out["after_warm_up"] = "too few intervals after warm-up: run longer"
        return out
    for key in rows[-1]:
        if key.startswith(("rss_", "malloc_in_use_", "py_blocks_", "pss_pg_")):
            xs = [r[key] for r in warm]
            out[key + "_after_warm_up"] = (xs[0], xs[-1], min(xs), max(xs))
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per sample")
    ap.add_argument("--pollers", type=int, default=10)
    ap.add_argument("--senders", type=int, default=4, help="per server")
    ap.add_argument(
        "--rejoiners",
        type=int,
        default=2,
        help="B users taking turns to leave and re-join (fewer: longer membership chains sooner)",
    )
    ap.add_argument("--rate", type=float, default=5.0, help="messages/s per sender")
    ap.add_argument(
        "--churn-pool",
        type=int,
        default=0,
        help="local users taking turns in the join churn (0: a new account each time)",
    )
    ap.add_argument(
        "--cache-factor",
        type=float,
        default=1.0,
        help="the servers' caches.global_factor (below 1: caches fill, and show flat, sooner)",
    )
    ap.add_argument("--out", help="also write the JSON lines here")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hs-soak-"))
    os.chmod(root, 0o755)
    a, b = Server(root, "a", args.cache_factor), Server(root, "b", args.cache_factor)
    out = open(args.out, "w") if args.out else None  # noqa: SIM115 - closed in finally
    rows: list[dict[str, Any]] = []
    try:
        a.start()
        b.start()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
            await a.ready(s)
            await b.ready(s)
            soak = Soak(a, b, s)
            a_tokens = [
                await soak.register(a, f"a{i}") for i in range(max(args.pollers, args.senders))
            ]
            # B's senders stay joined; the rejoiners leave and re-join
            b_tokens = [
                await soak.register(b, f"b{i}")
                for i in range(args.senders + max(1, args.rejoiners))
            ]
            room = (
                await soak.call(
                    None, "POST", f"{a.base}{CS}/createRoom", a_tokens[0], {"preset": "public_chat"}
                )
            )["room_id"]
            for t in a_tokens[1:]:
                await soak.call(None, "POST", f"{a.base}{CS}/join/{room}", t, {})
            for t in b_tokens:
                await soak.call(
                    None, "POST", f"{b.base}{CS}/join/{room}?server_name={a.server_name}", t, {}
                )
            tasks = [asyncio.create_task(soak.poller(t)) for t in a_tokens[: args.pollers]]
            tasks += [
                asyncio.create_task(soak.sender(a, a_tokens[k], room, k, args.rate))
                for k in range(args.senders)
            ]
            tasks += [
                asyncio.create_task(soak.sender(b, b_tokens[k], room, 100 + k, args.rate))
                for k in range(args.senders)
            ]
            tasks.append(
                asyncio.create_task(soak.churn(room, b_tokens[args.senders :], args.churn_pool))
            )
            end = time.monotonic() + args.minutes * 60
            n = 0
            while time.monotonic() < end:
                await asyncio.sleep(min(args.interval, max(0.0, end - time.monotonic())))
                n += 1
                row = soak.sample(n)
                for srv in (a, b):
                    row.update(await srv.scrape(s))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if out:
                    out.write(json.dumps(row) + "\n")
                    out.flush()
            soak.stop.set()
            await asyncio.wait(tasks, timeout=15)
            for task in tasks:
                task.cancel()
    finally:
        codes = (a.stop(), b.stop())
        if out:
            out.close()
    summary: dict[str, Any] = {"exit_codes": codes, "work_dir": str(root)}
    if len(rows) >= 2:
        for key in rows[0]:
            if key.startswith(("rss_", "pss_")):
                summary[key + "_first_last"] = (rows[0][key], rows[-1][key])
        summary.update(after_warm_up(rows))
    print(json.dumps({"summary": summary}))
    return 0 if codes == (0, 0) else 1


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM as Ctrl-C: main's ``finally`` stops both servers.
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(asyncio.run(main()))
