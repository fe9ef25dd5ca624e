"""The outbound queue survives a peer being down: stop B, send 100 messages
(and 120 read receipts) on A, start B again; all 100 arrive exactly once, in
order, by themselves, in transactions of at most 50 PDUs and 100 EDUs.

And a gap B never hears of: with B down, A's queue for B is emptied; the
next event B gets cites events it lacks, which it fetches
(get_missing_events) or, past what that returns, takes the state at the gap
of (state_ids) — and ends with A's state."""

from __future__ import annotations

import re
import time
import uuid

import asyncpg

from homeserver.services.federation.sender import next_backoff_ms
from tests.federation.conftest import Pair
from tests.federation.harness import OurServer, eventually, state_map, transactions_logged


async def destination_row(server: OurServer, destination: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(server.db_url)
    try:
        return await conn.fetchrow(
            "SELECT failures, backoff_ms FROM federation_destinations WHERE destination = $1",
            destination,
        )
    finally:
        await conn.close()


def test_backoff_doubles_up_to_its_cap() -> None:
    waits = [next_backoff_ms(n, 1_000, 300_000, 0.0) for n in range(12)]
    assert waits[:5] == [1_000, 2_000, 4_000, 8_000, 16_000]
    assert max(waits) == 300_000 and waits[-1] == 300_000
    assert next_backoff_ms(10_000, 1_000, 300_000, 0.0) == 300_000
    jittered = next_backoff_ms(3, 1_000, 300_000, 0.999)
    assert 6_400 <= jittered < 8_000


async def test_peer_down_then_back_gets_everything_once_in_order(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(f"alice{uuid.uuid4().hex[:6]}")
    bob = await pair.client(pair.b).register(f"bob{uuid.uuid4().hex[:6]}")
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [pair.a.server_name])
    await alice.send(room, "warm-up")
    await eventually(lambda: bob.bodies(room), lambda b: "warm-up" in b)

    pair.b.stop()
    ids = [await alice.send(room, f"m{i:03d}") for i in range(100)]
    # 120 receipt EDUs queued too, the last one on the last message.
    for i in range(120):
        await alice.read(room, ids[(i + 80) % 100])
    row = await eventually(
        lambda: destination_row(pair.a, pair.b.server_name),
        lambda r: r is not None and r["failures"] >= 1,
    )
    assert row is not None and 0 < row["backoff_ms"] <= 300_000
    log_start = pair.b.log_path.stat().st_size
    pair.b.start()
    await pair.b.wait_ready()
    t0 = time.monotonic()

    want = [f"m{i:03d}" for i in range(100)]

    async def received() -> list[str]:
        return [b for b in await bob.bodies(room, limit=200) if b.startswith("m")]

    got = await eventually(received, lambda b: len(b) >= 100, timeout=90, interval=0.5)
    assert got == want  # exactly once, in order
    print(f"caught up {time.monotonic() - t0:.1f}s after B came back")
    await eventually(lambda: bob.read_up_to(room, alice.user_id), lambda r: ids[-1] in r)

    # Batched, within the limits: the 100 queued PDUs went as 50 + 50 and the
    # 120 receipts as at most 100 per transaction.
    txns = transactions_logged(pair.b, pair.a.server_name, log_start)
    assert max(p for _, p, _ in txns) == 50
    assert max(e for _, _, e in txns) == 100
    assert sum(p for _, p, _ in txns) >= 100
    row = await eventually(
        lambda: destination_row(pair.a, pair.b.server_name),
        lambda r: r is not None and r["failures"] == 0,
    )


async def test_a_gap_is_closed_or_its_state_fetched(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(f"alice{uuid.uuid4().hex[:6]}")
    bob = await pair.client(pair.b).register(f"bob{uuid.uuid4().hex[:6]}")
    room = await alice.create_room(preset="public_chat", name="before the gap")
    await bob.join(room, [pair.a.server_name])
    await alice.send(room, "warm-up")
    await eventually(lambda: bob.bodies(room), lambda b: "warm-up" in b)

    pair.b.stop()
    # 37 events B will never be sent: a rename early (beyond the 20 events
    # get_missing_events returns), a topic late (within them).
    await alice.put_state(room, "m.room.name", {"name": "named in the gap"})
    for i in range(30):
        await alice.send(room, f"g{i:02d}")
    await alice.put_state(room, "m.room.topic", {"topic": "topic in the gap"})
    for i in range(30, 35):
        await alice.send(room, f"g{i:02d}")
    conn = await asyncpg.connect(pair.a.db_url)
    try:
        await conn.execute(
            "DELETE FROM federation_outbox WHERE destination = $1", pair.b.server_name
        )
    finally:
        await conn.close()
    log_start = pair.b.log_path.stat().st_size
    pair.b.start()
    await pair.b.wait_ready()

    await alice.send(room, "after the gap")
    await eventually(lambda: bob.bodies(room), lambda b: "after the gap" in b, timeout=30)
    name = await bob.state_event(room, "m.room.name")
    assert name["name"] == "named in the gap"
    topic = await bob.state_event(room, "m.room.topic")
    assert topic["topic"] == "topic in the gap"
    assert state_map(await bob.state(room)) == state_map(await alice.state(room))
    # The events get_missing_events brought (g16..g34 and the topic) are in
    # B's timeline, in order, and so is the gap's edge g15, whose state B took
    # from state_ids: it is processed like any PDU, not kept as an outlier
    # that could never join the timeline.
    bodies = await bob.bodies(room, limit=40)
    assert bodies[-21:] == [f"g{i:02d}" for i in range(15, 35)] + ["after the gap"]
    conn = await asyncpg.connect(pair.b.db_url)
    try:
        outliers = await conn.fetchval(
            "SELECT count(*) FROM events WHERE room_id = $1 AND outlier "
            "AND type = 'm.room.message'",
            room,
        )
    finally:
        await conn.close()
    assert outliers == 0
    with open(pair.b.log_path, "rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    assert re.search(r"get_missing_events: 20 before", log), log
    assert re.search(r"state_ids: \d+ state events at gap", log), log
    # B's next message reaches A (its prev events are ones A knows).
    await bob.send(room, "bob after the gap")
    await eventually(lambda: alice.bodies(room), lambda b: "bob after the gap" in b)
