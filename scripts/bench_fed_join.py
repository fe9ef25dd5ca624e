"""Federation join benchmark (issue 8): our user joins a Synapse room that
already has MEMBERS members and EVENTS events.

usage: bench_fed_join.py OURS_BASE SYNAPSE_BASE [--members 200] [--events 2000]
(``scripts/bench --fed-join`` starts both servers and runs this.)

Builds ROOMS such rooms on Synapse (room version 12), then times, from our
server's client API, one cold join into each (by alias and by room id with
``server_name``, alternately) and a rejoin of the first room after leaving
it. After each join it checks that both servers report the same state and
joined members and that a message goes each way (``then_agree_s``: how
long after the join returned that took). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.federation.harness import Client, eventually, q, state_map


async def gather_limited(n: int, conc: int, fn: Any) -> list[Any]:
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> Any:
        async with sem:
            return await fn(i)

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def build_room(
    s: aiohttp.ClientSession, base: str, name: str, members: int, events: int, conc: int
) -> tuple[str, str, Client, float]:
    """A public v12 room on Synapse with ``members`` joined users and about
    ``events`` events; returns (room id, alias, owner, seconds taken)."""
    t0 = time.perf_counter()
    tag = uuid.uuid4().hex[:6]
    owner = await Client(s, base, name).register(f"owner{tag}")
    alias_local = f"big{tag}"
    room = await owner.create_room(
        preset="public_chat", room_version="12", room_alias_name=alias_local, name="big room"
    )
    users = await gather_limited(
        members - 1, conc, lambda i: Client(s, base, name).register(f"m{tag}u{i}")
    )
    await gather_limited(len(users), conc, lambda i: users[i].join(room))
    everyone = [owner, *users]
    state_every = 20  # one state change (topic) in twenty events

    async def one(i: int) -> None:
        u = everyone[i % len(everyone)]
        if i % state_every == 0:
            await owner.put_state(room, "m.room.topic", {"topic": f"topic {i}"})
        else:
            await u.send(room, f"message {i} {random.random()}")

    # createRoom with a preset, alias and name writes 7 events; each join one.
    await gather_limited(max(0, events - members - 6), conc, one)
    return room, f"#{alias_local}:{name}", owner, time.perf_counter() - t0


async def same_view(ours: Client, theirs: Client, room: str) -> None:
    want = state_map(await theirs.state(room))
    await eventually(lambda: ours.state(room), lambda st: state_map(st) == want, timeout=60)
    assert await ours.joined_members(room) == await theirs.joined_members(room)


async def check_flow(ours: Client, theirs: Client, room: str) -> None:
    """Both servers agree, and a message goes each way."""
    await same_view(ours, theirs, room)
    mine = f"from ours {uuid.uuid4().hex[:6]}"
    await ours.send(room, mine)
    await eventually(lambda: theirs.bodies(room, 20), lambda b: mine in b, timeout=60)
    back = f"from synapse {uuid.uuid4().hex[:6]}"
    await theirs.send(room, back)
    await eventually(lambda: ours.bodies(room, 20), lambda b: back in b, timeout=60)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ours")
    ap.add_argument("synapse")
    ap.add_argument("--members", type=int, default=200)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--conc", type=int, default=10)
    ap.add_argument("--rooms", type=int, default=3, help="rooms built, one cold join each")
    a = ap.parse_args()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        ours_name = (await Client(s, a.ours, "").register("probe" + uuid.uuid4().hex[:6])).user_id
        ours_name = ours_name.split(":", 1)[1]
        syn_probe = await Client(s, a.synapse, "").register("probe" + uuid.uuid4().hex[:6])
        syn_name = syn_probe.user_id.split(":", 1)[1]
        out: dict[str, Any] = {"members": a.members, "events_requested": a.events}
        rooms = [
            await build_room(s, a.synapse, syn_name, a.members, a.events, a.conc)
            for _ in range(a.rooms)
        ]
        out["build_room_s"] = [round(r[3], 1) for r in rooms]
        out["room_events_about"] = max(a.events, a.members + 6)
        cold: list[dict[str, Any]] = []
        joiners: list[Client] = []
        for i, (room, alias, owner, _) in enumerate(rooms):
            u = await Client(s, a.ours, ours_name).register("joiner" + uuid.uuid4().hex[:6])
            t0 = time.perf_counter()
            if i % 2 == 0:
                await u.join(alias)
                how = "alias"
            else:
                path = f"/_matrix/client/v3/join/{q(room)}?server_name={q(syn_name)}"
                await u.call("POST", path, {})
                how = "room id"
            took = time.perf_counter() - t0
            t1 = time.perf_counter()
            await check_flow(u, owner, room)
            cold.append(
                {
                    "by": how,
                    "join_s": round(took, 3),
                    "then_agree_s": round(time.perf_counter() - t1, 3),
                }
            )
            joiners.append(u)
        out["cold_joins"] = cold
        out["cold_join_median_s"] = round(statistics.median(c["join_s"] for c in cold), 3)

        room, _alias, owner, _ = rooms[0]
        u = joiners[0]
        await u.membership(room, "leave")
        await eventually(
            lambda: owner.joined_members(room), lambda m: u.user_id not in m, timeout=60
        )
        t0 = time.perf_counter()
        await u.join(room, [syn_name])
        out["rejoin_s"] = round(time.perf_counter() - t0, 3)
        await check_flow(u, owner, room)
        out["members_after_join"] = len(await u.joined_members(room))
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
