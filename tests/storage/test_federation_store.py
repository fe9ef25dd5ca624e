"""Federation's own tables."""

from __future__ import annotations

from homeserver.storage.database import Database
from homeserver.storage.federation import FederationStore


async def test_received_transactions_are_pruned_by_age(db: Database) -> None:
    store = FederationStore(db)
    await store.store_received_txn("old.test", "t1", {"pdus": {"$a": {}}}, 1_000)
    await store.store_received_txn("new.test", "t1", {"pdus": {}}, 5_000)
    assert await store.received_txn("old.test", "t1") == {"pdus": {"$a": {}}}
    assert await store.prune_received_txns(2_000) == 1
    assert await store.received_txn("old.test", "t1") is None
    assert await store.received_txn("new.test", "t1") == {"pdus": {}}
    assert await store.prune_received_txns(2_000) == 0
