"""Stopping the federation sender lets a transaction on the wire finish: the
peer's answer is recorded and the batch is not sent again after a restart
(a cancelled PUT would leave it queued, to be sent twice)."""

from __future__ import annotations

import asyncio
from typing import Any

from homeserver.services.federation.sender import FederationSender
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
