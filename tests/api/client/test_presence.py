"""Presence: set, read, and seen in /sync by those who share a room."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import CS, MatrixClient


def presence_of(sync: dict[str, Any], user_id: str) -> dict[str, Any] | None:
    found = [e for e in sync["presence"]["events"] if e["sender"] == user_id]
    return found[-1]["content"] if found else None


async def test_presence_set_read_and_synced(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    await alice.call(
        "PUT",
        f"{CS}/presence/{alice.user_id}/status",
        {"presence": "unavailable", "status_msg": "lunch"},
    )
    got = await bob.call("GET", f"{CS}/presence/{alice.user_id}/status")
    assert got["presence"] == "unavailable" and got["status_msg"] == "lunch"
    assert got["last_active_ago"] >= 0
    # Someone who shares no room: refused; an unknown local user: 404.
    await carol.call("GET", f"{CS}/presence/{alice.user_id}/status", expect=403)
    await carol.call("GET", f"{CS}/presence/@nobody:hs.test/status", expect=404)
    # Only one's own.
    await bob.call(
        "PUT", f"{CS}/presence/{alice.user_id}/status", {"presence": "online"}, expect=403
    )
    await alice.call(
        "PUT", f"{CS}/presence/{alice.user_id}/status", {"presence": "away"}, expect=400
    )

    first = await bob.call("GET", f"{CS}/sync?set_presence=offline")
    assert presence_of(first, alice.user_id)["status_msg"] == "lunch"  # type: ignore[index]
    assert presence_of(first, carol.user_id) is None
    # A long-poll is woken by a change of alice's presence.
    since = first["next_batch"]

    async def later() -> None:
        await asyncio.sleep(0.3)
        await alice.call("PUT", f"{CS}/presence/{alice.user_id}/status", {"presence": "online"})

    task = asyncio.create_task(later())
    woke = await bob.call("GET", f"{CS}/sync?since={since}&timeout=10000&set_presence=offline")
    await task
    content = presence_of(woke, alice.user_id)
    assert content is not None and content["presence"] == "online"
    assert "status_msg" not in content  # a PUT without one clears it (as Synapse)


async def test_sync_marks_online_unless_told_otherwise(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    await alice.call("GET", f"{CS}/sync?set_presence=offline")
    r = await bob.call("GET", f"{CS}/presence/{alice.user_id}/status")
    assert r["presence"] == "offline"  # never seen
    await alice.call("GET", f"{CS}/sync")  # default: online
    r = await bob.call("GET", f"{CS}/presence/{alice.user_id}/status")
    assert r["presence"] == "online" and r["currently_active"] is True
    await alice.call("GET", f"{CS}/sync?set_presence=unavailable")
    r = await bob.call("GET", f"{CS}/presence/{alice.user_id}/status")
    assert r["presence"] == "unavailable"
    await alice.call("GET", f"{CS}/sync?set_presence=busy", expect=400)
