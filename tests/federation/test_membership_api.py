"""The membership endpoints our server serves to other servers, asked
directly with signed requests: make_join / send_join (v1, v2), make_leave /
send_leave (v1, v2), make_knock / send_knock and invite v2, with what each
must refuse; and a join that survives a dead first resident server.

The asking server is a ``FakeOrigin`` (a third server run inside the test,
whose keys our processes really fetch); its users' events are built and
signed here, so each test controls exactly what is sent."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
import signedjson.key
from aiohttp import web

from homeserver.core.canonical import compute_event_id
from homeserver.core.events import build_event
from homeserver.core.room_versions import V12, RoomVersion, get_room_version
from homeserver.core.signing import sign_event, verify_event_signature
from tests.federation.conftest import Pair, free_port
from tests.federation.fake import Answer, FakeOrigin, key_id, signing_key_of
from tests.federation.harness import Client, eventually, state_map

V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


def q(s: str) -> str:
    return quote(s, safe="")


def now_ms() -> int:
    return int(time.time() * 1000)


def fake_user(fake: FakeOrigin, name: str) -> str:
    return f"@{uniq(name)}:{fake.server_name}"


async def make(
    fake: FakeOrigin, target: Any, kind: str, room: str, user: str, ver: list[str] | None
) -> Answer:
    qs = "&".join(f"ver={q(v)}" for v in ver) if ver is not None else ""
    path = f"{V1}/make_{kind}/{q(room)}/{q(user)}" + (f"?{qs}" if qs else "")
    return await fake.request("GET", target, path)


def signed_from(
    fake: FakeOrigin, template: dict[str, Any], rv: RoomVersion = V12, **changes: Any
) -> dict[str, Any]:
    """The template, changed as asked, hashed and signed by the fake."""
    pdu = dict(template, origin_server_ts=now_ms(), **changes)
    return sign_event(pdu, fake.server_name, fake.key, rv)


async def send(
    fake: FakeOrigin, target: Any, v: str, kind: str, pdu: dict[str, Any], rv: RoomVersion = V12
) -> Answer:
    eid = compute_event_id(pdu, rv)
    path = f"/_matrix/federation/{v}/send_{kind}/{q(pdu['room_id'])}/{q(eid)}"
    return await fake.request("PUT", target, path, body=pdu)


def ids(pdus: list[dict[str, Any]], rv: RoomVersion = V12) -> set[str]:
    return {compute_event_id(p, rv) for p in pdus}


async def public_room(pair: Pair, version: str | None = None) -> tuple[Client, str]:
    alice = await pair.client(pair.a).register(uniq("alice"))
    extra = {"room_version": version} if version else {}
    room = await alice.create_room(preset="public_chat", **extra)
    return alice, room


# ------------------------------------------------------------ make_join
async def test_make_join_refusals_and_template(pair: Pair, fake: FakeOrigin) -> None:
    a = pair.a
    alice, room = await public_room(pair)
    joiner = fake_user(fake, "joiner")

    ok = await make(fake, a, "join", room, joiner, ["10", "11", "12"])
    assert ok.status == 200, ok
    assert ok.body["room_version"] == "12"
    t = ok.body["event"]
    assert (t["type"], t["room_id"], t["sender"], t["state_key"]) == (
        "m.room.member",
        room,
        joiner,
        joiner,
    )
    assert t["content"]["membership"] == "join"
    state = state_map(await alice.state(room))
    assert set(t["auth_events"]) == {
        state[("m.room.power_levels", "")],
        state[("m.room.join_rules", "")],
    }  # v12: the create event is not cited
    assert t["prev_events"] and t["depth"] > 1

    for ver in (["1", "2"], ["11"], None):  # no ver at all means ["1"]
        bad = await make(fake, a, "join", room, joiner, ver)
        assert bad.status == 400, (ver, bad)
        assert bad.body["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION", (ver, bad)
        assert bad.body["room_version"] == "12", (ver, bad)

    other = f"@{uniq('notyours')}:{pair.b.server_name}"
    wrong_server = await make(fake, a, "join", room, other, ["12"])
    assert wrong_server.status == 403 and wrong_server.body["errcode"] == "M_FORBIDDEN"

    unknown = await make(fake, a, "join", f"!nosuchroom:{a.server_name}", joiner, ["12"])
    assert unknown.status == 404 and unknown.body["errcode"] == "M_NOT_FOUND", unknown

    banned = fake_user(fake, "banned")
    await alice.membership(room, "ban", user_id=banned, reason="no")
    refused = await make(fake, a, "join", room, banned, ["12"])
    assert refused.status == 403 and refused.body["errcode"] == "M_FORBIDDEN", refused


async def test_make_join_in_a_restricted_room(pair: Pair, fake: FakeOrigin) -> None:
    """Allowed through a room A does not know: 400 M_UNABLE_TO_AUTHORISE_JOIN
    (another server may know it), but a banned user is refused outright."""
    a = pair.a
    alice, room = await public_room(pair)
    allow = [{"type": "m.room_membership", "room_id": f"!unknown:{pair.b.server_name}"}]
    await alice.put_state(room, "m.room.join_rules", {"join_rule": "restricted", "allow": allow})
    joiner, banned = fake_user(fake, "joiner"), fake_user(fake, "banned")
    await alice.membership(room, "ban", user_id=banned)
    got = await make(fake, a, "join", room, joiner, ["12"])
    assert got.status == 400 and got.body["errcode"] == "M_UNABLE_TO_AUTHORISE_JOIN", got
    got = await make(fake, a, "join", room, banned, ["12"])
    assert got.status == 403 and got.body["errcode"] == "M_FORBIDDEN", got


# ------------------------------------------------------------ send_join
@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_send_join_v1_and_v2(pair: Pair, fake: FakeOrigin, version: str) -> None:
    a = pair.a
    rv = get_room_version(version)
    alice, room = await public_room(pair, version)
    before = state_map(await alice.state(room))
    u1, u2 = fake_user(fake, "one"), fake_user(fake, "two")
    made = await make(fake, a, "join", room, u1, ["10", "11", "12"])
    assert made.status == 200 and made.body["room_version"] == version, made
    t1 = made.body["event"]
    cited = {before[("m.room.power_levels", "")], before[("m.room.join_rules", "")]}
    if version != "12":  # v12 events do not cite the create event
        cited.add(before[("m.room.create", "")])
    assert set(t1["auth_events"]) == cited

    not_joins = {
        "leave": signed_from(fake, t1, rv, content={"membership": "leave"}),
        "invite": signed_from(fake, t1, rv, content={"membership": "invite"}),
        "wrong type": signed_from(fake, t1, rv, type="m.room.topic"),
        "state_key of another": signed_from(fake, t1, rv, state_key=u2),
    }
    # A join of a user of another server than the one asking.
    stranger = f"@{uniq('stranger')}:{pair.b.server_name}"
    not_theirs = signed_from(fake, t1, rv, sender=stranger, state_key=stranger)
    for v in ("v1", "v2"):
        for name, pdu in not_joins.items():
            got = await send(fake, a, v, "join", pdu, rv)
            assert got.status == 400, (v, name, got)
            assert got.body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM"), (v, name, got)
        got = await send(fake, a, v, "join", not_theirs, rv)
        assert got.status == 403 and got.body["errcode"] == "M_FORBIDDEN", (v, got)
    assert await alice.joined_members(room) == {alice.user_id}

    # v1: [200, {origin, state, auth_chain}], the state before the join.
    join1 = signed_from(fake, t1, rv)
    r1 = await send(fake, a, "v1", "join", join1, rv)
    assert r1.status == 200, r1
    assert isinstance(r1.body, list) and r1.body[0] == 200, r1
    body1 = r1.body[1]
    assert body1["origin"] == a.server_name
    assert ids(body1["state"], rv) == set(before.values())
    # (in v12 no event cites the create event, which comes in ``state``)
    assert ids(body1["auth_chain"], rv) >= cited | {before[("m.room.member", alice.user_id)]}

    # v2: {origin, state, auth_chain, event}; the state now has u1's join.
    t2 = (await make(fake, a, "join", room, u2, [version])).body["event"]
    join2 = signed_from(fake, t2, rv)
    r2 = await send(fake, a, "v2", "join", join2, rv)
    assert r2.status == 200, r2
    assert isinstance(r2.body, dict) and r2.body["origin"] == a.server_name, r2
    assert compute_event_id(r2.body["event"], rv) == compute_event_id(join2, rv)
    state2 = ids(r2.body["state"], rv)
    assert compute_event_id(join1, rv) in state2
    assert set(before.values()) <= state2
    assert ids(r2.body["auth_chain"], rv) >= cited | {before[("m.room.member", alice.user_id)]}

    members = await eventually(
        lambda: alice.joined_members(room), lambda m: m == {alice.user_id, u1, u2}
    )
    assert members == {alice.user_id, u1, u2}


# ------------------------------------------------------- make/send_leave
async def test_make_and_send_leave_v1_and_v2(pair: Pair, fake: FakeOrigin) -> None:
    a = pair.a
    alice, room = await public_room(pair)
    users = [fake_user(fake, "leaver"), fake_user(fake, "leaver")]
    for u in users:
        t = (await make(fake, a, "join", room, u, ["12"])).body["event"]
        assert (await send(fake, a, "v2", "join", signed_from(fake, t))).status == 200

    other = f"@{uniq('notyours')}:{pair.b.server_name}"
    assert (await make(fake, a, "leave", room, other, None)).status == 403
    unknown = await make(fake, a, "leave", f"!nosuch:{a.server_name}", users[0], None)
    assert unknown.status == 404

    for u, v, want in ((users[0], "v1", [200, {}]), (users[1], "v2", {})):
        got = await make(fake, a, "leave", room, u, None)
        assert got.status == 200, got
        t = got.body["event"]
        assert t["content"]["membership"] == "leave" and t["state_key"] == u
        assert got.body["room_version"] == "12"
        not_leave = signed_from(fake, t, content={"membership": "join"})
        bad = await send(fake, a, v, "leave", not_leave)
        assert bad.status == 400 and bad.body["errcode"] in ("M_BAD_JSON", "M_INVALID_PARAM")
        r = await send(fake, a, v, "leave", signed_from(fake, t))
        assert r.status == 200 and r.body == want, (v, r)
        assert await alice.membership_of(room, u) == "leave"
    assert await alice.joined_members(room) == {alice.user_id}


# ------------------------------------------------------ make/send_knock
async def test_make_and_send_knock(pair: Pair, fake: FakeOrigin) -> None:
    a = pair.a
    alice, public = await public_room(pair)
    knocky = await alice.create_room(preset="private_chat", name="knock here")
    await alice.put_state(knocky, "m.room.join_rules", {"join_rule": "knock"})
    knocker = fake_user(fake, "knocker")

    refused = await make(fake, a, "knock", public, knocker, ["12"])
    assert refused.status == 403 and refused.body["errcode"] == "M_FORBIDDEN", refused
    no_ver = await make(fake, a, "knock", knocky, knocker, None)  # required for knocks
    assert no_ver.status == 400 and no_ver.body["errcode"] == "M_MISSING_PARAM", no_ver
    old = await make(fake, a, "knock", knocky, knocker, ["1"])
    assert old.status == 400 and old.body["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION", old
    assert old.body["room_version"] == "12"

    # A knock sent to a room whose join rule is not knock, without make_knock.
    jt = (await make(fake, a, "join", public, knocker, ["12"])).body["event"]
    sneaky = signed_from(fake, jt, content={"membership": "knock"})
    r = await send(fake, a, "v1", "knock", sneaky)
    assert r.status == 403 and r.body["errcode"] == "M_FORBIDDEN", r

    got = await make(fake, a, "knock", knocky, knocker, ["12"])
    assert got.status == 200, got
    t = got.body["event"]
    assert t["content"]["membership"] == "knock" and got.body["room_version"] == "12"
    r = await send(fake, a, "v1", "knock", signed_from(fake, t, content={"membership": "knock"}))
    assert r.status == 200, r
    by_type = {e["type"]: e for e in r.body["knock_room_state"]}
    assert by_type["m.room.join_rules"]["content"]["join_rule"] == "knock"
    assert by_type["m.room.name"]["content"]["name"] == "knock here"
    assert by_type["m.room.create"]["sender"] == alice.user_id
    assert await alice.membership_of(knocky, knocker) == "knock"


# ---------------------------------------------------------------- invite
def fake_room(fake: FakeOrigin) -> tuple[str, str, list[dict[str, Any]]]:
    """A public v12 room on the fake: (room id, creator, [create, creator's
    join, power levels, join rules]), each citing the one before."""
    creator = fake_user(fake, "creator")
    pdus: list[dict[str, Any]] = []
    room_id: str | None = None
    steps: list[tuple[str, str, dict[str, Any], list[int]]] = [
        ("m.room.create", "", {"room_version": "12"}, []),
        ("m.room.member", creator, {"membership": "join"}, []),
        ("m.room.power_levels", "", {"users": {}}, [1]),
        ("m.room.join_rules", "", {"join_rule": "public"}, [1, 2]),
    ]
    for depth, (type_, key, content, auth) in enumerate(steps, start=1):
        ev = build_event(
            V12,
            room_id=room_id,
            sender=creator,
            type=type_,
            state_key=key,
            content=content,
            prev_events=[compute_event_id(pdus[-1], V12)] if pdus else [],
            auth_events=[compute_event_id(pdus[i], V12) for i in auth],
            depth=depth,
            origin_server_ts=now_ms(),
            server_name=fake.server_name,
            signing_key=fake.key,
        )
        room_id = ev.room_id
        pdus.append(dict(ev.pdu))
    assert room_id is not None
    return room_id, creator, pdus


async def test_invite_v2(pair: Pair, fake: FakeOrigin) -> None:
    a = pair.a
    bob = await pair.client(a).register(uniq("bob"))
    room, creator, (create, join, *_) = fake_room(fake)
    invite = build_event(
        V12,
        room_id=room,
        sender=creator,
        type="m.room.member",
        state_key=bob.user_id,
        content={"membership": "invite"},
        prev_events=[compute_event_id(join, V12)],
        auth_events=[compute_event_id(join, V12)],
        depth=3,
        origin_server_ts=now_ms(),
        server_name=fake.server_name,
        signing_key=fake.key,
    )
    name = {"type": "m.room.name", "state_key": "", "sender": creator, "content": {"name": "Fk"}}
    body = {"room_version": "12", "event": dict(invite.pdu), "invite_room_state": [create, name]}
    path = f"{V2}/invite/{q(room)}/{q(invite.event_id)}"

    old = await fake.request("PUT", a, path, body=dict(body, room_version="1"))
    assert old.status == 400 and old.body["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION", old
    assert old.body.get("room_version") == "1"
    malformed = {
        "no room_version": ({k: v for k, v in body.items() if k != "room_version"}, 400),
        "invite_room_state not a list": (dict(body, invite_room_state=5), 400),
        "no event": ({"room_version": "12"}, 400),
        "for another room": (dict(body, event=dict(invite.pdu, room_id="!x:elsewhere")), 400),
    }
    for case, (bad, status) in malformed.items():
        got = await fake.request("PUT", a, path, body=bad)
        assert got.status == status and got.body["errcode"].startswith("M_"), (case, got)

    got = await fake.request("PUT", a, path, body=body)
    assert got.status == 200, got
    signed = got.body["event"]
    assert compute_event_id(signed, V12) == invite.event_id
    untouched = {k: v for k, v in signed.items() if k != "signatures"}
    assert untouched == {k: v for k, v in invite.pdu.items() if k != "signatures"}
    a_key = signing_key_of(a)
    verify_event_signature(
        signed, V12, a.server_name, key_id(a_key), signedjson.key.get_verify_key(a_key)
    )
    verify_event_signature(
        signed, V12, fake.server_name, key_id(fake.key), signedjson.key.get_verify_key(fake.key)
    )

    sync = await eventually(bob.sync, lambda s: room in s.get("rooms", {}).get("invite", {}))
    shown = sync["rooms"]["invite"][room]["invite_state"]["events"]
    by_type = {e["type"]: e for e in shown}
    assert by_type["m.room.name"]["content"] == {"name": "Fk"}
    assert by_type["m.room.create"]["sender"] == creator
    assert by_type["m.room.member"]["state_key"] == bob.user_id


async def test_outgoing_invite_carries_the_create_event(pair: Pair, fake: FakeOrigin) -> None:
    alice, room = await public_room(pair)
    await alice.put_state(room, "m.room.name", {"name": "Out"})
    invitee = fake_user(fake, "invitee")
    await alice.membership(room, "invite", user_id=invitee)
    sent = [i for i in fake.invites if i["event"]["state_key"] == invitee]
    assert len(sent) == 1
    assert sent[0]["room_version"] == "12"
    state = state_map(await alice.state(room))
    by_type = {e["type"]: e for e in sent[0]["invite_room_state"]}
    create = by_type["m.room.create"]
    assert compute_event_id(create, V12) == state[("m.room.create", "")]  # the full PDU
    assert by_type["m.room.name"]["content"] == {"name": "Out"}
    assert await alice.membership_of(room, invitee) == "invite"


# The stripped state the Client-Server API recommends ("Stripped state"),
# written out here rather than imported: this is what the test holds the
# server to.
SPEC_STRIPPED_TYPES = {
    "m.room.create",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.encryption",
}


async def test_stripped_state_over_federation_is_the_spec_list(
    pair: Pair, fake: FakeOrigin
) -> None:
    """An invite to and a knock from another server carry the spec's
    recommended stripped state (the invite also the inviter's member event),
    the same list our /sync shows: not history visibility or guest access,
    which the federation side used to add."""
    alice, room = await public_room(pair)
    await alice.put_state(room, "m.room.topic", {"topic": "t"})
    await alice.put_state(room, "m.room.guest_access", {"guest_access": "can_join"})
    state = state_map(await alice.state(room))
    assert ("m.room.history_visibility", "") in state and ("m.room.guest_access", "") in state
    present = {t for t in SPEC_STRIPPED_TYPES if (t, "") in state}
    invitee = fake_user(fake, "stripped")
    await alice.membership(room, "invite", user_id=invitee)
    sent = [i for i in fake.invites if i["event"]["state_key"] == invitee]
    assert len(sent) == 1
    types = [(e["type"], e["state_key"]) for e in sent[0]["invite_room_state"]]
    assert sorted(types) == sorted([(t, "") for t in present] + [("m.room.member", alice.user_id)])

    await alice.put_state(room, "m.room.join_rules", {"join_rule": "knock"})
    knocker = fake_user(fake, "knocker")
    got = await make(fake, pair.a, "knock", room, knocker, ["12"])
    assert got.status == 200, got
    t = got.body["event"]
    r = await send(
        fake, pair.a, "v1", "knock", signed_from(fake, t, content={"membership": "knock"})
    )
    assert r.status == 200, r
    assert sorted(e["type"] for e in r.body["knock_room_state"]) == sorted(present)


# -------------------------------------------------- dead first resident
async def test_join_skips_resident_servers_that_fail(pair: Pair, fake: FakeOrigin) -> None:
    """The first server named is down (nobody listens on its port), the
    second answers 404 to make_join (the fake is not in the room): the join
    goes through the third."""
    alice, room = await public_room(pair)
    bob = await pair.client(pair.b).register(uniq("bob"))
    dead = f"localhost:{free_port()}"
    t0 = time.monotonic()
    r = await bob.join(room, [dead, fake.server_name, pair.a.server_name])
    assert r["room_id"] == room
    assert time.monotonic() - t0 < 20
    log = pair.b.log_path.read_text(errors="replace")
    assert f"joining {room} via {dead} failed" in log
    assert f"joining {room} via {fake.server_name} failed" in log
    await eventually(lambda: alice.joined_members(room), lambda m: bob.user_id in m)
    await bob.send(room, "through the third server")
    await eventually(lambda: alice.bodies(room), lambda b: "through the third server" in b)


# ------------------------------------------------ send_join v1 fallback
@pytest.fixture(scope="module")
async def old_resident() -> AsyncIterator[tuple[FakeOrigin, str, list[str]]]:
    """A fake resident server of one public room that serves make_join and
    send_join v1 only (v2 answers 404 M_UNRECOGNIZED, as older servers do).
    Yields (the fake, the room id, the paths it was asked in order)."""
    f = FakeOrigin(free_port())
    asked: list[str] = []
    room, _creator, pdus = fake_room(f)
    last = compute_event_id(pdus[-1], V12)
    pl, jr = compute_event_id(pdus[2], V12), compute_event_id(pdus[3], V12)

    async def make_join(request: web.Request) -> web.Response:
        asked.append(request.path)
        if request.match_info["room_id"] != room:
            return web.json_response({"errcode": "M_NOT_FOUND", "error": "?"}, status=404)
        user = request.match_info["user_id"]
        template = {
            "type": "m.room.member",
            "room_id": room,
            "sender": user,
            "state_key": user,
            "content": {"membership": "join"},
            "depth": len(pdus) + 1,
            "prev_events": [last],
            "auth_events": [pl, jr],
            "origin_server_ts": now_ms(),
        }
        return web.json_response({"room_version": "12", "event": template})

    async def send_join_v2(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "?"}, status=404)

    async def send_join_v1(request: web.Request) -> web.Response:
        asked.append(request.path)
        event = await request.json()
        body = {"origin": f.server_name, "state": pdus, "auth_chain": pdus, "event": event}
        return web.json_response([200, body])

    f.add_route("GET", V1 + "/make_join/{room_id}/{user_id}", make_join)
    f.add_route("PUT", V2 + "/send_join/{room_id}/{event_id}", send_join_v2)
    f.add_route("PUT", V1 + "/send_join/{room_id}/{event_id}", send_join_v1)
    await f.start()
    yield f, room, asked
    await f.stop()


async def test_join_falls_back_to_send_join_v1(
    pair: Pair, old_resident: tuple[FakeOrigin, str, list[str]]
) -> None:
    f, room, asked = old_resident
    carol = await pair.client(pair.a).register(uniq("carol"))
    r = await carol.join(room, [f.server_name])
    assert r["room_id"] == room
    kinds = [p.split("/")[3:5] for p in asked]
    assert kinds == [["v1", "make_join"], ["v2", "send_join"], ["v1", "send_join"]], asked
    state = state_map(await carol.state(room))
    assert state[("m.room.member", carol.user_id)]
    assert len(state) == 5  # the fake's four events and carol's join
    assert await carol.membership_of(room, carol.user_id) == "join"


async def test_send_join_of_a_user_banned_since_make_join_is_refused(
    pair: Pair, fake: FakeOrigin
) -> None:
    alice, room = await public_room(pair)
    user = fake_user(fake, "latecomer")
    made = await make(fake, pair.a, "join", room, user, ["12"])
    assert made.status == 200, made
    await alice.membership(room, "ban", user_id=user, reason="changed my mind")
    for v in ("v1", "v2"):
        got = await send(fake, pair.a, v, "join", signed_from(fake, made.body["event"]))
        assert got.status == 403 and got.body["errcode"] == "M_FORBIDDEN", (v, got)
    assert await alice.membership_of(room, user) == "ban"


# ------------------------------------- what a send_join answer must pass
@pytest.fixture(scope="module")
async def sly_residents() -> AsyncIterator[tuple[FakeOrigin, FakeOrigin, str, dict[str, str]]]:
    """Two fake resident servers of one v12 room. The first hands out a
    join template for someone else; the second answers send_join v2 with the
    room's four events plus a state event with a forged signature, one whose
    content was changed after signing and one whose sender is not in the
    room. Yields (first, second, room id, {kind: event id})."""
    bad, sly = FakeOrigin(free_port()), FakeOrigin(free_port())
    room, creator, pdus = fake_room(sly)
    last = compute_event_id(pdus[-1], V12)
    member, pl, jr = (compute_event_id(pdus[i], V12) for i in (1, 2, 3))

    def state_event(type_: str, sender: str, content: dict[str, Any], key: Any) -> dict[str, Any]:
        ev = build_event(
            V12,
            room_id=room,
            sender=sender,
            type=type_,
            state_key="",
            content=content,
            prev_events=[last],
            auth_events=[pl, member] if sender == creator else [pl],
            depth=len(pdus) + 1,
            origin_server_ts=now_ms(),
            server_name=sly.server_name,
            signing_key=key,
        )
        return dict(ev.pdu)

    forged = state_event(
        "m.room.topic", creator, {"topic": "forged"}, signedjson.key.generate_signing_key("fake1")
    )
    tampered = state_event("m.room.name", creator, {"name": "signed"}, sly.key)
    tampered["content"] = {"name": "changed after signing"}
    mallory = f"@mallory:{sly.server_name}"
    unauthorised = state_event("m.room.avatar", mallory, {"url": "mxc://x/y"}, sly.key)
    extra = {"forged": forged, "tampered": tampered, "unauthorised": unauthorised}

    def template(user: str, sender: str) -> dict[str, Any]:
        return {
            "room_version": "12",
            "event": {
                "type": "m.room.member",
                "room_id": room,
                "sender": sender,
                "state_key": sender,
                "content": {"membership": "join"},
                "depth": len(pdus) + 2,
                "prev_events": [last],
                "auth_events": [pl, jr],
                "origin_server_ts": now_ms(),
            },
        }

    async def bad_make_join(request: web.Request) -> web.Response:
        return web.json_response(template("", f"@someone:{bad.server_name}"))

    async def make_join(request: web.Request) -> web.Response:
        user = request.match_info["user_id"]
        return web.json_response(template(user, user))

    async def send_join(request: web.Request) -> web.Response:
        event = await request.json()
        body = {
            "origin": sly.server_name,
            "state": [*pdus, *extra.values()],
            "auth_chain": pdus,
            "event": event,
            "members_omitted": False,
        }
        return web.json_response(body)

    bad.add_route("GET", V1 + "/make_join/{room_id}/{user_id}", bad_make_join)
    sly.add_route("GET", V1 + "/make_join/{room_id}/{user_id}", make_join)
    sly.add_route("PUT", V2 + "/send_join/{room_id}/{event_id}", send_join)
    await bad.start()
    await sly.start()
    yield bad, sly, room, {k: compute_event_id(v, V12) for k, v in extra.items()}
    await sly.stop()
    await bad.stop()


async def test_join_checks_the_template_and_the_returned_state(
    pair: Pair, sly_residents: tuple[FakeOrigin, FakeOrigin, str, dict[str, str]]
) -> None:
    bad, sly, room, extra = sly_residents
    dave = await pair.client(pair.b).register(uniq("dave"))
    r = await dave.join(room, [bad.server_name, sly.server_name])
    assert r["room_id"] == room
    log = pair.b.log_path.read_text(errors="replace")
    assert f"joining {room} via {bad.server_name} failed" in log  # someone else's template
    state = {(e["type"], e["state_key"]): e for e in await dave.state(room)}
    assert set(state) == {
        ("m.room.create", ""),
        ("m.room.member", state[("m.room.create", "")]["sender"]),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
        ("m.room.member", dave.user_id),
    }
    # The forged topic was dropped, the avatar of a non-member rejected, and
    # the name whose content does not match its hash kept only redacted.
    assert state[("m.room.name", "")]["event_id"] == extra["tampered"]
    assert state[("m.room.name", "")]["content"] == {}
    assert state[("m.room.member", dave.user_id)]["content"]["membership"] == "join"
