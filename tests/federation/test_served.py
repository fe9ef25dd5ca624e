"""What our server answers to other servers: the key notary, request
authentication, the room reads (refused to servers with no member, filtered
by history visibility) and the idempotent /send. Two processes of ours plus
a fake third origin whose keys are served from the test."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg
import signedjson.key

from homeserver.core.canonical import compute_event_id
from homeserver.core.events import build_event
from homeserver.core.room_versions import V12
from homeserver.core.signing import verify_json_signature
from tests.federation.conftest import Pair, free_port
from tests.federation.fake import (
    DAY_MS,
    Answer,
    FakeOrigin,
    insecure_tls,
    key_id,
    signed_request,
    signing_key_of,
)
from tests.federation.harness import Client, OurServer, eventually, state_map

V1 = "/_matrix/federation/v1"


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


def q(s: str) -> str:
    return quote(s, safe="")


async def get_json(server: OurServer, path: str, body: Any = None) -> Any:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        method = "POST" if body is not None else "GET"
        url = f"https://127.0.0.1:{server.fed_port}{path}"
        async with s.request(method, url, json=body, ssl=insecure_tls()) as r:
            assert r.status == 200, await r.text()
            return await r.json()


async def own_verify_key(server: OurServer) -> tuple[str, Any]:
    k = signing_key_of(server)
    return key_id(k), signedjson.key.get_verify_key(k)


def now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------ keys
async def test_notary_serves_own_and_remote_keys_signed_by_itself(
    pair: Pair, fake: FakeOrigin
) -> None:
    a, b = pair.a, pair.b
    a_kid, a_vk = await own_verify_key(a)
    b_kid, b_vk = await own_verify_key(b)

    own = (await get_json(a, f"/_matrix/key/v2/query/{q(a.server_name)}"))["server_keys"]
    assert [k["server_name"] for k in own] == [a.server_name]
    assert a_kid in own[0]["verify_keys"]
    verify_json_signature(own[0], a.server_name, a_kid, a_vk)

    body = {"server_keys": {a.server_name: {}, b.server_name: {}, fake.server_name: {}}}
    got = {
        k["server_name"]: k
        for k in (await get_json(a, "/_matrix/key/v2/query", body))["server_keys"]
    }
    assert set(got) == {a.server_name, b.server_name, fake.server_name}
    # Each remote answer carries its server's own signature and A's as notary.
    verify_json_signature(got[b.server_name], b.server_name, b_kid, b_vk)
    verify_json_signature(got[b.server_name], a.server_name, a_kid, a_vk)
    fk = got[fake.server_name]
    verify_json_signature(fk, a.server_name, a_kid, a_vk)
    verify_json_signature(
        fk, fake.server_name, key_id(fake.key), signedjson.key.get_verify_key(fake.key)
    )
    assert key_id(fake.old_key) in fk["old_verify_keys"]
    assert fk["old_verify_keys"][key_id(fake.old_key)]["expired_ts"] == fake.old_expired_ts

    # Cached: asking again does not fetch again ...
    before = fake.key_requests
    again = await get_json(a, f"/_matrix/key/v2/query/{q(fake.server_name)}")
    assert again["server_keys"][0]["valid_until_ts"] == fk["valid_until_ts"]
    assert fake.key_requests == before
    # ... unless the cached keys are not valid long enough for the asker.
    far = now_ms() + 60 * DAY_MS
    post = {"server_keys": {fake.server_name: {key_id(fake.key): {"minimum_valid_until_ts": far}}}}
    got2 = await eventually(
        lambda: get_json(a, "/_matrix/key/v2/query", post),
        lambda r: r["server_keys"][0]["valid_until_ts"] > fk["valid_until_ts"],
        timeout=10,
        interval=0.5,
    )
    assert fake.key_requests > before
    verify_json_signature(got2["server_keys"][0], a.server_name, a_kid, a_vk)
    assert (await get_json(a, "/_matrix/key/v2/query", {"server_keys": {}})) == {"server_keys": []}

    # What A keeps: a current key valid for at most 7 days (the fake claims
    # 30), and the old key until its expired_ts.
    conn = await asyncpg.connect(a.db_url)
    try:
        rows = {
            r["key_id"]: r
            for r in await conn.fetch(
                "SELECT key_id, valid_until_ts, is_old FROM federation_server_keys "
                "WHERE server_name = $1",
                fake.server_name,
            )
        }
    finally:
        await conn.close()
    cur = rows[key_id(fake.key)]
    assert not cur["is_old"]
    assert now_ms() + 6 * DAY_MS < cur["valid_until_ts"] <= now_ms() + 7 * DAY_MS
    old = rows[key_id(fake.old_key)]
    assert old["is_old"] and old["valid_until_ts"] == fake.old_expired_ts


# --------------------------------------------------- request authentication
async def test_request_authentication_failures_are_401_matrix_errors(
    pair: Pair, fake: FakeOrigin
) -> None:
    a = pair.a
    user = await pair.client(a).register(uniq("prof"))
    path = f"{V1}/query/profile?user_id={q(user.user_id)}"

    ok = await fake.request("GET", a, path)
    assert ok.status == 200, ok  # the control: a good signature passes

    wrong_key = signedjson.key.generate_signing_key(fake.key.version)
    unknown_key = signedjson.key.generate_signing_key("nosuchkey")
    cases: dict[str, Answer] = {
        "missing": await signed_request("GET", a, path, origin=fake.server_name, key=None),
        "destination": await fake.request("GET", a, path, destination="elsewhere.example"),
        "unknown key": await signed_request(
            "GET", a, path, origin=fake.server_name, key=unknown_key
        ),
        "bad signature": await fake.request("GET", a, path, sign_with=wrong_key),
        "old key": await signed_request("GET", a, path, origin=fake.server_name, key=fake.old_key),
        "unreachable origin": await signed_request(
            "GET", a, path, origin=f"localhost:{free_port()}", key=fake.key
        ),
        "signed for another path": await fake.request(
            "GET", a, path, signed_path=path.replace("profile", "directory")
        ),
    }
    for name, got in cases.items():
        assert got.status == 401, (name, got)
        assert got.body.get("errcode") == "M_UNAUTHORIZED", (name, got)
        assert isinstance(got.body.get("error"), str), (name, got)


# ------------------------------------------------------------ room reads
async def shared_room(pair: Pair, visibility: str) -> tuple[Client, Client, str, str, str]:
    """A room on A with ``visibility``; a message before B's user joins and
    one after. (alice, bob, room, before id, after id)"""
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    await alice.put_state(room, "m.room.history_visibility", {"history_visibility": visibility})
    before = await alice.send(room, "secret before the join")
    await bob.join(room, [pair.a.server_name])
    after = await alice.send(room, "after the join")
    await eventually(lambda: bob.bodies(room), lambda b: "after the join" in b)
    return alice, bob, room, before, after


async def test_room_reads_refused_to_servers_with_no_member(pair: Pair, fake: FakeOrigin) -> None:
    a = pair.a
    alice, _bob, room, _before, after = await shared_room(pair, "shared")
    gme = {"earliest_events": [], "latest_events": [after], "limit": 10, "min_depth": 0}
    reads: list[tuple[str, str, Any]] = [
        ("GET", f"{V1}/event/{q(after)}", None),
        ("GET", f"{V1}/state/{q(room)}?event_id={q(after)}", None),
        ("GET", f"{V1}/state_ids/{q(room)}?event_id={q(after)}", None),
        ("GET", f"{V1}/event_auth/{q(room)}/{q(after)}", None),
        ("GET", f"{V1}/backfill/{q(room)}?v={q(after)}&limit=5", None),
        ("POST", f"{V1}/get_missing_events/{q(room)}", gme),
    ]
    b_key = signing_key_of(pair.b)
    for method, path, body in reads:
        member = await signed_request(
            method, a, path, origin=pair.b.server_name, key=b_key, body=body
        )
        assert member.status == 200, (path, member)
        outsider = await fake.request(method, a, path, body=body)
        assert outsider.status == 403, (path, outsider)
        assert outsider.body["errcode"] == "M_FORBIDDEN", (path, outsider)

    # Queries are not about a room: any authenticated server may ask.
    alias = f"#{uniq('al')}:{a.server_name}"
    await alice.call("PUT", f"/_matrix/client/v3/directory/room/{q(alias)}", {"room_id": room})
    got = await fake.request("GET", a, f"{V1}/query/directory?room_alias={q(alias)}")
    assert got.status == 200 and got.body["room_id"] == room, got
    await alice.call(
        "PUT", f"/_matrix/client/v3/profile/{q(alice.user_id)}/displayname", {"displayname": "Al"}
    )
    got = await fake.request("GET", a, f"{V1}/query/profile?user_id={q(alice.user_id)}")
    assert got.status == 200 and got.body.get("displayname") == "Al", got
    unauth = await signed_request(
        "GET", a, f"{V1}/query/directory?room_alias={q(alias)}", origin=fake.server_name, key=None
    )
    assert unauth.status == 401


async def test_joined_history_is_not_served_from_before_the_join(pair: Pair) -> None:
    a, b = pair.a, pair.b
    _alice, bob, room, before, after = await shared_room(pair, "joined")
    b_key = signing_key_of(b)

    async def ask(method: str, path: str, body: Any = None) -> Answer:
        got = await signed_request(method, a, path, origin=b.server_name, key=b_key, body=body)
        assert got.status in (200, 403), (path, got)
        return got

    ev = await ask("GET", f"{V1}/event/{q(before)}")
    assert ev.status == 200 and "body" not in ev.body["pdus"][0]["content"]
    ev = await ask("GET", f"{V1}/event/{q(after)}")
    assert ev.body["pdus"][0]["content"]["body"] == "after the join"

    bf = await ask("GET", f"{V1}/backfill/{q(room)}?v={q(after)}&limit=50")
    by_id = {compute_event_id(p, V12): p for p in bf.body["pdus"]}
    assert before in by_id and after in by_id
    assert "body" not in by_id[before]["content"]
    assert by_id[after]["content"]["body"] == "after the join"

    gme = {"earliest_events": [], "latest_events": [after], "limit": 50, "min_depth": 0}
    got = await ask("POST", f"{V1}/get_missing_events/{q(room)}", gme)
    by_id = {compute_event_id(p, V12): p for p in got.body["events"]}
    assert before in by_id and "body" not in by_id[before]["content"]

    st = await ask("GET", f"{V1}/state_ids/{q(room)}?event_id={q(before)}")
    assert st.status == 403 and st.body["errcode"] == "M_FORBIDDEN"
    st = await ask("GET", f"{V1}/state_ids/{q(room)}?event_id={q(after)}")
    assert st.status == 200

    # And B's user, paging back, never sees the text from before the join.
    assert "secret before the join" not in await bob.bodies(room)


# --------------------------------------------------------------- /send
async def test_replayed_transaction_is_answered_once(pair: Pair) -> None:
    """A /send retried with the same txn id is not processed again: the
    first answer is returned, whatever the retry carries."""
    a, b = pair.a, pair.b
    alice = await pair.client(a).register(uniq("alice"))
    bob = await pair.client(b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [a.server_name])
    await alice.send(room, "warm")
    await eventually(lambda: bob.bodies(room), lambda x: "warm" in x)
    key = signing_key_of(a)
    state = state_map(await alice.state(room))
    last = (await alice.messages(room, 1))[-1]

    def message(body: str) -> dict[str, Any]:
        ev = build_event(
            V12,
            room_id=room,
            sender=alice.user_id,
            type="m.room.message",
            content={"msgtype": "m.text", "body": body},
            prev_events=[last["event_id"]],
            auth_events=[
                state[("m.room.power_levels", "")],
                state[("m.room.member", alice.user_id)],
            ],
            depth=10_000,
            origin_server_ts=last["origin_server_ts"] + 1,
            server_name=a.server_name,
            signing_key=key,
        )
        return dict(ev.pdu)

    txn = f"{V1}/send/replay-{uuid.uuid4().hex}"
    first = message("once")
    body = {"origin": a.server_name, "origin_server_ts": now_ms(), "pdus": [first], "edus": []}
    r1 = await signed_request("PUT", b, txn, origin=a.server_name, key=key, body=body)
    assert r1.status == 200 and list(r1.body["pdus"]) == [compute_event_id(first, V12)], r1
    r2 = await signed_request("PUT", b, txn, origin=a.server_name, key=key, body=body)
    assert r2.status == 200 and r2.body == r1.body
    other = dict(body, pdus=[message("never")])
    r3 = await signed_request("PUT", b, txn, origin=a.server_name, key=key, body=other)
    assert r3.status == 200 and r3.body == r1.body  # the stored answer, nothing processed

    await alice.send(room, "later")
    bodies = await eventually(lambda: bob.bodies(room), lambda x: "later" in x)
    assert bodies.count("once") == 1
    assert "never" not in bodies


# ------------------------------------------------------------ key rotation
async def test_rotated_key_is_published_as_old_and_peers_follow(pair: Pair) -> None:
    """Last in this module: restarts B with a new signing key."""
    import subprocess
    import sys

    from tests.federation.harness import REPO

    a, b = pair.a, pair.b
    alice = await pair.client(a).register(uniq("alice"))
    bob = await pair.client(b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat")
    await bob.join(room, [a.server_name])
    await bob.send(room, "signed with the old key")
    await eventually(lambda: alice.bodies(room), lambda x: "signed with the old key" in x)
    old_key = signing_key_of(b)
    old_kid = key_id(old_key)

    b.stop()
    rotated_at = now_ms()
    cmd = [sys.executable, "-m", "homeserver.cli", "rotate-signing-key"]
    subprocess.run(
        [*cmd, "--data-dir", str(b.data_dir), "--server-name", b.server_name],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    b.start()
    await b.wait_ready()
    new_key = signing_key_of(b)
    assert key_id(new_key) != old_kid

    keys = await get_json(b, "/_matrix/key/v2/server")
    assert list(keys["verify_keys"]) == [key_id(new_key)]
    assert rotated_at <= keys["old_verify_keys"][old_kid]["expired_ts"] <= now_ms()
    verify_json_signature(
        keys, b.server_name, key_id(new_key), signedjson.key.get_verify_key(new_key)
    )

    # A learns the new key on B's first request signed with it, and keeps
    # accepting B's events; its notary now relays B's old key as well.
    await bob.send(room, "signed with the new key")
    await eventually(lambda: alice.bodies(room), lambda x: "signed with the new key" in x)
    got = await get_json(a, f"/_matrix/key/v2/query/{q(b.server_name)}")
    assert old_kid in got["server_keys"][0]["old_verify_keys"]
    # A request signed with the retired key is refused now.
    old = await signed_request(
        "GET",
        a,
        f"{V1}/query/profile?user_id={q(alice.user_id)}",
        origin=b.server_name,
        key=old_key,
    )
    assert old.status == 401, old
