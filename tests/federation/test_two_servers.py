"""Two processes of our server federating over loopback TLS."""

from __future__ import annotations

import ssl
import uuid

import aiohttp

from tests.federation.conftest import Pair
from tests.federation.harness import Client, eventually, q, state_map, transactions_logged


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


async def test_keys_served_over_tls_and_unsigned_requests_refused(pair: Pair) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    url = f"https://127.0.0.1:{pair.a.fed_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/_matrix/key/v2/server", ssl=ctx) as r:
            body = await r.json()
            assert body["server_name"] == pair.a.server_name
            assert body["verify_keys"]
        async with s.get(url + "/_matrix/federation/v1/query/profile?user_id=@x:y", ssl=ctx) as r:
            assert r.status == 401
            assert (await r.json())["errcode"] == "M_UNAUTHORIZED"
        # The notary answers for B too (fetched by A over federation).
        async with s.get(url + f"/_matrix/key/v2/query/{pair.b.server_name}", ssl=ctx) as r:
            keys = (await r.json())["server_keys"]
            assert keys and keys[0]["server_name"] == pair.b.server_name
            assert pair.a.server_name in keys[0]["signatures"]


async def test_messages_state_and_redactions_flow(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat", name="first")
    await bob.join(room, [pair.a.server_name])
    assert await bob.joined_members(room) == {alice.user_id, bob.user_id}
    await eventually(lambda: alice.joined_members(room), lambda m: bob.user_id in m)

    await alice.send(room, "hi bob")
    await eventually(lambda: bob.bodies(room), lambda b: "hi bob" in b)
    eid = await bob.send(room, "hi alice")
    await eventually(lambda: alice.bodies(room), lambda b: "hi alice" in b)

    pl = await alice.state_event(room, "m.room.power_levels")
    pl["users"][bob.user_id] = 50
    await alice.put_state(room, "m.room.power_levels", pl)
    await eventually(
        lambda: bob.state_event(room, "m.room.power_levels"),
        lambda c: c["users"].get(bob.user_id) == 50,
    )
    await bob.put_state(room, "m.room.name", {"name": "renamed by bob"})
    await eventually(
        lambda: alice.state_event(room, "m.room.name"), lambda c: c["name"] == "renamed by bob"
    )
    await bob.redact(room, eid)
    await eventually(lambda: alice.bodies(room), lambda b: "hi alice" not in b)

    sa = state_map(await alice.state(room))
    sb = await eventually(lambda: bob.state(room), lambda s: state_map(s) == sa)
    assert state_map(sb) == sa


async def test_bad_pdus_are_handled_and_the_transaction_succeeds(pair: Pair) -> None:
    """Impersonate A towards B (with A's own key, read from its data dir):
    a forged signature is dropped, a wrong content hash is stored redacted,
    an event failing auth is rejected — and /send still answers 200."""
    import json

    import signedjson.key

    from homeserver.core.canonical import compute_event_id
    from homeserver.core.events import build_event
    from homeserver.core.room_versions import V12
    from homeserver.core.signing import generate_signing_key, sign_request

    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [pair.a.server_name])
    await alice.send(room, "before")
    await eventually(lambda: bob.bodies(room), lambda b: "before" in b)

    with open(pair.a.data_dir / "signing.key") as f:
        key = signedjson.key.read_signing_keys(f)[0]
    state = state_map(await alice.state(room))
    last = (await alice.messages(room, 1))[-1]
    auth = [state[("m.room.power_levels", "")], state[("m.room.member", alice.user_id)]]

    def make(sender: str, body: str, auth_events: list[str], signing_key: object) -> dict:
        ev = build_event(
            V12,
            room_id=room,
            sender=sender,
            type="m.room.message",
            content={"msgtype": "m.text", "body": body},
            prev_events=[last["event_id"]],
            auth_events=auth_events,
            depth=10_000,
            origin_server_ts=last["origin_server_ts"] + 1,
            server_name=pair.a.server_name,
            signing_key=signing_key,
        )
        return dict(ev.pdu)

    forged = make(alice.user_id, "forged", auth, generate_signing_key(key.version))
    bad_hash = make(alice.user_id, "original", auth, key)
    bad_hash["content"] = {"msgtype": "m.text", "body": "tampered"}
    mallory = f"@mallory:{pair.a.server_name}"
    unauth = make(mallory, "not in room", [state[("m.room.power_levels", "")]], key)
    pdus = [forged, bad_hash, unauth]
    ids = [compute_event_id(p, V12) for p in pdus]

    body = {"origin": pair.a.server_name, "origin_server_ts": 1, "pdus": pdus, "edus": []}
    path = f"/_matrix/federation/v1/send/test-{uuid.uuid4().hex}"
    auth_header = sign_request("PUT", path, pair.a.server_name, pair.b.server_name, body, key)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    async with (
        aiohttp.ClientSession() as s,
        s.put(
            f"https://127.0.0.1:{pair.b.fed_port}{path}",
            data=json.dumps(body),
            headers={"Authorization": auth_header, "Content-Type": "application/json"},
            ssl=ctx,
        ) as r,
    ):
        assert r.status == 200, await r.text()
        result = (await r.json())["pdus"]
    assert "error" in result[ids[0]]  # forged signature: dropped
    assert result[ids[1]] == {}  # accepted, redacted
    assert result[ids[2]] == {}  # processed (rejected), not an error for the txn

    # Bob's server shows neither the forged nor the rejected event, and the
    # tampered one only redacted.
    await bob.send(room, "after")
    msgs = await eventually(
        lambda: bob.messages(room), lambda m: any(e["content"].get("body") == "after" for e in m)
    )
    by_id = {e["event_id"]: e for e in msgs}
    assert ids[0] not in by_id and ids[2] not in by_id
    assert by_id[ids[1]]["content"] == {}
    got = await bob.call("GET", f"/_matrix/client/v3/rooms/{room}/event/{ids[0]}", expect=404)
    assert got["errcode"] == "M_NOT_FOUND"
    # Alice's server still gets Bob's later message (which cites the redacted event).
    await eventually(lambda: alice.bodies(room), lambda b: "after" in b)


