"""The notifier: who needs a pg_notify, and the record of local appends."""

from __future__ import annotations

import asyncio

from homeserver.services.notifier import LocalAppend, Notifier


async def test_notifies_only_when_another_process_listens(db_url: str) -> None:
    a = Notifier(db_url)
    await a.start()
    b = Notifier(db_url)
    try:
        assert a.channel is None  # alone: writers skip pg_notify
        await b.start()
        assert b.channel is not None  # b found a
        for _ in range(100):  # a hears b's hello
            if a.channel is not None:
                break
            await asyncio.sleep(0.02)
        assert a.channel is not None
        await b.stop()
        assert await a.check_others() is False
        assert a.channel is None
    finally:
        await a.stop()
        await b.stop()


def test_appends_after_accounts_for_every_position() -> None:
    n = Notifier("postgresql://unused")
    n.record_append(LocalAppend(11, 12, "!a:x", ["e11"]))  # 12 reserved, unused
    n.record_append(LocalAppend(13, 13, "!b:x", ["e13"]))
    n.record_append(LocalAppend(15, 15, "!a:x", ["e15"]))  # 14: someone else's
    upto, appends = n.appends_after(10)
    assert upto == 13 and [a.first for a in appends] == [11, 13]
    assert n.appends_after(13) == (13, [])  # 14 is unknown: read the database
    assert n.appends_after(14)[0] == 15


async def test_peer_back_up_is_heard_by_every_process(db_url: str) -> None:
    """A peer that contacts one process ends its backoff for all: the
    process holding that destination's queue hears it and resumes at once."""
    from homeserver.storage.database import Database
    from homeserver.storage.federation import FED_CHANNEL, FederationStore

    heard: list[str] = []
    a = Notifier(db_url)
    a.subscribe(FED_CHANNEL, heard.append)
    await a.start()
    db = await Database.connect(db_url, min_size=1, max_size=2)
    try:
        await db.execute(
            "INSERT INTO federation_destinations (destination, retry_after_ts, backoff_ms, "
            "failures) VALUES ('peer.test', 9999999999999, 60000, 3)"
        )
        store = FederationStore(db)
        assert await store.reset_backoff("peer.test") is True
        assert await store.reset_backoff("peer.test") is False  # not backed off any more
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == ["peer.test"]
    finally:
        await db.close()
        await a.stop()


async def test_lost_listen_connection_is_reopened_and_treated_as_a_gap(db_url: str) -> None:
    """The LISTEN session is killed (as a database restart does): the
    notifier reconnects by itself, listens on every channel again, runs the
    gap listeners and wakes every waiter to re-read."""
    import asyncpg

    from homeserver.storage.federation import FED_CHANNEL

    heard: list[str] = []
    gaps: list[int] = []
    a = Notifier(db_url)
    a.subscribe(FED_CHANNEL, heard.append)

    async def on_gap() -> None:
        gaps.append(1)

    a.add_gap_listener(on_gap)
    await a.start()
    conn = await asyncpg.connect(db_url)
    try:
        waiter = a.register(["!quiet:x"], ["@nobody:x"])
        await conn.execute("SELECT pg_terminate_backend($1)", a._pid)
        assert await asyncio.wait_for(waiter.event.wait(), 10) is True  # woken to re-read
        a.unregister(waiter)
        assert gaps == [1] and a.reconnects == 1
        # subscribed again: a notification on another channel arrives
        await conn.execute("SELECT pg_notify($1, 'peer.test')", FED_CHANNEL)
        for _ in range(200):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == ["peer.test"]
        # and the stream channel: a write announced by another process wakes
        w = a.register(["!room:x"], [])
        await conn.execute("SELECT pg_notify('hs_stream', '99 !room:x')")
        assert await asyncio.wait_for(w.event.wait(), 5) is True
        assert a.position == 99
    finally:
        await conn.close()
        await a.stop()
