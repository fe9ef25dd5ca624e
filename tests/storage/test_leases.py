"""Leases (storage/leases.py) on a real database: one holder at a time, the
lease passes on when its session ends, and whatever the connection raises
never ends the lease's loop (CI once saw asyncpg's InternalClientError —
not an InterfaceError — escape it and fail the server's shutdown)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from homeserver.storage import leases as leases_mod
from homeserver.storage.leases import Lease


async def until(cond: Any, timeout: float = 30.0) -> None:
    """Wait for ``cond()`` (a hang bound, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.02)


async def test_one_holder_and_hand_over(db_url: str) -> None:
    events: list[str] = []
    a = Lease(db_url, "test-duty", lambda: events.append("a+"), lambda: events.append("a-"), 0.05)
    b = Lease(db_url, "test-duty", lambda: events.append("b+"), lambda: events.append("b-"), 0.05)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    ta = asyncio.create_task(a.run(stop_a))
    await until(lambda: a.held)
    tb = asyncio.create_task(b.run(stop_b))
    await asyncio.sleep(0.3)
    assert a.held and not b.held
    stop_a.set()
    await ta
    await until(lambda: b.held)  # a's session ended: b takes the duty
    stop_b.set()
    await tb
    assert events == ["a+", "a-", "b+", "b-"]


async def test_any_connection_error_is_survived(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_connect = asyncpg.connect
    broken = 0

    class Flaky:
        """A real connection whose first liveness check fails the way a
        broken socket left asyncpg's protocol."""

        def __init__(self, conn: asyncpg.Connection) -> None:
            self._conn = conn

        async def fetchval(self, sql: str, *a: Any) -> Any:
            nonlocal broken
            if sql == "SELECT 1" and broken == 0:
                broken += 1
                raise asyncpg.exceptions._base.InternalClientError(
                    "cannot switch to state 12; another operation (2) is in progress"
                )
            return await self._conn.fetchval(sql, *a)

        async def close(self) -> None:
            await self._conn.close()

    async def connect(*args: Any, **kw: Any) -> Any:
        return Flaky(await real_connect(*args, **kw))

    monkeypatch.setattr(leases_mod.asyncpg, "connect", connect)
    changes: list[str] = []
    lease = Lease(
        db_url, "test-duty-2", lambda: changes.append("+"), lambda: changes.append("-"), 0.05
    )
    stop = asyncio.Event()
    task = asyncio.create_task(lease.run(stop))
    try:
        await until(lambda: broken == 1 and lease.held and changes == ["+", "-", "+"])
    except AssertionError:
        raise AssertionError(f"broken={broken} held={lease.held} changes={changes}") from None
    stop.set()
    await task  # returns: the error did not escape the loop
    assert changes == ["+", "-", "+", "-"]
