"""A writer killed mid-append (its process killed -9 while another process
of the homeserver runs on) leaves its stream reservation behind. Readers
must not stop at it for good: the server drops reservations whose session
is gone and /sync moves on by itself."""

from __future__ import annotations

import time

from homeserver.storage.database import Database
from tests.helpers import CS, MatrixClient


async def test_reservation_of_a_dead_writer_does_not_stop_sync(
    client: MatrixClient, db: Database
) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    first = await alice.call("GET", f"{CS}/sync?timeout=0")
    # What a writer killed between reserving and committing leaves: a
    # position reserved (the counter moved past it), marked in flight by a
    # session that no longer exists.
    dead = await db.fetchval("UPDATE stream_counter SET pos = pos + 1 WHERE id = 1 RETURNING pos")
    await db.execute("INSERT INTO stream_inflight (pos, backend_pid) VALUES ($1, 2147483000)", dead)
    await alice.send(room, "after the crash")
    t0 = time.monotonic()
    got = await alice.call("GET", f"{CS}/sync?timeout=20000&since={first['next_batch']}")
    took = time.monotonic() - t0
    events = got["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"].get("body") for e in events] == ["after the crash"]
    assert took < 10, took
    assert await db.fetchval("SELECT count(*) FROM stream_inflight") == 0
