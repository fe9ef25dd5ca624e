"""Singleton duties across processes: a lease is a PostgreSQL session
advisory lock held on a connection of its own.

Any number of processes may serve clients on one database; duties that must
run once (sending federation transactions, the room lifecycle passes) go to
whichever process holds that duty's lease. The lock lives exactly as long as
its session: when the holder dies (even kill -9) PostgreSQL ends the session
and another process takes the lease at its next try, within ``POLL_S``.
A holder that loses its connection loses the lease at once (and says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger(__name__)

POLL_S = 1.0
_LEASE_NS = 0x6873_0002  # advisory lock namespace: "hs" + 2


class Lease:
    def __init__(
        self,
        url: str,
        duty: str,
        on_gain: Callable[[], None],
        on_lose: Callable[[], None],
        poll_s: float = POLL_S,
    ) -> None:
        self._url = url
        self.duty = duty
        self._on_gain = on_gain
        self._on_lose = on_lose
        self._poll_s = poll_s
        self.held = False

    async def run(self, stop: asyncio.Event) -> None:
        """Try for the lease until ``stop``; hold it while the session lives."""
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._url, timeout=5)
                while not stop.is_set():
                    if self.held:  # is the session (and so the lock) still there?
                        await conn.fetchval("SELECT 1")
                    elif await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))", _LEASE_NS, self.duty
                    ):
                        self.held = True
                        log.info("this process now runs the %s duty", self.duty)
                        self._on_gain()
                    await self._wait(stop)
            except Exception as e:
                # Whatever the connection raised (a reset, a terminated
                # backend, asyncpg's InternalClientError for a protocol left
                # mid-operation by a broken socket): the session, and with it
                # the lock, is gone or unusable; try again with a new one.
                if self.held:
                    log.warning(
                        "lost the %s lease with its connection (%s: %s)",
                        self.duty,
                        type(e).__name__,
                        e,
                    )
                await self._wait(stop)
            finally:
                self._drop()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)

    def _drop(self) -> None:
        if self.held:
            self.held = False
            self._on_lose()

    async def _wait(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), self._poll_s)
