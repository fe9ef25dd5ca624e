"""Room tags (m.tag account data)."""

from __future__ import annotations

import asyncio

from tests.helpers import CS, MatrixClient


async def test_tags_add_list_remove_and_sync(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    base = f"{CS}/user/{alice.user_id}/rooms/{room}/tags"
    assert await alice.call("GET", base) == {"tags": {}}
    await alice.call("PUT", f"{base}/m.favourite", {"order": 0.25})
    await alice.call("PUT", f"{base}/u.work", {})
    # Concurrent changes do not lose each other.
    await asyncio.gather(*(alice.call("PUT", f"{base}/u.t{i}", {}) for i in range(10)))
    tags = (await alice.call("GET", base))["tags"]
    assert tags["m.favourite"] == {"order": 0.25} and "u.work" in tags
    assert {f"u.t{i}" for i in range(10)} <= tags.keys()
    await alice.call("DELETE", f"{base}/u.work")
    tags = (await alice.call("GET", base))["tags"]
    assert "u.work" not in tags and "m.favourite" in tags
    sync = await alice.call("GET", f"{CS}/sync")
    events = sync["rooms"]["join"][room]["account_data"]["events"]
    (tag_event,) = [e for e in events if e["type"] == "m.tag"]
    assert tag_event["content"]["tags"] == tags
    # The same data through the account data API.
    same = await alice.call("GET", f"{CS}/user/{alice.user_id}/rooms/{room}/account_data/m.tag")
    assert same["tags"] == tags


async def test_tag_refusals(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room()
    base = f"{CS}/user/{alice.user_id}/rooms/{room}/tags"
    await bob.call("GET", base, expect=403)
    await bob.call("PUT", f"{base}/u.x", {}, expect=403)
    r = await alice.call("PUT", f"{base}/u.x", {"order": 2}, expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    await alice.call("PUT", f"{base}/u.x", {"order": "first"}, expect=400)
    await alice.call("PUT", f"{base}/{'x' * 300}", {}, expect=400)
    assert await alice.call("GET", base) == {"tags": {}}
