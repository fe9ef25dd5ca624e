"""The federation object graph, built once by app.py.

Owns: FederationClient (outgoing requests), Keyring (remote keys, request
authentication), FederationSender (outbound queue), Ingest (receipt checks),
FederationServer (served reads), RemoteRooms (our users in remote rooms),
Resident (other servers' users in our rooms), Edus, OwedRejections (invite
rejections owed to servers that were unreachable).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from homeserver.config import Config
from homeserver.services.clock import now_ms
from homeserver.services.errors import log_background_failure
from homeserver.services.federation.backfill import Backfiller
from homeserver.services.federation.client import FederationClient
from homeserver.services.federation.edus import Edus
from homeserver.services.federation.ingest import Ingest
from homeserver.services.federation.joins import RemoteRooms
from homeserver.services.federation.keyring import Keyring
from homeserver.services.federation.rejections import OwedRejections
from homeserver.services.federation.resident import Resident
from homeserver.services.federation.sender import FederationSender
from homeserver.services.federation.served import FederationServer
from homeserver.services.persister import Persister
from homeserver.services.server_keys import ServerKeys
from homeserver.storage.database import Database
from homeserver.storage.ephemeral import EphemeralStore
from homeserver.storage.events import EventStore
from homeserver.storage.federation import FederationStore
from homeserver.storage.projections import Projections
from homeserver.storage.rejections import RejectionStore

log = logging.getLogger(__name__)

RECEIVED_TXN_KEEP_MS = 24 * 3600 * 1000


@dataclass
class Federation:
    server_name: str
    store: FederationStore
    client: FederationClient
    keyring: Keyring
    sender: FederationSender
    ingest: Ingest
    served: FederationServer
    remote: RemoteRooms
    resident: Resident
    edus: Edus
    backfiller: Backfiller
    rejections: OwedRejections

    _housekeeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sender.start()
        await self.rejections.start()
        self._housekeeping = asyncio.create_task(self._prune_received_txns())

    async def stop(self, drain_s: float = 10.0) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        await self.rejections.stop()
        await self.sender.stop(drain_s)
        await self.client.close()

    async def _prune_received_txns(self) -> None:
        """Received transaction ids are kept a day for idempotency, then dropped."""
        while True:
            try:
                await self.store.prune_received_txns(now_ms() - RECEIVED_TXN_KEEP_MS)
            except Exception as e:
                log_background_failure(log, "pruning received federation transactions failed", e)
            await asyncio.sleep(3600)


def build_federation(
    config: Config,
    db: Database,
    keys: ServerKeys,
    events: EventStore,
    projections: Projections,
    persister: Persister,
    ephemeral: EphemeralStore,
    directory: Any,
    profiles: Any,
) -> Federation:
    name = keys.server_name
    store = FederationStore(db)
    client = FederationClient(
        name,
        keys.signing_key,
        verify_certificates=config.federation.verify_certificates,
        ip_filter=config.federation.ip_filter,
    )
    keyring = Keyring(store, client, keys, config.federation.trusted_key_servers)
    sender = FederationSender(store, events, client, name)
    persister.in_transaction.append(sender.on_commit_in_transaction)
    persister.on_committed.append(sender.on_committed)
    persister.on_abandoned.append(sender.on_abandoned)
    ingest = Ingest(db, events, projections, persister, keyring, client, store, name)
    served = FederationServer(events, projections, store, ingest, name, directory, profiles)
    remote = RemoteRooms(db, events, projections, ingest, client, keyring, keys, ephemeral, sender)
    resident = Resident(
        events, projections, store, ingest, served, remote, sender, keys, ephemeral, profiles
    )
    edus = Edus(ephemeral, projections, store, sender, name)
    backfiller = Backfiller(events, store, ingest, client, name)
    rejections = OwedRejections(RejectionStore(db), remote, projections)
    sender.up_listeners.append(rejections.peer_is_up)
    return Federation(
        name,
        store,
        client,
        keyring,
        sender,
        ingest,
        served,
        remote,
        resident,
        edus,
        backfiller,
        rejections,
    )
