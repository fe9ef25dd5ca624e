"""Invite rejections owed to servers that could not be reached.

When a user rejects an invite and no server of the room answers, the leave
is made here, out of band (``RemoteRooms.leave_remote``): the user is no
longer stuck with the invite (as Synapse does since its PR 7804). Unlike
Synapse, the rejection is not forgotten: it is owed, and sent through the
same servers (``make_leave``/``send_leave``) once one of them answers —
retried with a doubling backoff, and at once when one of them contacts us
(``FederationSender.up_listeners``) — so the inviting server stops showing
the user as invited.

The leave sent then is the room's (built on its DAG by the resident); our
own out-of-band leave already says the same to our clients, so it is not
stored again. A rejection is no longer owed when the user's membership here
has moved on (a new invite, a join), when the room answers that there is
nothing to leave (403/404), when our address filter forbids its servers, or
after ``GIVE_UP_MS``.

Owns (through RejectionStore): federation_pending_rejections.
Depends on: RemoteRooms (leave_via), Projections (the user's membership).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from homeserver.core.events import Event
from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError
from homeserver.services.federation.client import FederationError
from homeserver.services.federation.joins import RemoteRooms
from homeserver.storage.projections import Projections
from homeserver.storage.rejections import PendingRejection, RejectionStore

log = logging.getLogger(__name__)

FIRST_RETRY_MS = 2_000
MAX_RETRY_MS = 30 * 60_000
GIVE_UP_MS = 7 * 24 * 3600_000
IDLE_S = 60.0


def retry_delay_ms(attempts: int) -> int:
    """The wait before attempt ``attempts + 1``: doubling from
    ``FIRST_RETRY_MS`` up to ``MAX_RETRY_MS``."""
    return int(min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** min(max(attempts, 0), 30)))


class OwedRejections:
    def __init__(
        self, store: RejectionStore, remote: RemoteRooms, projections: Projections
    ) -> None:
        self._store = store
        self._remote = remote
        self._proj = projections
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        remote.rejected_locally = self.owe

    async def owe(self, leave: Event, servers: Sequence[str], content: dict[str, Any]) -> None:
        """RemoteRooms hook: ``leave`` was made locally; the rejection is owed."""
        now = now_ms()
        await self._store.add(
            leave.sender,
            leave.room_id,
            leave.event_id,
            servers,
            content,
            now + FIRST_RETRY_MS,
            now,
        )
        log.info(
            "rejection of %s by %s owed to %s", leave.room_id, leave.sender, ", ".join(servers)
        )
        self._wake.set()

    def peer_is_up(self, server: str) -> None:
        """FederationSender listener: what is owed to ``server`` is due now."""
        if self._task is None or self._task.done():
            return

        async def due() -> None:
            try:
                if await self._store.due_now_via(server, now_ms()):
                    self._wake.set()
            except Exception:
                log.exception("marking rejections owed to %s due", server)

        asyncio.get_running_loop().create_task(due())

    # ----------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                for p in await self._store.claim_due(now_ms()):
                    await self._send(p)
                nxt = await self._store.next_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sending owed rejections failed")
                nxt = None
            wait = IDLE_S if nxt is None else max(0.05, min(IDLE_S, (nxt - now_ms()) / 1000))
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    async def _send(self, p: PendingRejection) -> None:
        m = await self._proj.membership(p.room_id, p.user_id)
        if m is None or m[1] != p.leave_event_id:
            log.info("rejection of %s by %s no longer owed", p.room_id, p.user_id)
            await self._store.remove(p)
            return
        for server in p.servers:
            try:
                ev = await self._remote.leave_via(server, p.user_id, p.room_id, p.content)
            except (FederationError, MatrixError) as e:
                if _final(e):
                    log.info("%s has nothing for %s to reject: %s", server, p.user_id, e)
                    await self._store.remove(p)
                    return
                log.info("owed rejection of %s via %s failed: %s", p.room_id, server, e)
                continue
            log.info("owed rejection of %s by %s sent via %s", p.room_id, p.user_id, server)
            log.debug("its leave there: %s", ev.event_id)
            await self._store.remove(p)
            return
        if now_ms() - p.created_ts > GIVE_UP_MS:
            log.warning("giving up the rejection of %s by %s", p.room_id, p.user_id)
            await self._store.remove(p)
            return
        await self._store.postpone(p, now_ms() + retry_delay_ms(p.attempts + 1))


def _final(e: FederationError | MatrixError) -> bool:
    """An answer that retrying will not change: the room refuses or does not
    know the user (the invite was withdrawn, the user is already out), or our
    address filter forbids the server."""
    if isinstance(e, FederationError) and e.blocked:
        return True
    return e.status in (403, 404)
