#!/usr/bin/env python3
"""Push-rule evaluation cost (issue 17): a room of N local members (default
500), every member with the default rules, against a fresh embedded
PostgreSQL (fsync on), through the real services of ``create_app``.

Measures
  evaluate_cpu      the compiled evaluator alone: one event for every member
                    (rules compiled and room context cached), per event and
                    per (event, member)
  catch_up_batch    each member's first count after ``--events`` messages:
                    the read-time evaluation of all of them, stored, then
                    counted (what the first /sync after a quiet spell does)
  catch_up_one      steady state: one new message, then every member's count
                    (what each member's next /sync does), per event
  send              message send latency in that room (unchanged path)

usage: .venv/bin/python scripts/bench_push.py [--members 500] [--events 200]
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

from aiohttp import web

from homeserver.api import appkeys
from homeserver.app import create_app
from homeserver.config import load_config
from homeserver.storage.database import Database
from homeserver.storage.embedded import EmbeddedPostgres

SERVER = "bench.local"


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=500)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hs-bench-push-"))
    pg = EmbeddedPostgres(tmp / "pg")
    url = pg.start()
    db = await Database.connect(url, min_size=2, max_size=20)
    await db.apply_schema()
    config = load_config(
        None, overrides={"server_name": SERVER, "data_dir": str(tmp / "data")}, environ={}
    )
    app = create_app(config, db)
    runner = web.AppRunner(app)
    await runner.setup()
    out: dict[str, object] = {"members": a.members, "fsync": await db.fetchval("SHOW fsync")}
    try:
        owner = f"@owner:{SERVER}"
        room = await app[appkeys.ROOM_CREATION].create_room(
            owner, {"preset": "public_chat", "name": "bench"}
        )
        users = [f"@u{i}:{SERVER}" for i in range(a.members - 1)]
        membership = app[appkeys.MEMBERSHIP]
        for u in users:
            await membership.join(u, room, extra={"displayname": f"User {u[2:6]}"})
        messages = app[appkeys.MESSAGES]
        push = app[appkeys.PUSH]
        store = push._events  # the EventStore, for positions

        async def send(i: int, body: str | None = None) -> float:
            content = {"msgtype": "m.text", "body": body or f"message {i}"}
            t = time.perf_counter()
            await messages.send(owner, "DEV", room, "m.room.message", content, f"t{i}")
            return time.perf_counter() - t

        # catch_up_batch: --events messages (every tenth mentions u1 by name)
        lat = [
            await send(i, f"hello User u1 {i}" if i % 10 == 0 else None) for i in range(a.events)
        ]
        out["send"] = {"p50_ms": ms(statistics.median(lat)), "mean_ms": ms(statistics.mean(lat))}
        upto = await store.current_position()
        t = time.perf_counter()
        for u in users:
            await push.counts(u, [room], upto)
        batch = time.perf_counter() - t
        out["catch_up_batch"] = {
            "events": a.events,
            "total_s": round(batch, 3),
            "per_event_all_members_ms": ms(batch / a.events),
            "per_event_member_us": round(batch / a.events / len(users) * 1e6, 2),
        }
        counts = await push.counts(users[1], [room], upto)
        out["check_u1_counts"] = {
            t: [c.notifications, c.highlights] for t, c in counts[room].items()
        }

        # evaluate_cpu: the compiled evaluator alone
        last = (await store.events_by_stream([room], upto - 1, upto))[-1]
        group = await push._group(last.state_group)
        sets = [await push._ruleset(u, 0) for u in users]
        t = time.perf_counter()
        reps = 20
        for _ in range(reps):
            memo: dict[str, bool] = {}  # one per event, shared by members
            for u, rs in zip(users, sets, strict=True):
                rs.evaluator.actions(last.event, group.context(u), memo)
        cpu = (time.perf_counter() - t) / reps
        out["evaluate_cpu"] = {
            "per_event_all_members_ms": ms(cpu),
            "per_event_member_us": round(cpu / len(users) * 1e6, 2),
        }

        # catch_up_one: one message, then everyone's count
        per_event = []
        for r in range(a.rounds):
            await send(a.events + r)
            upto = await store.current_position()
            t = time.perf_counter()
            for u in users:
                await push.counts(u, [room], upto)
            per_event.append(time.perf_counter() - t)
        out["catch_up_one"] = {
            "per_event_all_members_ms": ms(statistics.median(per_event)),
            "per_member_ms": ms(statistics.median(per_event) / len(users)),
        }
        print(out, file=sys.stderr, flush=True)
    finally:
        await runner.cleanup()
        await db.close()
        pg.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
