#!/usr/bin/env python3
"""Event-store benchmark (issue: event store): the cost of appending a message
in rooms of 10, 1,000 and 10,000 members, and append throughput into one
room and across 100 rooms — through the real write path (EventCreator →
Persister), against a fresh embedded PostgreSQL with fsync on.

usage: .venv/bin/python scripts/bench_store.py [--sizes 10,1000,10000] [--appends 300]
Prints one JSON object; docs/benchmarks.md records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from homeserver.core.room_versions import V12
from homeserver.services.event_creator import Draft, EventCreator
from homeserver.services.notifier import Notifier
from homeserver.services.persister import Persister
from homeserver.services.server_keys import ServerKeys, load_or_create_signing_key
from homeserver.storage.database import Database
from homeserver.storage.embedded import EmbeddedPostgres
from homeserver.storage.events import EventStore
from homeserver.storage.projections import Projections

SERVER = "bench.local"
OWNER = f"@owner:{SERVER}"


def figures(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    return {
        "n": len(lat),
        "mean_ms": round(statistics.mean(lat) * 1000, 3),
        "p50_ms": round(statistics.median(lat) * 1000, 3),
        "p95_ms": round(lat[int(len(lat) * 0.95) - 1] * 1000, 3),
    }


async def make_room(creator: EventCreator, members: int) -> str:
    room, _ = await creator.create_room(
        V12,
        [
            Draft("m.room.create", OWNER, {"room_version": "12"}, state_key=""),
            Draft("m.room.member", OWNER, {"membership": "join"}, state_key=OWNER),
            Draft("m.room.power_levels", OWNER, {"users": {}}, state_key=""),
            Draft("m.room.join_rules", OWNER, {"join_rule": "public"}, state_key=""),
        ],
    )
    users = [f"@u{i}:{SERVER}" for i in range(members - 1)]
    for i in range(0, len(users), 200):
        await creator.send(
            room,
            [
                Draft("m.room.member", u, {"membership": "join"}, state_key=u)
                for u in users[i : i + 200]
            ],
        )
    return room


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,1000,10000")
    ap.add_argument("--appends", type=int, default=300)
    ap.add_argument("--database-url")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-store-"))
    pg = None
    url = a.database_url
    if url is None:
        pg = EmbeddedPostgres(tmp / "pg")
        url = pg.start()
    db = await Database.connect(url, min_size=2, max_size=20)
    await db.apply_schema()
    keys = ServerKeys(SERVER, load_or_create_signing_key(tmp / "key"))
    store = EventStore(db)
    notifier = Notifier(url)
    await notifier.start()
    creator = EventCreator(db, store, Persister(store, Projections(db, SERVER), notifier), keys)
    out: dict[str, object] = {"fsync": await db.fetchval("SHOW fsync")}
    try:
        sizes = [int(s) for s in a.sizes.split(",")]
        for n in sizes:
            t0 = time.perf_counter()
            room = await make_room(creator, n)
            build = time.perf_counter() - t0
            lat = []
            for i in range(a.appends):
                t = time.perf_counter()
                await creator.send(
                    room, [Draft("m.room.message", OWNER, {"msgtype": "m.text", "body": f"m{i}"})]
                )
                lat.append(time.perf_counter() - t)
            out[f"append_members_{n}"] = figures(lat) | {"room_build_s": round(build, 1)}
            print(n, out[f"append_members_{n}"], file=sys.stderr, flush=True)
        small, large = out[f"append_members_{sizes[0]}"], out[f"append_members_{sizes[-1]}"]
        out["ratio_largest_smallest_mean"] = round(large["mean_ms"] / small["mean_ms"], 3)  # type: ignore[index]

        async def throughput(rooms: list[str], total: int, conc: int) -> float:
            sem = asyncio.Semaphore(conc)

            async def one(i: int) -> None:
                async with sem:
                    await creator.send(
                        rooms[i % len(rooms)],
                        [Draft("m.room.message", OWNER, {"msgtype": "m.text", "body": str(i)})],
                    )

            t = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(total)))
            return round(total / (time.perf_counter() - t), 1)

        one_room = await make_room(creator, 10)
        out["appends_per_s_one_room_conc50"] = await throughput([one_room], 2000, 50)
        print(out, file=sys.stderr, flush=True)
        many = [await make_room(creator, 2) for _ in range(100)]
        out["appends_per_s_100_rooms_conc50"] = await throughput(many, 2000, 50)
    finally:
        await notifier.stop()
        await db.close()
        if pg is not None:
            pg.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
