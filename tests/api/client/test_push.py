"""Push rules over HTTP (/pushrules), the counts they give in /sync after
receipts (per thread too), /notifications and pushers."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import quote

import pytest

from homeserver.storage import push as push_storage
from homeserver.storage.database import Database
from tests.api.client.test_sync_features import public_room_with, sync
from tests.helpers import CS, MatrixClient, User

PR = f"{CS}/pushrules/global"


def counts(s: dict[str, Any], room: str) -> tuple[int, int]:
    u = s["rooms"]["join"][room]["unread_notifications"]
    return u["notification_count"], u["highlight_count"]


def mention(user: User, body: str = "hey") -> dict[str, Any]:
    return {"msgtype": "m.text", "body": body, "m.mentions": {"user_ids": [user.user_id]}}


async def test_get_rules_has_the_defaults(client: MatrixClient) -> None:
    alice = await client.register("alice")
    for path in (f"{CS}/pushrules/", f"{CS}/pushrules"):
        rules = (await alice.call("GET", path))["global"]
        assert set(rules) == {"override", "content", "room", "sender", "underride"}
    assert rules["override"][0]["rule_id"] == ".m.rule.master"
    assert rules["override"][0]["enabled"] is False
    ids = [r["rule_id"] for r in rules["override"]]
    assert ids.index(".m.rule.is_user_mention") < ids.index(".m.rule.contains_display_name")
    assert rules["content"][0]["pattern"] == "alice"
    assert [r["rule_id"] for r in rules["underride"]][-2:] == [
        ".m.rule.message",
        ".m.rule.encrypted",
    ]
    g = await alice.call("GET", f"{PR}/")
    assert g == rules
    one = await alice.call("GET", f"{PR}/underride/.m.rule.message")
    assert one == {
        "rule_id": ".m.rule.message",
        "default": True,
        "enabled": True,
        "conditions": [{"kind": "event_match", "key": "type", "pattern": "m.room.message"}],
        "actions": ["notify"],
    }
    assert await alice.call("GET", f"{PR}/override/.m.rule.master/enabled") == {"enabled": False}
    # The initial sync carries them as m.push_rules account data (as Synapse).
    s = await sync(alice)
    (ad,) = [e for e in s["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert ad["content"]["global"] == rules
    assert not [e for e in (await sync(alice, s["next_batch"]))["account_data"]["events"]]


async def test_put_order_enable_actions_delete(client: MatrixClient) -> None:
    alice = await client.register("alice")
    s = await sync(alice)
    await alice.call("PUT", f"{PR}/content/cake", {"pattern": "cake", "actions": ["notify"]})
    await alice.call(
        "PUT", f"{PR}/content/pie?before=cake", {"pattern": "pie", "actions": ["notify"]}
    )
    await alice.call("PUT", f"{PR}/content/tart?after=pie", {"pattern": "tart", "actions": []})
    content = (await alice.call("GET", f"{PR}/"))["content"]
    assert [r["rule_id"] for r in content] == ["pie", "tart", "cake", ".m.rule.contains_user_name"]
    await alice.call("PUT", f"{PR}/content/cake/enabled", {"enabled": False})
    await alice.call(
        "PUT", f"{PR}/content/cake/actions", {"actions": ["notify", {"set_tweak": "highlight"}]}
    )
    cake = await alice.call("GET", f"{PR}/content/cake")
    assert cake["enabled"] is False
    assert cake["actions"] == ["notify", {"set_tweak": "highlight"}]
    # Defaults: enabled and actions change, but they cannot be replaced or deleted.
    await alice.call("PUT", f"{PR}/override/.m.rule.master/enabled", {"enabled": True})
    assert (await alice.call("GET", f"{PR}/override/.m.rule.master"))["enabled"] is True
    await alice.call("PUT", f"{PR}/underride/.m.rule.message/actions", {"actions": []})
    assert (await alice.call("GET", f"{PR}/underride/.m.rule.message/actions")) == {"actions": []}
    # Changes reach clients as m.push_rules account data.
    s2 = await sync(alice, s["next_batch"])
    (pr_event,) = [e for e in s2["account_data"]["events"] if e["type"] == "m.push_rules"]
    assert [r["rule_id"] for r in pr_event["content"]["global"]["content"]][:3] == [
        "pie",
        "tart",
        "cake",
    ]
    await alice.call("DELETE", f"{PR}/content/pie")
    await alice.call("GET", f"{PR}/content/pie", expect=404)
    # Room and sender rules take their ids from the path.
    room = await alice.create_room()
    await alice.call("PUT", f"{PR}/room/{quote(room)}", {"actions": []})
    assert (await alice.call("GET", f"{PR}/room/{quote(room)}"))["rule_id"] == room


async def test_push_rule_refusals(client: MatrixClient) -> None:
    alice = await client.register("alice")
    ok = {"actions": ["notify"], "pattern": "x"}
    for path, body, status, code in [
        (f"{PR}/content/.mine", ok, 400, "M_INVALID_PARAM"),
        (f"{PR}/nonsense/x", ok, 400, "M_INVALID_PARAM"),
        (f"{CS}/pushrules/device/content/x", ok, 400, "M_INVALID_PARAM"),
        (f"{PR}/content/x", {"actions": ["notify"]}, 400, "M_MISSING_PARAM"),
        (f"{PR}/content/x", {"pattern": "x"}, 400, "M_MISSING_PARAM"),
        (f"{PR}/content/x", {"pattern": "x", "actions": ["explode"]}, 400, "M_INVALID_PARAM"),
        (f"{PR}/content/x", {"pattern": "x", "actions": [5]}, 400, "M_INVALID_PARAM"),
        (f"{PR}/override/x", {"actions": [], "conditions": [1]}, 400, "M_INVALID_PARAM"),
        (f"{PR}/room/not-a-room", {"actions": []}, 400, "M_INVALID_PARAM"),
        (f"{PR}/sender/nobody", {"actions": []}, 400, "M_INVALID_PARAM"),
        (f"{PR}/content/x?before=missing", ok, 404, "M_NOT_FOUND"),
        (f"{PR}/content/x?after=.m.rule.contains_user_name", ok, 400, "M_INVALID_PARAM"),
        (f"{PR}/override/.m.rule.nope/enabled", {"enabled": True}, 404, "M_NOT_FOUND"),
        (f"{PR}/override/.m.rule.master/enabled", {"enabled": "yes"}, 400, "M_BAD_JSON"),
        (f"{PR}/override/.m.rule.master/actions", {"actions": "notify"}, 400, "M_BAD_JSON"),
        (f"{PR}/content/unknown/enabled", {"enabled": True}, 404, "M_NOT_FOUND"),
        (f"{PR}/content/{'x' * 256}", ok, 400, "M_INVALID_PARAM"),
        (f"{PR}/content/x", {"actions": [], "pattern": "p" * 1001}, 400, "M_INVALID_PARAM"),
        (
            f"{PR}/override/x",
            {"actions": [], "conditions": [{"kind": "k"}] * 21},
            400,
            "M_INVALID_PARAM",
        ),
    ]:
        r = await alice.call("PUT", path, body, expect=status)
        assert r["errcode"] == code, (path, body, r)
    assert (await alice.call("DELETE", f"{PR}/content/nope", expect=404))[
        "errcode"
    ] == "M_NOT_FOUND"
    r = await alice.call("DELETE", f"{PR}/override/.m.rule.master", expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    await alice.call("GET", f"{PR}/override/missing", expect=404)
    await client.call("GET", f"{CS}/pushrules/", expect=401)


async def test_counts_and_highlights_after_receipts(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    s = await sync(alice)
    assert counts(s, room) == (0, 0)
    plain = await bob.send(room, "hello")
    mentioned = await bob.send(room, content=mention(alice))
    await bob.send(room, content={"msgtype": "m.notice", "body": "bot"})  # suppressed
    await bob.send(room, type="m.reaction", content={})  # suppressed
    by_name = await bob.send(room, "ping alice please")  # contains_user_name
    await alice.send(room, "my own")  # never counts
    last = await bob.send(room, "last")
    s1 = await sync(alice, s["next_batch"])
    assert counts(s1, room) == (4, 2)
    assert counts(await sync(alice), room) == (4, 2)  # initial sync: the same
    await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{plain}", {})
    s2 = await sync(alice, s1["next_batch"])
    assert counts(s2, room) == (3, 2)
    await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read.private/{mentioned}", {})
    s3 = await sync(alice, s2["next_batch"])
    assert counts(s3, room) == (2, 1)
    await alice.call("POST", f"{CS}/rooms/{room}/read_markers", {"m.read": by_name})
    assert counts(await sync(alice, s3["next_batch"]), room) == (1, 0)
    await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{last}", {})
    assert counts(await sync(alice), room) == (0, 0)


async def test_user_rules_change_counts(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    await alice.call("PUT", f"{PR}/room/{quote(room)}", {"actions": []})
    await alice.call(
        "PUT",
        f"{PR}/content/cake",
        {"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]},
    )
    await bob.send(room, "muted room")
    await bob.send(room, "but cake wins")  # content rules come before room rules
    assert counts(await sync(alice), room) == (1, 1)
    # The master rule silences everything.
    await alice.call("PUT", f"{PR}/override/.m.rule.master/enabled", {"enabled": True})
    await bob.send(room, "cake again")
    assert counts(await sync(alice), room) == (1, 1)


async def test_per_thread_counts_and_threaded_receipts(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    root = await alice.send(room, "root")
    s = await sync(alice)

    def reply(body: str) -> dict[str, Any]:
        return {
            "msgtype": "m.text",
            "body": body,
            "m.relates_to": {"rel_type": "m.thread", "event_id": root},
        }

    await bob.send(room, "main 1")
    t1 = await bob.send(room, content=reply("thread 1"))
    await bob.send(room, content={**reply("thread 2"), "m.mentions": {"user_ids": [alice.user_id]}})
    threaded = {"room": {"timeline": {"unread_thread_notifications": True}}}
    s1 = await sync(alice, s["next_batch"], filter=threaded)
    entry = s1["rooms"]["join"][room]
    assert entry["unread_notifications"] == {"notification_count": 1, "highlight_count": 0}
    assert entry["unread_thread_notifications"] == {
        root: {"notification_count": 2, "highlight_count": 1}
    }
    # Without the filter flag: one total, no per-thread part.
    plain = (await sync(alice))["rooms"]["join"][room]
    assert plain["unread_notifications"] == {"notification_count": 3, "highlight_count": 1}
    assert "unread_thread_notifications" not in plain
    # A receipt in the thread reads only the thread, up to where it points.
    await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{t1}", {"thread_id": root})
    entry = (await sync(alice, filter=threaded))["rooms"]["join"][room]
    assert entry["unread_notifications"]["notification_count"] == 1
    assert entry["unread_thread_notifications"][root] == {
        "notification_count": 1,
        "highlight_count": 1,
    }
    # A main-timeline receipt leaves the thread alone.
    last_main = await bob.send(room, "main 2")
    await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{last_main}", {"thread_id": "main"})
    entry = (await sync(alice, filter=threaded))["rooms"]["join"][room]
    assert entry["unread_notifications"]["notification_count"] == 0
    assert entry["unread_thread_notifications"][root]["notification_count"] == 1


async def test_long_poll_counts_a_mention(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    await bob.send(room, "warm up")
    s = await sync(alice)
    poll = asyncio.create_task(sync(alice, s["next_batch"], timeout="10000"))
    await asyncio.sleep(0.1)
    await bob.send(room, content=mention(alice))
    woken = await asyncio.wait_for(poll, 5)
    assert counts(woken, room) == (2, 1)
    assert counts(await sync(alice, s["next_batch"]), room) == (2, 1)


async def test_notifications_list(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    first = await bob.send(room, "one")
    second = await bob.send(room, content=mention(alice, "two"))
    third = await bob.send(room, "three")
    await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{first}", {})
    out = await alice.call("GET", f"{CS}/notifications")
    got = out["notifications"]
    assert [n["event"]["event_id"] for n in got] == [third, second, first]
    assert [n["read"] for n in got] == [False, False, True]
    # (two members: .m.rule.room_one_to_one, with a sound)
    assert got[0]["room_id"] == room
    assert got[0]["actions"] == ["notify", {"set_tweak": "sound", "value": "default"}]
    assert {"set_tweak": "highlight"} in got[1]["actions"]
    assert got[1]["event"]["content"]["body"] == "two"
    assert isinstance(got[0]["ts"], int)
    only = await alice.call("GET", f"{CS}/notifications?only=highlight")
    assert [n["event"]["event_id"] for n in only["notifications"]] == [second]
    page1 = await alice.call("GET", f"{CS}/notifications?limit=2")
    assert [n["event"]["event_id"] for n in page1["notifications"]] == [third, second]
    page2 = await alice.call("GET", f"{CS}/notifications?limit=2&from={page1['next_token']}")
    assert [n["event"]["event_id"] for n in page2["notifications"]] == [first]
    assert "next_token" not in page2
    for q in ("from=abc", "only=everything", "limit=x"):
        r = await alice.call("GET", f"{CS}/notifications?{q}", expect=400)
        assert r["errcode"] == "M_INVALID_PARAM"


PUSHER = {
    "pushkey": "key1",
    "kind": "http",
    "app_id": "org.example.app",
    "app_display_name": "Example",
    "device_display_name": "Phone",
    "lang": "en",
    "data": {"url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only"},
}


async def test_pushers_stored_listed_and_removed(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    assert await alice.call("GET", f"{CS}/pushers") == {"pushers": []}
    await alice.call("POST", f"{CS}/pushers/set", PUSHER)
    await alice.call("POST", f"{CS}/pushers/set", {**PUSHER, "device_display_name": "Tablet"})
    (p,) = (await alice.call("GET", f"{CS}/pushers"))["pushers"]
    assert p["device_display_name"] == "Tablet" and p["data"] == PUSHER["data"]
    assert p["pushkey"] == "key1" and p["kind"] == "http"
    # The same pushkey for another user, without append, takes it over.
    await bob.call("POST", f"{CS}/pushers/set", PUSHER)
    assert (await alice.call("GET", f"{CS}/pushers"))["pushers"] == []
    await alice.call("POST", f"{CS}/pushers/set", {**PUSHER, "append": True})
    assert len((await bob.call("GET", f"{CS}/pushers"))["pushers"]) == 1
    assert len((await alice.call("GET", f"{CS}/pushers"))["pushers"]) == 1
    await alice.call("POST", f"{CS}/pushers/set", {**PUSHER, "kind": None})
    assert (await alice.call("GET", f"{CS}/pushers"))["pushers"] == []
    for bad, code in [
        ({**PUSHER, "data": {}}, "M_MISSING_PARAM"),
        ({**PUSHER, "data": {"url": "https://push.example.org/other"}}, "M_INVALID_PARAM"),
        ({**PUSHER, "kind": "email"}, "M_INVALID_PARAM"),
        ({k: x for k, x in PUSHER.items() if k != "lang"}, "M_MISSING_PARAM"),
        ({**PUSHER, "app_id": 5}, "M_BAD_JSON"),
        ({**PUSHER, "append": "yes"}, "M_BAD_JSON"),
    ]:
        r = await alice.call("POST", f"{CS}/pushers/set", bad, expect=400)
        assert r["errcode"] == code, (bad, r)


async def _recount(db: Database, user_id: str, room: str) -> dict[str, tuple[int, int]]:
    """The counts by their definition, from every notification row: after
    the furthest receipt of the row's thread or an unthreaded one."""
    rows = await db.fetch(
        """
        WITH rc AS (
            SELECT r.thread_id, max(e.stream_ordering) AS pos
            FROM receipts r JOIN events e ON e.event_id = r.event_id
            WHERE r.user_id = $1 AND r.room_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private')
            GROUP BY r.thread_id
        )
        SELECT p.thread_id, count(*) AS n, count(*) FILTER (WHERE p.highlight) AS h
        FROM push_actions p
        WHERE p.user_id = $1 AND p.room_id = $2
          AND p.stream_ordering > GREATEST(
              COALESCE((SELECT pos FROM rc WHERE rc.thread_id = ''), 0),
              COALESCE((SELECT pos FROM rc WHERE rc.thread_id = p.thread_id), 0))
        GROUP BY p.thread_id
        """,
        user_id,
        room,
    )
    return {r["thread_id"]: (int(r["n"]), int(r["h"])) for r in rows}