async def test_backfill_fetches_history_from_before_the_join(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    for i in range(30):
        await alice.send(room, f"old{i:02d}")
    await bob.join(room, [pair.a.server_name])
    await alice.send(room, "new")
    await eventually(lambda: bob.bodies(room), lambda b: "new" in b)
    # Page back through everything, following the end tokens.
    bodies: list[str] = []
    token = None
    for _ in range(20):
        path = f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"
        r = await bob.call("GET", path + (f"&from={token}" if token else ""))
        bodies += [e["content"].get("body") for e in r["chunk"] if e["type"] == "m.room.message"]
        token = r.get("end")
        if not token or not r["chunk"]:
            break
    assert bodies == ["new"] + [f"old{i:02d}" for i in reversed(range(30))]
    # Backfilled history does not come down /sync as new.
    s = await bob.sync()
    timeline = s["rooms"]["join"][room]["timeline"]["events"]
    assert [e["content"].get("body") for e in timeline if e["type"] == "m.room.message"][
        -1
    ] == "new"


async def test_typing_and_receipts_flow_both_ways(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [pair.a.server_name])
    await eventually(lambda: alice.joined_members(room), lambda m: bob.user_id in m)
    await exchange_typing_and_receipts(alice, bob, room)


async def exchange_typing_and_receipts(x: Client, y: Client, room: str) -> None:
    """Typing and read receipts of each side reach the other (any servers)."""
    await typing_and_receipt_reach(x, y, room)
    await typing_and_receipt_reach(y, x, room)


async def typing_and_receipt_reach(me: Client, other: Client, room: str) -> None:
    await me.typing(room, True)
    await eventually(lambda: other.typing_users(room), lambda u: me.user_id in u, timeout=30)
    await me.typing(room, False)
    await eventually(lambda: other.typing_users(room), lambda u: me.user_id not in u, timeout=30)
    text = f"read me, {me.user_id}"
    eid = await other.send(room, text)
    await eventually(lambda: me.bodies(room), lambda b: text in b, timeout=30)
    await me.read(room, eid)
    await eventually(lambda: other.read_up_to(room, me.user_id), lambda r: eid in r, timeout=30)


async def test_a_burst_of_120_arrives_in_order_in_batches_of_at_most_50(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [pair.a.server_name])
    await alice.send(room, "warm-up")
    await eventually(lambda: bob.bodies(room), lambda b: "warm-up" in b)
    log_start = pair.b.log_path.stat().st_size
    want = [f"burst{i:03d}" for i in range(120)]
    for body in want:
        await alice.send(room, body)

    async def received() -> list[str]:
        return [b for b in await bob.bodies(room, limit=200) if b.startswith("burst")]

    assert await eventually(received, lambda b: len(b) >= 120, timeout=60) == want
    txns = transactions_logged(pair.b, pair.a.server_name, log_start)
    assert sum(p for _, p, _ in txns) >= 120
    assert max(p for _, p, _ in txns) <= 50


async def test_timestamp_to_event_over_federation(pair: Pair) -> None:
    """A server in the room may ask for the event closest to a time; one
    that is not in it may not."""
    import time

    from tests.federation.fake import signed_request, signing_key_of

    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    before = int(time.time() * 1000)
    eid = await alice.send(room, "then")
    path = f"/_matrix/federation/v1/timestamp_to_event/{room}?ts={before}&dir=f"
    key_b = signing_key_of(pair.b)
    r = await signed_request("GET", pair.a, path, origin=pair.b.server_name, key=key_b)
    assert r.status == 403, r
    await bob.join(room, [pair.a.server_name])
    r = await signed_request("GET", pair.a, path, origin=pair.b.server_name, key=key_b)
    assert r.status == 200 and r.body["event_id"] == eid, r
    bad = f"/_matrix/federation/v1/timestamp_to_event/{room}?ts=soon&dir=f"
    r = await signed_request("GET", pair.a, bad, origin=pair.b.server_name, key=key_b)
    assert r.status == 400 and r.body["errcode"] == "M_INVALID_PARAM"


async def test_space_hierarchy_reaches_rooms_on_another_server(pair: Pair) -> None:
    """A space on B lists a public room on A that B is not in: B asks A's
    /hierarchy for it. A private room on A stays unlisted."""
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    public = await alice.create_room(preset="public_chat", name="Over there")
    private = await alice.create_room(name="Not for you")
    space = await bob.create_room(
        preset="public_chat", name="Bob's space", creation_content={"type": "m.space"}
    )
    for child in (public, private):
        await bob.put_state(space, "m.space.child", {"via": [pair.a.server_name]}, child)
    r = await bob.call("GET", f"/_matrix/client/v1/rooms/{q(space)}/hierarchy")
    assert [x.get("name") for x in r["rooms"]] == ["Bob's space", "Over there"]
    assert r["rooms"][1]["room_id"] == public and r["rooms"][1]["join_rule"] == "public"


async def test_presence_crosses_servers(pair: Pair) -> None:
    """A presence change reaches the other server's members of shared rooms
    as an m.presence EDU."""
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [pair.a.server_name])
    await eventually(lambda: alice.joined_members(room), lambda m: bob.user_id in m)
    status = f"/_matrix/client/v3/presence/{q(alice.user_id)}/status"
    await alice.call("PUT", status, {"presence": "unavailable", "status_msg": "in a meeting"})
    got = await eventually(
        lambda: bob.call("GET", status), lambda r: r.get("status_msg") == "in a meeting"
    )
    assert got["presence"] == "unavailable"
