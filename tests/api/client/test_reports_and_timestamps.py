"""Reporting content, the operator's list of reports, and /timestamp_to_event."""

from __future__ import annotations

import time

import pytest

from tests.helpers import CS, MatrixClient

ADMIN = "/_homeserver/admin/v1"
V1 = "/_matrix/client/v1"


pytestmark = pytest.mark.config({"admins": ["@admin:hs.test"]})


async def test_reports_reach_the_operator(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    outsider = await client.register("outsider")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    eid = await alice.send(room, "offensive")
    await bob.call("POST", f"{CS}/rooms/{room}/report/{eid}", {"reason": "spam", "score": -100})
    await bob.call("POST", f"{CS}/rooms/{room}/report", {"reason": "the whole room"})
    # Not visible to the reporter: 404, as reading it would be.
    private = await alice.create_room()
    hidden = await alice.send(private, "hidden")
    r = await outsider.call("POST", f"{CS}/rooms/{private}/report/{hidden}", {}, expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    await bob.call("POST", f"{CS}/rooms/{room}/report/{eid}", {"score": 5}, expect=400)
    await bob.call("POST", f"{CS}/rooms/{room}/report/{eid}", {"reason": 7}, expect=400)
    await bob.call("POST", f"{CS}/rooms/!nowhere:hs.test/report", {}, expect=404)
    # Only operators read them.
    await bob.call("GET", f"{ADMIN}/reports", expect=403)
    admin = await client.register("admin")
    out = await admin.call("GET", f"{ADMIN}/reports")
    assert out["total"] == 2
    newest, oldest = out["reports"]
    assert newest["room_id"] == room and "event_id" not in newest
    assert newest["reason"] == "the whole room" and newest["user_id"] == bob.user_id
    assert oldest["event_id"] == eid and oldest["score"] == -100 and oldest["reason"] == "spam"
    page = await admin.call("GET", f"{ADMIN}/reports?limit=1")
    assert len(page["reports"]) == 1 and page["next_token"] == 1


async def test_timestamp_to_event(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room()
    before = int(time.time() * 1000)
    first = await alice.send(room, "one")
    second = await alice.send(room, "two")
    r = await alice.call("GET", f"{V1}/rooms/{room}/timestamp_to_event?ts={before}&dir=f")
    assert r["event_id"] == first and r["origin_server_ts"] >= before
    far = before + 10**9
    r = await alice.call("GET", f"{V1}/rooms/{room}/timestamp_to_event?ts={far}&dir=b")
    assert r["event_id"] == second
    r = await alice.call("GET", f"{V1}/rooms/{room}/timestamp_to_event?ts={far}&dir=f", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    for q in ("ts=1", "dir=f", "ts=x&dir=f", "ts=1&dir=up", "ts=-5&dir=f"):
        await alice.call("GET", f"{V1}/rooms/{room}/timestamp_to_event?{q}", expect=400)
    bob = await client.register("bob")
    await bob.call("GET", f"{V1}/rooms/{room}/timestamp_to_event?ts=0&dir=f", expect=403)