@pytest.mark.parametrize("seed", [1, 2])
async def test_counts_from_summaries_agree_with_every_row(
    client: MatrixClient, db: Database, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """A user who never reads a busy room: counts are materialised every few
    notifications (push_summary) so a /sync reads only what came since.
    Random messages (main timeline and two threads, some mentions) and
    receipts (unthreaded, main, per thread, some pointing back): after each
    step /sync's counts are the ones recounted from every row."""
    monkeypatch.setattr(push_storage, "SUMMARY_AFTER", 3)
    rnd = random.Random(seed)
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    roots = [await alice.send(room, "root a"), await alice.send(room, "root b")]
    sent: list[tuple[str, str]] = []  # (event id, thread)
    threaded = {"room": {"timeline": {"unread_thread_notifications": True}}}
    for _step in range(50):
        roll = rnd.random()
        if roll < 0.75 or not sent:
            thread = rnd.choice(["main", "main", *roots])
            content: dict[str, Any] = {"msgtype": "m.text", "body": "x"}
            if thread != "main":
                content["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread}
            if rnd.random() < 0.2:
                content["m.mentions"] = {"user_ids": [alice.user_id]}
            sent.append((await bob.send(room, content=content), thread))
        else:
            event_id, thread = rnd.choice(sent[-8:])
            body = {} if rnd.random() < 0.3 else {"thread_id": thread}
            await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{event_id}", body)
        entry = (await sync(alice, filter=threaded))["rooms"]["join"][room]
        got = {
            "main": entry["unread_notifications"],
            **entry.get("unread_thread_notifications", {}),
        }
        got_pairs = {
            t: (c["notification_count"], c["highlight_count"])
            for t, c in got.items()
            if c["notification_count"] or c["highlight_count"]
        }
        want = await _recount(db, alice.user_id, room)
        assert got_pairs == want, (_step, got_pairs, want)
    assert await db.fetchval("SELECT count(*) FROM push_summary WHERE user_id = $1", alice.user_id)


async def test_counts_stay_right_when_devices_sync_while_messages_arrive(
    client: MatrixClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Summaries are written from read paths: two devices of one user sync
    at the same moment, over and over, while another user sends and the
    user moves a receipt; no interleaving loses or double-counts a
    notification."""
    monkeypatch.setattr(push_storage, "SUMMARY_AFTER", 2)
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await public_room_with(alice, bob)
    login = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "password",
    }
    r = await client.call("POST", f"{CS}/login", login)
    phone = User(alice.user_id, r["access_token"], r["device_id"], client)
    rnd = random.Random(7)
    sent: list[str] = []

    async def sender() -> None:
        for i in range(40):
            sent.append(await bob.send(room, f"m{i}"))
            if i % 13 == 12:
                await alice.call("POST", f"{CS}/rooms/{room}/receipt/m.read/{rnd.choice(sent)}", {})

    async def syncer(u: User) -> None:
        for _ in range(25):
            await sync(u)

    await asyncio.gather(sender(), syncer(alice), syncer(phone), syncer(alice))
    for u in (alice, phone):
        got = counts(await sync(u), room)
        assert got == (await _recount(db, alice.user_id, room)).get("main", (0, 0))
    assert await db.fetchval("SELECT count(*) FROM push_summary WHERE user_id = $1", alice.user_id)
