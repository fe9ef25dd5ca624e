"""Stopping the federation sender lets a transaction on the wire finish: the
peer's answer is recorded and the batch is not sent again after a restart
(a cancelled PUT would leave it queued, to be sent twice)."""

from __future__ import annotations

import asyncio
from typing import Any

from homeserver.services.clock import now_ms
from homeserver.services.federation.sender import LEASE_MS, FederationSender
from homeserver.storage.database import Database
from homeserver.storage.events import EventStore
from homeserver.storage.federation import FederationStore


class SlowPeer:
    """Answers a transaction after a second."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finished = False

    async def put_json(self, destination: str, path: str, body: Any) -> dict[str, Any]:
        self.started.set()
        await asyncio.sleep(1.0)
        self.finished = True
        return {"pdus": {}}


async def sending(db: Database) -> tuple[FederationSender, FederationStore, SlowPeer]:
    """A sender with one transaction on the wire to a slow peer."""
    store = FederationStore(db)
    peer = SlowPeer()
    sender = FederationSender(store, EventStore(db), peer, "hs.test")  # type: ignore[arg-type]
    await sender.start()
    await sender.send_edu(["peer.test"], "m.receipt", {"!r:hs.test": {}})
    await asyncio.wait_for(peer.started.wait(), 10)
    return sender, store, peer


async def test_stop_lets_the_transaction_on_the_wire_finish(db: Database) -> None:
    sender, store, peer = await sending(db)
    await sender.stop(drain_s=5.0)
    assert peer.finished
    assert sender.sent == {"peer.test": 1}
    assert await store.queue_length("peer.test") == 0


async def test_stop_does_not_wait_beyond_the_drain(db: Database) -> None:
    sender, store, peer = await sending(db)
    await asyncio.wait_for(sender.stop(drain_s=0.1), 2)
    assert not peer.finished
    assert await store.queue_length("peer.test") == 1  # sent again later, not lost


class QuickPeer:
    def __init__(self) -> None:
        self.got = asyncio.Event()

    async def put_json(self, destination: str, path: str, body: Any) -> dict[str, Any]:
        self.got.set()
        return {"pdus": {}}


async def test_the_new_sender_takes_over_the_dead_senders_destination_leases(
    db: Database,
) -> None:
    """A process killed while its worker held a destination's lease (the CI
    failure of tests/ops/test_cluster.py): the process that gains the duty
    sends that destination's queue now, not when the lease runs out."""
    store = FederationStore(db)
    peer = QuickPeer()
    sender = FederationSender(store, EventStore(db), peer, "hs.test")  # type: ignore[arg-type]
    sender.active = False  # standing by, as every process starts
    await sender.start()
    now = now_ms()
    assert await store.acquire_lease("peer.test", "dead-process", now, now + LEASE_MS)
    await store.enqueue(None, [("peer.test", None, {"edu_type": "m.receipt", "content": {}})], now)
    sender.set_active(True)
    try:
        await asyncio.wait_for(peer.got.wait(), 10)  # the lease would have held 120 s
        for _ in range(50):
            if await store.queue_length("peer.test") == 0:
                break
            await asyncio.sleep(0.1)
        assert await store.queue_length("peer.test") == 0
    finally:
        await sender.stop(drain_s=1.0)


async def test_an_append_that_does_not_commit_leaves_nothing_with_the_sender(
    client: Any, app: Any
) -> None:
    """The sender's in-transaction hook notes each event's destinations for
    the wake-up after commit; a transaction that then fails to commit must
    not leave that note behind (it was kept for good: a slow leak)."""
    from homeserver.api.federation.common import FEDERATION
    from tests.helpers import CS

    fed = app[FEDERATION]
    persister = fed.ingest._persister
    alice = await client.register("alice")
    room = await alice.create_room()

    async def refuse(*_: Any) -> None:
        raise RuntimeError("the commit fails after the sender's hook")

    persister.in_transaction.append(refuse)
    try:
        await alice.call(
            "PUT", f"{CS}/rooms/{room}/state/m.room.topic/", {"topic": "lost"}, expect=500
        )
    finally:
        persister.in_transaction.remove(refuse)
    assert fed.sender._queued_now == {}
    await alice.call("PUT", f"{CS}/rooms/{room}/state/m.room.topic/", {"topic": "kept"})
    assert fed.sender._queued_now == {}
