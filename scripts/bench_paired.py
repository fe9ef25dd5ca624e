"""Paired A/B of two servers (two revisions of ours, say) on one machine.

The same workload is set up on both (mxbench's shape: 50 users, 100 private
rooms, a public room all join, 500 messages in it and 500 across the
rooms); then each request of a step is sent to both, in random order, one
request at a time, so that both share the machine's noise — on a busy VM
per-run throughput varies by tens of percent, paired latencies far less.
Prints per step the p50 on each side and A's p50 over B's (above 1: B is
faster).

usage: python scripts/bench_paired.py URL_A URL_B   (both serving, rate
limits lifted: HOMESERVER_RATE_LIMITS_ENABLED=false)
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics as st
import sys
import time
import uuid

import aiohttp


async def call(s, m, url, tok=None, body=None):
    h = {"Authorization": f"Bearer {tok}"} if tok else {}
    async with s.request(m, url, json=body, headers=h) as r:
        d = await r.json(content_type=None)
        assert r.status == 200, (url, r.status, d)
        return d


async def gather_limited(n, conc, fn):
    sem = asyncio.Semaphore(conc)

    async def one(i):
        async with sem:
            return await fn(i)

    return await asyncio.gather(*(one(i) for i in range(n)))


async def setup(s, base):
    cs = base + "/_matrix/client/v3"
    tag = uuid.uuid4().hex[:6]

    async def reg(i):
        d = await call(
            s,
            "POST",
            cs + "/register",
            body={"username": f"p{tag}u{i}", "password": "pw", "auth": {"type": "m.login.dummy"}},
        )
        return d["user_id"], d["access_token"]

    users = await gather_limited(50, 10, reg)
    alice = users[0][1]
    rooms = [
        r["room_id"]
        for r in await gather_limited(
            100,
            10,
            lambda i: call(
                s,
                "POST",
                cs + "/createRoom",
                alice,
                {"preset": "private_chat", "name": f"room {i}", "topic": "t"},
            ),
        )
    ]
    pub = (await call(s, "POST", cs + "/createRoom", alice, {"preset": "public_chat"}))["room_id"]
    await gather_limited(49, 10, lambda i: call(s, "POST", f"{cs}/join/{pub}", users[i + 1][1], {}))
    await gather_limited(
        500,
        10,
        lambda i: call(
            s,
            "PUT",
            f"{cs}/rooms/{pub}/send/m.room.message/t{i}",
            users[i % 50][1],
            {"msgtype": "m.text", "body": f"hello {i}"},
        ),
    )
    await gather_limited(
        500,
        10,
        lambda i: call(
            s,
            "PUT",
            f"{cs}/rooms/{rooms[i % 100]}/send/m.room.message/m{i}",
            alice,
            {"msgtype": "m.text", "body": f"hi {i}"},
        ),
    )
    return {"cs": cs, "alice": alice, "users": users, "rooms": rooms, "pub": pub}


async def main():
    a, b = sys.argv[1], sys.argv[2]
    async with aiohttp.ClientSession() as s:
        envs = await asyncio.gather(setup(s, a), setup(s, b))
        steps = {
            "state": (200, lambda e, i: ("GET", f"{e['cs']}/rooms/{e['pub']}/state", None)),
            "messages": (
                200,
                lambda e, i: ("GET", f"{e['cs']}/rooms/{e['pub']}/messages?dir=b&limit=50", None),
            ),
            "initial_sync": (40, lambda e, i: ("GET", f"{e['cs']}/sync?timeout=0", None)),
            "invite": (
                49,
                lambda e, i: (
                    "POST",
                    f"{e['cs']}/rooms/{e['rooms'][i]}/invite",
                    {"user_id": e["users"][i + 1][0]},
                ),
            ),
        }
        out = {}
        for name, (n, req) in steps.items():
            lat: dict[int, list[float]] = {0: [], 1: []}
            for i in range(n):
                order = [0, 1]
                random.shuffle(order)
                for k in order:
                    e = envs[k]
                    m, url, body = req(e, i)
                    t = time.perf_counter()
                    await call(s, m, url, e["alice"], body)
                    lat[k].append(time.perf_counter() - t)
            ma, mb = st.median(lat[0]) * 1000, st.median(lat[1]) * 1000
            out[name] = {
                "a_p50_ms": round(ma, 2),
                "b_p50_ms": round(mb, 2),
                "b_over_a_speed": round(ma / mb, 2),
            }
            print(name, out[name], flush=True)
        print(json.dumps(out))


asyncio.run(main())
