"""Backfill: older history of a room we joined late, from a resident server.

When ``/messages`` pages back past the oldest event we hold and the room
has backward extremities (prev events we never received), we ask a server
in the room for ``GET /backfill`` from those events, check each returned
PDU like any other (ingest), and store them with negative stream positions
so they sort before the room's timeline and never show up in /sync.
"""

from __future__ import annotations

import logging
import time

from homeserver.core.lru import LRU
from homeserver.services.federation.client import FederationClient, FederationError, encode_path
from homeserver.services.federation.ingest import Checked, Dropped, Ingest
from homeserver.storage.events import EventStore
from homeserver.storage.federation import FederationStore

log = logging.getLogger(__name__)

MAX_BACKFILL = 100
RETRY_EMPTY_S = 30.0  # a gap that yielded nothing is not asked again before this
MAX_FRUITLESS = 10_000  # such gaps remembered (the least recently asked forgotten)


class Backfiller:
    def __init__(
        self,
        store: EventStore,
        fstore: FederationStore,
        ingest: Ingest,
        client: FederationClient,
        server_name: str,
    ) -> None:
        self._store = store
        self._fstore = fstore
        self._ingest = ingest
        self._client = client
        self._name = server_name
        self._fruitless = LRU(MAX_FRUITLESS)  # the gap's extremities → when

    async def backfill(self, room_id: str, want: int) -> bool:
        """Fetch up to ``want`` older events of ``room_id``; True when any
        were stored."""
        gaps = await self._fstore.backward_extremities(room_id, 5)
        if not gaps:
            return False
        ids = tuple(sorted(g for g, _ in gaps))
        if time.monotonic() - self._fruitless.get(ids, -RETRY_EMPTY_S) < RETRY_EMPTY_S:
            return False
        rv = await self._store.room_version(room_id)
        if rv is None:
            return False
        servers = sorted(await self._fstore.joined_servers(None, room_id) - {self._name})
        limit = max(10, min(MAX_BACKFILL, want))
        for server in servers:
            try:
                resp = await self._client.get_json(
                    server,
                    encode_path("/_matrix/federation/v1/backfill/{}", room_id),
                    {"v": list(ids), "limit": limit},
                )
            except FederationError as e:
                log.info("backfill of %s from %s failed: %s", room_id, server, e)
                continue
            pdus = resp.get("pdus") if isinstance(resp, dict) else None
            if not isinstance(pdus, list):
                continue
            stored = await self._store_batch(server, room_id, rv, pdus)
            if stored:
                log.info("backfilled %d events of %s from %s", stored, room_id, server)
                return True
        self._fruitless.put(ids, time.monotonic())
        return False

    async def _store_batch(self, origin: str, room_id: str, rv: object, pdus: list[object]) -> int:
        checked: dict[str, Checked] = {}
        for pdu in pdus:
            try:
                c = await self._ingest.check_pdu(pdu, rv)  # type: ignore[arg-type]
            except Dropped as e:
                log.info("dropped backfilled PDU from %s: %s", origin, e)
                continue
            if c.event.room_id == room_id:
                checked[c.event.event_id] = c
        have = await self._store.have_events(checked)
        new = sorted(
            (c for eid, c in checked.items() if eid not in have),
            key=lambda c: (c.event.depth, c.event.origin_server_ts, c.event.event_id),
        )
        if not new:
            return 0
        # Older first, each below everything stored so far.
        positions = sorted(await self._fstore.backfill_positions(len(new)))
        n = 0
        async with self._ingest.room_lock(room_id):
            for c, pos in zip(new, positions, strict=True):
                try:
                    out = await self._ingest.process(
                        origin, c, fetch_missing=False, backfill_position=pos
                    )
                except FederationError as e:
                    log.info("backfilled %s could not be checked: %s", c.event.event_id, e)
                    continue
                n += 0 if out.already_known else 1
        return n
