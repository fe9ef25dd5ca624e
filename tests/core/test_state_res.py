"""State resolution v2 / v2.1 on the classic conflicts, with the winner
spelled out, and properties: the result does not depend on the order the
state sets (or the events) are given in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeserver.core.events import Event, StateKey
from homeserver.core.room_versions import V11, V12, RoomVersion
from homeserver.core.state_res import resolve_state

ALICE, BOB, CHARLIE, ZARA, ADMIN = "@alice:hs", "@bob:hs", "@charlie:hs", "@zara:hs", "@admin:hs"


@dataclass
class Dag:
    rv: RoomVersion
    events: dict[str, Event] = field(default_factory=dict)
    room_id: str = ""

    def add(
        self,
        eid: str,
        type: str,
        sender: str,
        content: dict[str, Any],
        state_key: str | None,
        auth: list[str],
        ts: int = 0,
    ) -> str:
        room_id = self.room_id or ("!create" if self.rv.room_id_is_create_event_hash else "!r:hs")
        self.room_id = room_id
        pdu = {
            "type": type,
            "sender": sender,
            "content": content,
            "room_id": room_id,
            "signatures": {"hs": {"ed25519:x": "s"}},
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if type == "m.room.create" and self.rv.room_id_is_create_event_hash:
            pdu.pop("room_id")
        self.events[eid] = Event(
            event_id=eid,
            room_id=room_id,
            type=type,
            sender=sender,
            content=content,
            state_key=state_key,
            depth=len(self.events) + 1,
            origin_server_ts=ts,
            prev_events=(),
            auth_events=tuple(auth),
            room_version=self.rv,
            pdu=pdu,
        )
        return eid

    def state(self, *ids: str) -> dict[StateKey, str]:
        out: dict[StateKey, str] = {}
        for i in ids:
            out[self.events[i].state_tuple] = i
        return out

    def chain(self, state: dict[StateKey, str]) -> set[str]:
        seen: set[str] = set()
        stack = list(state.values())
        while stack:
            e = stack.pop()
            if e in seen:
                continue
            seen.add(e)
            stack.extend(self.events[e].auth_events)
        return seen

    def resolve(self, *sets: dict[StateKey, str]) -> dict[StateKey, str]:
        return resolve_state(self.rv, list(sets), self.events, [self.chain(s) for s in sets])


def base(rv: RoomVersion, users: dict[str, int] | None = None) -> tuple[Dag, list[str]]:
    d = Dag(rv)
    create_id = "$create"
    content: dict[str, Any] = {"room_version": rv.identifier}
    d.add(create_id, "m.room.create", ALICE, content, "", [])
    c = [] if rv.room_id_is_create_event_hash else [create_id]
    d.add("$ima", "m.room.member", ALICE, {"membership": "join"}, ALICE, c)
    pl_users = dict(users or {})
    if not rv.privileged_creators:
        pl_users.setdefault(ALICE, 100)
    d.add("$ipower", "m.room.power_levels", ALICE, {"users": pl_users}, "", [*c, "$ima"])
    d.add("$ijr", "m.room.join_rules", ALICE, {"join_rule": "public"}, "", [*c, "$ima", "$ipower"])
    d.add("$imb", "m.room.member", BOB, {"membership": "join"}, BOB, [*c, "$ipower", "$ijr"])
    d.add(
        "$imc", "m.room.member", CHARLIE, {"membership": "join"}, CHARLIE, [*c, "$ipower", "$ijr"]
    )
    return d, ["$create", "$ima", "$ipower", "$ijr", "$imb", "$imc"]


def c(d: Dag) -> list[str]:
    return [] if d.rv.room_id_is_create_event_hash else ["$create"]


def test_ban_wins_over_concurrent_join() -> None:
    for rv in (V11, V12):
        d, b = base(rv)
        d.add(
            "$ban",
            "m.room.member",
            ALICE,
            {"membership": "ban"},
            ZARA,
            [*c(d), "$ima", "$ipower"],
            ts=10,
        )
        d.add(
            "$join",
            "m.room.member",
            ZARA,
            {"membership": "join"},
            ZARA,
            [*c(d), "$ipower", "$ijr"],
            ts=11,
        )
        r = d.resolve(d.state(*b, "$ban"), d.state(*b, "$join"))
        assert r[("m.room.member", ZARA)] == "$ban"


def test_power_level_demotion_beats_racing_topic() -> None:
    for rv in (V11, V12):
        d, b = base(rv)
        users = {BOB: 50} if rv.privileged_creators else {ALICE: 100, BOB: 50}
        d.add(
            "$pa",
            "m.room.power_levels",
            ALICE,
            {"users": users},
            "",
            [*c(d), "$ima", "$ipower"],
            ts=5,
        )
        d.add("$t1", "m.room.topic", ALICE, {"topic": "one"}, "", [*c(d), "$ima", "$pa"], ts=6)
        demoted = {} if rv.privileged_creators else {ALICE: 100}
        d.add(
            "$pb",
            "m.room.power_levels",
            ALICE,
            {"users": demoted},
            "",
            [*c(d), "$ima", "$pa"],
            ts=7,
        )
        d.add("$t2", "m.room.topic", BOB, {"topic": "two"}, "", [*c(d), "$imb", "$pa"], ts=8)
        common = (*b, "$t1")
        r = d.resolve(d.state(*common, "$pa", "$pb"), d.state(*common, "$pa", "$t2"))
        assert r[("m.room.power_levels", "")] == "$pb"
        # bob lost his power before "two": alice's earlier topic stands
        assert r[("m.room.topic", "")] == "$t1"


def test_join_rules_change_beats_racing_join() -> None:
    for rv in (V11, V12):
        d, b = base(rv)
        d.add(
            "$jr2",
            "m.room.join_rules",
            ALICE,
            {"join_rule": "invite"},
            "",
            [*c(d), "$ima", "$ipower"],
            ts=10,
        )
        d.add(
            "$zjoin",
            "m.room.member",
            ZARA,
            {"membership": "join"},
            ZARA,
            [*c(d), "$ipower", "$ijr"],
            ts=11,
        )
        r = d.resolve(d.state(*b, "$jr2"), d.state(*b, "$zjoin"))
        assert r[("m.room.join_rules", "")] == "$jr2"
        assert ("m.room.member", ZARA) not in r


def test_topic_conflict_later_timestamp_wins() -> None:
    d, b = base(V11)
    d.add("$ta", "m.room.topic", ALICE, {"topic": "a"}, "", ["$create", "$ima", "$ipower"], ts=20)
    d.add("$tb", "m.room.topic", ALICE, {"topic": "b"}, "", ["$create", "$ima", "$ipower"], ts=10)
    r = d.resolve(d.state(*b, "$ta"), d.state(*b, "$tb"))
    assert r[("m.room.topic", "")] == "$ta"  # same mainline: ordered by ts, last applied wins


def test_mainline_tie_broken_by_timestamp_then_event_id() -> None:
    d, b = base(V11)
    auth = ["$create", "$ima", "$ipower"]
    d.add("$tx", "m.room.topic", ALICE, {"topic": "x"}, "", auth, ts=5)
    d.add("$ty", "m.room.topic", ALICE, {"topic": "y"}, "", auth, ts=5)
    r = d.resolve(d.state(*b, "$tx"), d.state(*b, "$ty"))
    assert r[("m.room.topic", "")] == "$ty"  # equal ts: larger event id sorts last


def test_v12_creator_outranks_an_admin() -> None:
    d, b = base(V12, users={ADMIN: 100})
    d.add("$ima2", "m.room.member", ADMIN, {"membership": "join"}, ADMIN, ["$ipower", "$ijr"])
    b.append("$ima2")
    d.add(
        "$kick",
        "m.room.member",
        ALICE,
        {"membership": "leave"},
        ADMIN,
        ["$ima", "$ipower", "$ima2"],
        ts=50,
    )
    d.add(
        "$jr", "m.room.join_rules", ADMIN, {"join_rule": "invite"}, "", ["$ima2", "$ipower"], ts=1
    )
    r = d.resolve(d.state(*b, "$kick"), d.state(*b, "$jr"))
    assert r[("m.room.member", ADMIN)] == "$kick"
    assert r[("m.room.join_rules", "")] == "$ijr"  # the kicked admin's change fails


def _scenario() -> tuple[Dag, list[dict[StateKey, str]]]:
    d, b = base(V11)
    d.add(
        "$ban",
        "m.room.member",
        ALICE,
        {"membership": "ban"},
        ZARA,
        ["$create", "$ima", "$ipower"],
        ts=10,
    )
    d.add(
        "$join",
        "m.room.member",
        ZARA,
        {"membership": "join"},
        ZARA,
        ["$create", "$ipower", "$ijr"],
        ts=11,
    )
    d.add("$ta", "m.room.topic", ALICE, {"topic": "a"}, "", ["$create", "$ima", "$ipower"], ts=3)
    d.add("$tb", "m.room.topic", ALICE, {"topic": "b"}, "", ["$create", "$ima", "$ipower"], ts=4)
    d.add(
        "$jr2",
        "m.room.join_rules",
        ALICE,
        {"join_rule": "invite"},
        "",
        ["$create", "$ima", "$ipower"],
        ts=7,
    )
    return d, [
        d.state(*b, "$ban", "$ta"),
        d.state(*b, "$join", "$tb"),
        d.state(*b, "$jr2"),
        d.state(*b, "$ta", "$jr2"),
    ]


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(4)), st.randoms())
def test_result_independent_of_order(perm: list[int], rnd: Any) -> None:
    d, sets = _scenario()
    expected = d.resolve(*sets)
    shuffled = [sets[i] for i in perm]
    items = list(d.events.items())
    rnd.shuffle(items)
    d.events = dict(items)
    reordered = [dict(sorted(s.items(), key=lambda _: rnd.random())) for s in shuffled]
    assert d.resolve(*reordered) == expected


def test_an_event_not_given_is_an_error_not_a_silent_drop() -> None:
    """Issue 15: the incoming event, absent from ``events``, used to drop out
    of its own resolution. Every event named — in a state set, an auth
    chain, or cited by one — must be there, else ``MissingStateEvent``."""
    from homeserver.core.state_res import MissingStateEvent

    for rv in (V11, V12):
        d, b = base(rv)
        d.add("$ta", "m.room.topic", ALICE, {"topic": "a"}, "", [*c(d), "$ima", "$ipower"], ts=20)
        d.add("$tb", "m.room.topic", ALICE, {"topic": "b"}, "", [*c(d), "$ima", "$ipower"], ts=10)
        sa, sb = d.state(*b, "$ta"), d.state(*b, "$tb")
        chains = [d.chain(sa), d.chain(sb)]
        assert d.resolve(sa, sb)[("m.room.topic", "")] == "$ta"
        # The state's own event missing.
        lacking = {k: v for k, v in d.events.items() if k != "$ta"}
        with pytest.raises(MissingStateEvent) as e:
            resolve_state(rv, [sa, sb], lacking, chains)
        assert "$ta" in e.value.event_ids
        # An auth ancestor missing.
        lacking = {k: v for k, v in d.events.items() if k != "$ipower"}
        with pytest.raises(MissingStateEvent):
            resolve_state(rv, [sa, sb], lacking, chains)
