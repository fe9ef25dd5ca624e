"""Authorization rules, table-driven: for every numbered rule of room
versions 10, 11 and 12, an event that passes and one that fails for that
rule's reason. No database: events are built directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from nacl.signing import SigningKey
from unpaddedbase64 import encode_base64

from homeserver.core.auth import AuthError, check_auth, get_user_power_level
from homeserver.core.canonical import encode_canonical_json
from homeserver.core.events import Event, StateKey
from homeserver.core.room_versions import V10, V11, V12, RoomVersion

CREATOR, MOD, USER, BANNED, INVITED, OUT = (
    "@creator:hs",
    "@mod:hs",
    "@user:hs",
    "@banned:hs",
    "@invited:hs",
    "@out:hs",
)
_n = [0]


def mk(
    rv: RoomVersion,
    room_id: str,
    type: str,
    sender: str,
    content: dict[str, Any],
    state_key: str | None = None,
    prev: tuple[str, ...] = ("$prev",),
    event_id: str | None = None,
    pdu_extra: dict[str, Any] | None = None,
) -> Event:
    _n[0] += 1
    pdu: dict[str, Any] = {
        "type": type,
        "sender": sender,
        "content": content,
        "room_id": room_id,
        "signatures": {"hs": {"ed25519:x": "s"}},
    }
    if state_key is not None:
        pdu["state_key"] = state_key
    pdu.update(pdu_extra or {})
    return Event(
        event_id=event_id or f"$e{_n[0]}",
        room_id=room_id,
        type=type,
        sender=sender,
        content=content,
        state_key=state_key,
        depth=10,
        origin_server_ts=_n[0],
        prev_events=prev,
        auth_events=(),
        room_version=rv,
        pdu=pdu,
    )


@dataclass
class Room:
    rv: RoomVersion
    room_id: str
    state: dict[StateKey, Event]

    def ev(
        self,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None = None,
        **kw: Any,
    ) -> Event:
        return mk(self.rv, self.room_id, type, sender, content, state_key, **kw)

    def member(
        self, user: str, membership: str, sender: str | None = None, **content: Any
    ) -> Event:
        return self.ev("m.room.member", sender or user, {"membership": membership, **content}, user)

    def set(self, e: Event) -> Room:
        self.state[e.state_tuple] = e
        return self

    def check(self, e: Event) -> None:
        check_auth(e, self.state)


def room(rv: RoomVersion, join_rule: str = "public", **pl_extra: Any) -> Room:
    create_content: dict[str, Any] = {"room_version": rv.identifier}
    if not rv.implicit_room_creator:
        create_content["creator"] = CREATOR
    if rv.room_id_is_create_event_hash:
        room_id = "!createhash"
        create = mk(
            rv,
            room_id,
            "m.room.create",
            CREATOR,
            create_content,
            "",
            prev=(),
            event_id="$createhash",
        )
        create.pdu.pop("room_id")  # type: ignore[attr-defined]
    else:
        room_id = "!room:hs"
        create = mk(rv, room_id, "m.room.create", CREATOR, create_content, "", prev=())
    r = Room(rv, room_id, {})
    r.set(create)
    users = {MOD: 50}
    if not rv.privileged_creators:
        users[CREATOR] = 100
    r.set(r.ev("m.room.power_levels", CREATOR, {"users": users, **pl_extra}, ""))
    r.set(r.ev("m.room.join_rules", CREATOR, {"join_rule": join_rule}, ""))
    for u, m in (
        (CREATOR, "join"),
        (MOD, "join"),
        (USER, "join"),
        (BANNED, "ban"),
        (INVITED, "invite"),
        (OUT, "leave"),
    ):
        r.set(r.member(u, m, CREATOR if m in ("ban", "invite") else None))
    return r


ALL = [V10, V11, V12]
Case = Callable[[RoomVersion], tuple[Room, Event]]
CASES: list[tuple[str, list[RoomVersion], bool, str, Case]] = []


def case(
    rule: str, versions: list[RoomVersion], passes: bool, reason: str = ""
) -> Callable[[Case], Case]:
    def deco(fn: Case) -> Case:
        CASES.append((rule, versions, passes, reason, fn))
        return fn

    return deco


# 1. m.room.create --------------------------------------------------------
def _create(rv: RoomVersion, **content: Any) -> Event:
    c: dict[str, Any] = {"room_version": rv.identifier, **content}
    if not rv.implicit_room_creator:
        c.setdefault("creator", CREATOR)
    e = mk(rv, "!new:hs", "m.room.create", CREATOR, c, "", prev=())
    if rv.room_id_is_create_event_hash:
        e.pdu.pop("room_id")  # type: ignore[attr-defined]
    return e


@case("1.1", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    return room(rv), _create(rv)


@case("1.1", ALL, False, "no prev_events")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    e = _create(rv)
    object.__setattr__(e, "prev_events", ("$x",))
    return room(rv), e


@case("1.2", [V10, V11], False, "server does not match")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    c = {"room_version": rv.identifier, "creator": CREATOR}
    return room(rv), mk(rv, "!new:elsewhere", "m.room.create", CREATOR, c, "", prev=())


@case("1.2", [V12], False, "must not have a room_id")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    e = _create(rv)
    e.pdu["room_id"] = "!x"  # type: ignore[index]
    return room(rv), e


@case("1.3", ALL, False, "unsupported room version")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    return room(rv), _create(rv, room_version="999")


@case("1.4", [V10], False, "no creator")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    e = mk(rv, "!new:hs", "m.room.create", CREATOR, {"room_version": "10"}, "", prev=())
    return room(rv), e


@case("1.4", [V12], True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    return room(rv), _create(rv, additional_creators=[MOD])


@case("1.4", [V12], False, "additional_creators")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    return room(rv), _create(rv, additional_creators=["not a user"])


# 2. auth events / 3. m.federate ----------------------------------------
@case("2", ALL, False, "no m.room.create")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    del r.state[("m.room.create", "")]
    return r, r.ev("m.room.message", USER, {})


@case("3", ALL, False, "does not federate")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    create = r.state[("m.room.create", "")]
    create.content["m.federate"] = False  # type: ignore[index]
    r.set(r.member("@x:other", "join"))
    return r, r.ev("m.room.message", "@x:other", {})


@case("3", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    r.state[("m.room.create", "")].content["m.federate"] = False  # type: ignore[index]
    return r, r.ev("m.room.message", USER, {})


# 4. m.room.member ------------------------------------------------------
@case("4.1", ALL, False, "need a state_key and a membership")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.ev("m.room.member", "@new:hs", {}, "@new:hs")


@case("4.2", ALL, False, "not signed by the authorising")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "restricted")
    # The event carries only hs's signature, not elsewhere's.
    return r, r.member("@new:hs", "join", join_authorised_via_users_server="@x:elsewhere")


@case("4.3.1", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    create = r.state[("m.room.create", "")]
    return r, r.ev(
        "m.room.member", CREATOR, {"membership": "join"}, CREATOR, prev=(create.event_id,)
    )


@case("4.3.2", ALL, False, "on behalf of someone else")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member("@new:hs", "join", sender=USER)


@case("4.3.3", ALL, False, "banned")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(BANNED, "join")


@case("4.3.4", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "invite")
    return r, r.member(INVITED, "join")


@case("4.3.4", ALL, False, "not invited")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "invite")
    return r, r.member("@new:hs", "join")


@case("4.3.5", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "restricted")
    return r, r.member("@new:hs", "join", join_authorised_via_users_server=MOD)


@case("4.3.5", ALL, False, "cannot invite")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "restricted", invite=60)
    return r, r.member("@new:hs", "join", join_authorised_via_users_server=MOD)


@case("4.3.6", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "public")
    return r, r.member("@new:hs", "join")


@case("4.3.7", ALL, False, "join rule is 'private'")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "private")
    return r, r.member("@new:hs", "join")


def _tpi_room(rv: RoomVersion, signer: SigningKey) -> Room:
    r = room(rv)
    r.set(
        r.ev(
            "m.room.third_party_invite",
            USER,
            {"public_key": encode_base64(signer.verify_key.encode())},
            "tok",
        )
    )
    return r


def _tpi_signed(signer: SigningKey, mxid: str) -> dict[str, Any]:
    signed = {"mxid": mxid, "token": "tok", "sender": USER}
    sig = signer.sign(encode_canonical_json(signed)).signature
    return {**signed, "signatures": {"id.example": {"ed25519:0": encode_base64(sig)}}}


@case("4.4.1", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    k = SigningKey.generate()
    r = _tpi_room(rv, k)
    return r, r.member(
        "@new:hs",
        "invite",
        sender=USER,
        third_party_invite={"display_name": "n", "signed": _tpi_signed(k, "@new:hs")},
    )


@case("4.4.1", ALL, False, "signature does not verify")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    k = SigningKey.generate()
    r = _tpi_room(rv, k)
    return r, r.member(
        "@new:hs",
        "invite",
        sender=USER,
        third_party_invite={
            "display_name": "n",
            "signed": _tpi_signed(SigningKey.generate(), "@new:hs"),
        },
    )


@case("4.4.1", ALL, False, "mxid does not match")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    k = SigningKey.generate()
    r = _tpi_room(rv, k)
    return r, r.member(
        "@new:hs",
        "invite",
        sender=USER,
        third_party_invite={"display_name": "n", "signed": _tpi_signed(k, "@x:hs")},
    )


@case("4.4.2", ALL, False, "is not in the room")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member("@new:hs", "invite", sender=OUT)


@case("4.4.3", ALL, False, "already in the room")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(USER, "invite", sender=MOD)


@case("4.4.3", ALL, False, "banned from the room")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(BANNED, "invite", sender=MOD)


@case("4.4.4", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member("@new:hs", "invite", sender=USER)


@case("4.4.5", ALL, False, "insufficient power to invite")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, invite=50)
    return r, r.member("@new:hs", "invite", sender=USER)


@case("4.5.1", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(INVITED, "leave")


@case("4.5.1", ALL, False, "you are not in the room")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(OUT, "leave")


@case("4.5.2", ALL, False, "is not in the room")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(USER, "leave", sender=OUT)


@case("4.5.3", ALL, False, "insufficient power to unban")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(BANNED, "leave", sender=USER)


@case("4.5.4", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(USER, "leave", sender=MOD)


@case("4.5.5", ALL, False, "at least your power level")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(CREATOR, "leave", sender=MOD)


@case("4.5.5", ALL, False, "insufficient power to kick")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(MOD, "leave", sender=USER)


@case("4.6.1", ALL, False, "is not in the room")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(USER, "ban", sender=OUT)


@case("4.6.2", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(USER, "ban", sender=MOD)


@case("4.6.3", ALL, False, "insufficient power to ban")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(MOD, "ban", sender=USER)


@case("4.7.1", ALL, False, "does not accept knocks")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "invite")
    return r, r.member("@new:hs", "knock")


@case("4.7.2", ALL, False, "on behalf of someone else")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "knock")
    return r, r.member("@new:hs", "knock", sender=USER)


@case("4.7.3", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "knock")
    return r, r.member("@new:hs", "knock")


@case("4.7.4", ALL, False, "while your membership is invite")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, "knock_restricted")
    return r, r.member(INVITED, "knock")


@case("4.8", ALL, False, "unknown membership")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.member(USER, "dance")


# 5-10 -----------------------------------------------------------------
@case("5", ALL, False, "is not in the room")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.ev("m.room.message", OUT, {"body": "hi"})


@case("6", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.ev("m.room.third_party_invite", USER, {"public_key": "k"}, "t")


@case("6", ALL, False, "insufficient power to invite")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, invite=50)
    return r, r.ev("m.room.third_party_invite", USER, {"public_key": "k"}, "t")


@case("7", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.ev("m.room.topic", MOD, {"topic": "t"}, "")


@case("7", ALL, False, "insufficient power level to send m.room.topic")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.ev("m.room.topic", USER, {"topic": "t"}, "")


@case("8", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0)
    return r, r.ev("x.custom", USER, {}, USER)


@case("8", ALL, False, "keyed by another user")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0)
    return r, r.ev("x.custom", USER, {}, MOD)


def _pl(r: Room, sender: str, **content: Any) -> Event:
    base = dict(r.state[("m.room.power_levels", "")].content)
    base.update(content)
    return r.ev("m.room.power_levels", sender, base, "")


@case("9.1", ALL, False, "must be an integer")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, _pl(r, CREATOR, ban="50")


@case("9.2", ALL, False, "must map to integers")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, _pl(r, CREATOR, events={"m.room.name": "50"})


@case("9.3", ALL, False, "invalid user id")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, _pl(
        r, CREATOR, users={"nobody": 5, **r.state[("m.room.power_levels", "")].content["users"]}
    )


@case("9.3", [V12], False, "creators cannot be given a power level")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, _pl(r, CREATOR, users={CREATOR: 100, MOD: 50})


@case("9.4", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    del r.state[("m.room.power_levels", "")]
    return r, r.ev("m.room.power_levels", CREATOR, {"users": {MOD: 50}, "ban": 1000}, "")


@case("9.5", ALL, False, "beyond your own power level")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0)
    return r, _pl(r, MOD, ban=80)


@case("9.6", ALL, False, "above your power level")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0, events={"m.room.tombstone": 100})
    return r, _pl(r, MOD, events={"m.room.tombstone": 10})


@case("9.7", ALL, False, "above your power level")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0)
    return r, _pl(r, MOD, events={"x.new": 90})


@case("9.8", ALL, False, "not below yours")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0)
    users = dict(r.state[("m.room.power_levels", "")].content["users"])
    users["@peer:hs"] = 50
    r.set(_pl(r, CREATOR, users=users))
    users2 = dict(users)
    users2["@peer:hs"] = 0
    return r, _pl(r, MOD, users=users2)


@case("9.9", ALL, False, "more power than you have")
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0)
    users = dict(r.state[("m.room.power_levels", "")].content["users"])
    users[USER] = 75
    return r, _pl(r, MOD, users=users)


@case("9.10", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv, state_default=0)
    users = dict(r.state[("m.room.power_levels", "")].content["users"])
    users[USER] = 25
    return r, _pl(r, MOD, users=users, kick=40)


@case("10", ALL, True)
def _(rv: RoomVersion) -> tuple[Room, Event]:
    r = room(rv)
    return r, r.ev("m.room.message", USER, {"body": "hello"})


PARAMS = [
    pytest.param(
        fn, rv, passes, reason, id=f"v{rv.identifier}-rule{rule}-{'pass' if passes else 'fail'}-{i}"
    )
    for i, (rule, versions, passes, reason, fn) in enumerate(CASES)
    for rv in versions
]


@pytest.mark.parametrize(("build", "rv", "passes", "reason"), PARAMS)
def test_rule(build: Case, rv: RoomVersion, passes: bool, reason: str) -> None:
    r, e = build(rv)
    if passes:
        r.check(e)
    else:
        with pytest.raises(AuthError, match=reason):
            r.check(e)


def test_every_rule_has_a_passing_and_failing_case() -> None:
    rules_pass = {c[0].split(".")[0] for c in CASES if c[2]}
    rules_fail = {c[0].split(".")[0] for c in CASES if not c[2]}
    assert {"1", "4", "6", "7", "8", "9"} <= rules_pass
    assert {"1", "2", "3", "4", "5", "6", "7", "8", "9"} <= rules_fail


def test_v12_creators_have_unlimited_power() -> None:
    r = room(V12)
    create = r.state[("m.room.create", "")]
    assert get_user_power_level(CREATOR, r.state[("m.room.power_levels", "")], create) == float(
        "inf"
    )
    # a PL-100 admin cannot kick the creator; the creator can kick the admin
    users = {MOD: 50, "@admin:hs": 100}
    r.set(_pl(r, CREATOR, users=users))
    r.set(r.member("@admin:hs", "join"))
    with pytest.raises(AuthError):
        r.check(r.member(CREATOR, "leave", sender="@admin:hs"))
    r.check(r.member("@admin:hs", "leave", sender=CREATOR))


def test_state_needs_50_without_a_power_levels_event() -> None:
    """matrix-spec#1479: the state default is 50 even when the room has no
    power levels event yet (only the creator, at 100, may send state)."""
    from homeserver.core.auth import get_required_level

    assert get_required_level("m.room.topic", True, None) == 50
    assert get_required_level("m.room.message", False, None) == 0
