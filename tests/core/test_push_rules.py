"""The spec's server-default push rules, table-driven: for each rule an event
it matches (and which rule wins for it) and one it does not; plus the
condition kinds, priorities, user rules and the evaluator's edge cases. No
database."""

from __future__ import annotations

from typing import Any

import pytest

from homeserver.core import push_rules as pr
from homeserver.core.room_versions import V11, V12
from tests.core.test_auth_table import mk

ME = "@alice:hs.test"
OTHER = "@bob:hs.test"
ROOM = "!r:hs.test"


def ctx(
    members: int = 5,
    power: dict[str, Any] | None = None,
    name: str | None = "Alice Liddell",
) -> pr.RoomContext:
    pl = power if power is not None else {"users": {OTHER: 100}, "users_default": 0}
    return pr.RoomContext(members, pl, frozenset({OTHER}), name)


def ev(type: str = "m.room.message", content: dict[str, Any] | None = None, **kw: Any) -> Any:
    content = content if content is not None else {"msgtype": "m.text", "body": "hi"}
    return mk(V11, ROOM, type, kw.pop("sender", OTHER), content, kw.pop("state_key", None))


def text(body: str, **extra: Any) -> Any:
    return ev(content={"msgtype": "m.text", "body": body, **extra})


EVAL = pr.Evaluator(pr.ruleset(ME, [], {}))

# rule id → (an event it matches, its context, an event it does not match)
CASES: dict[str, tuple[Any, pr.RoomContext, Any, pr.RoomContext]] = {
    ".m.rule.suppress_notices": (
        ev(content={"msgtype": "m.notice", "body": "bot says"}),
        ctx(),
        text("hi"),
        ctx(),
    ),
    ".m.rule.invite_for_me": (
        ev("m.room.member", {"membership": "invite"}, state_key=ME),
        ctx(),
        ev("m.room.member", {"membership": "invite"}, state_key="@carol:hs.test"),
        ctx(),
    ),
    ".m.rule.member_event": (
        ev("m.room.member", {"membership": "join"}, state_key=OTHER),
        ctx(),
        text("joined?"),
        ctx(),
    ),
    ".m.rule.is_user_mention": (
        text("hey", **{"m.mentions": {"user_ids": [ME]}}),
        ctx(),
        text("hey", **{"m.mentions": {"user_ids": ["@carol:hs.test"]}}),
        ctx(),
    ),
    ".m.rule.contains_display_name": (
        text("ask alice liddell!"),
        ctx(),
        text("ask Alice Liddellx"),
        ctx(),
    ),
    ".m.rule.is_room_mention": (
        text("all", **{"m.mentions": {"room": True}}),
        ctx(),
        text("all", **{"m.mentions": {"room": True}}),
        ctx(power={"users": {}, "users_default": 0}),  # sender below notifications.room
    ),
    ".m.rule.roomnotif": (
        text("@room meeting now"),
        ctx(),
        text("@roomy meeting now"),
        ctx(),
    ),
    ".m.rule.tombstone": (
        ev("m.room.tombstone", {"body": "moved", "replacement_room": "!n:hs.test"}, state_key=""),
        ctx(),
        ev("m.room.tombstone", {"body": "moved"}, state_key="x"),
        ctx(),
    ),
    ".m.rule.reaction": (
        ev("m.reaction", {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x"}}),
        ctx(),
        ev("m.reactions", {}),
        ctx(),
    ),
    ".m.rule.room.server_acl": (
        ev("m.room.server_acl", {"allow": ["*"]}, state_key=""),
        ctx(),
        ev("m.room.server_acl", {"allow": ["*"]}, state_key="x"),
        ctx(),
    ),
    ".m.rule.suppress_edits": (
        text("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}),
        ctx(),
        text("reply", **{"m.relates_to": {"rel_type": "m.thread", "event_id": "$x"}}),
        ctx(),
    ),
    ".m.rule.contains_user_name": (
        text("is ALICE here?"),
        ctx(name=None),
        text("is alicetown here?"),
        ctx(name=None),
    ),
    ".m.rule.call": (
        ev("m.call.invite", {"call_id": "c", "version": 1}),
        ctx(),
        ev("m.call.answer", {"call_id": "c", "version": 1}),
        ctx(),
    ),
    ".m.rule.encrypted_room_one_to_one": (
        ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2"}),
        ctx(members=2),
        ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2"}),
        ctx(members=3),
    ),
    ".m.rule.room_one_to_one": (text("dm"), ctx(members=2), text("dm"), ctx(members=3)),
    ".m.rule.message": (text("group chat"), ctx(), ev("m.sticker", {"body": "x"}), ctx()),
    ".m.rule.encrypted": (
        ev("m.room.encrypted", {"algorithm": "m.megolm.v1.aes-sha2"}),
        ctx(),
        ev("m.room.encrypted_not", {}),
        ctx(),
    ),
}


def test_every_default_rule_has_a_case_and_the_spec_order() -> None:
    rules = pr.default_rules(ME)
    assert {r.rule_id for r in rules} - {pr.MASTER} == set(CASES)
    ids = [r.rule_id for r in pr.ruleset(ME, [], {})]
    assert ids == [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.contains_display_name",
        ".m.rule.is_room_mention",
        ".m.rule.roomnotif",
        ".m.rule.tombstone",
        ".m.rule.reaction",
        ".m.rule.room.server_acl",
        ".m.rule.suppress_edits",
        ".m.rule.contains_user_name",
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ]
    master = rules[0]
    assert master.enabled is False and master.actions == ()


@pytest.mark.parametrize("rule_id", list(CASES))
def test_default_rule_matches_and_does_not(rule_id: str) -> None:
    match, mctx, miss, nctx = CASES[rule_id]
    # Alone, the rule takes its event and leaves the other.
    rule = next(r for r in pr.default_rules(ME) if r.rule_id == rule_id)
    alone = pr.Evaluator([rule])
    assert alone.match(match, mctx) == rule
    assert alone.match(miss, nctx) is None
    # Among all of them, it is the one that decides its event.
    assert EVAL.match(match, mctx) == rule
    won = EVAL.match(miss, nctx)
    assert won is None or won.rule_id != rule_id


@pytest.mark.parametrize(
    ("event", "context", "notify", "highlight"),
    [
        (text("hello"), ctx(), True, False),
        (text("hello alice"), ctx(), True, True),
        (text("hello", **{"m.mentions": {"user_ids": [ME]}}), ctx(), True, True),
        # m.mentions present: the legacy display-name and user-name rules are off.
        (text("hello alice", **{"m.mentions": {}}), ctx(), True, False),
        (ev(content={"msgtype": "m.notice", "body": "alice"}), ctx(), False, False),
        (ev("m.reaction", {}), ctx(), False, False),
        (ev("m.room.topic", {"topic": "t"}, state_key=""), ctx(), False, False),
    ],
)
def test_actions_give_notify_and_highlight(
    event: Any, context: pr.RoomContext, notify: bool, highlight: bool
) -> None:
    actions = EVAL.actions(event, context)
    assert pr.notifies(actions) is notify
    assert pr.highlights(actions) is highlight


def test_master_rule_enabled_silences_everything_even_user_rules() -> None:
    mine = [pr.PushRule("sender", OTHER, ("notify",))]
    ev_ = text("hello alice")
    on = pr.Evaluator(pr.ruleset(ME, mine, {("override", pr.MASTER): pr.DefaultOverride(True)}))
    assert on.actions(ev_, ctx()) == ()
    off = pr.Evaluator(pr.ruleset(ME, mine, {}))
    assert off.match(ev_, ctx()) is not None


def test_user_rules_come_before_defaults_of_their_kind() -> None:
    quiet_room = pr.PushRule("room", ROOM, ())
    evaluator = pr.Evaluator(pr.ruleset(ME, [quiet_room], {}))
    assert evaluator.match(text("hi"), ctx()) == quiet_room
    # ...but after every override rule: a mention still highlights.
    assert pr.highlights(evaluator.actions(text("alice!"), ctx()))
    # A disabled default rule never matches; changed actions apply.
    changed = pr.ruleset(
        ME,
        [],
        {
            ("underride", ".m.rule.message"): pr.DefaultOverride(False),
            ("override", ".m.rule.suppress_notices"): pr.DefaultOverride(None, ("notify",)),
        },
    )
    evaluator = pr.Evaluator(changed)
    assert evaluator.match(text("hi"), ctx()) is None
    notice = ev(content={"msgtype": "m.notice", "body": "x"})
    assert evaluator.actions(notice, ctx()) == ("notify",)


def test_historical_actions_are_ignored() -> None:
    rule = pr.PushRule("override", "x", ("dont_notify", "coalesce", "notify"), conditions=())
    assert pr.Evaluator([rule]).actions(text("a"), ctx()) == ("notify",)
    legacy = pr.PushRule("override", "y", ("dont_notify",))
    assert not pr.notifies(pr.Evaluator([legacy]).actions(text("a"), ctx()))


@pytest.mark.parametrize(
    ("condition", "event", "expected"),
    [
        (
            {"kind": "event_match", "key": "content.body", "pattern": "ex*ple"},
            text("An example."),
            True,
        ),
        ({"kind": "event_match", "key": "content.body", "pattern": "ex*ple"}, text("exple"), True),
        (
            {"kind": "event_match", "key": "content.body", "pattern": "ex*ple"},
            text("An exciting triple-whammy"),
            True,
        ),
        (
            {"kind": "event_match", "key": "content.body", "pattern": "ex*ple"},
            text("examples"),
            False,
        ),
        (
            {"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"},
            ev("m.room.topic", {"topic": "LUNCH"}),
            True,
        ),
        (
            {"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"},
            ev("m.room.topic", {"topic": " lunch"}),
            False,
        ),
        (
            {"kind": "event_match", "key": "content.topic", "pattern": "lunc?*"},
            ev("m.room.topic", {"topic": "lunc"}),
            False,
        ),
        (
            {"kind": "event_match", "key": "content.topic", "pattern": "*"},
            ev("m.room.topic", {"topic": None}),
            False,
        ),
        (
            {"kind": "event_match", "key": "content.topic", "pattern": "*"},
            ev("m.room.topic", {}),
            False,
        ),
        ({"kind": "event_match", "key": "type", "pattern": "m.room.*"}, text("x"), True),
        (
            {"kind": "event_property_is", "key": "content.m\\.federate", "value": True},
            ev("m.room.create", {"m.federate": True}, state_key=""),
            True,
        ),
        (
            {"kind": "event_property_is", "key": "content.m\\.federate", "value": True},
            ev("m.room.create", {"m.federate": "true"}, state_key=""),
            False,
        ),
        (
            {"kind": "event_property_is", "key": "content.n", "value": 1},
            ev("x", {"n": True}),
            False,
        ),
        (
            {"kind": "event_property_contains", "key": "content.alt_aliases", "value": "#a:b"},
            ev("m.room.canonical_alias", {"alt_aliases": ["#z:b", "#a:b"]}, state_key=""),
            True,
        ),
        (
            {"kind": "event_property_contains", "key": "content.alt_aliases", "value": ":b"},
            ev("m.room.canonical_alias", {"alt_aliases": ["#z:b", "#a:b"]}, state_key=""),
            False,
        ),
        ({"kind": "room_member_count", "is": "<=10"}, text("x"), True),
        ({"kind": "room_member_count", "is": ">5"}, text("x"), False),
        ({"kind": "room_member_count", "is": "5"}, text("x"), True),
        ({"kind": "room_member_count", "is": "five"}, text("x"), False),
        ({"kind": "org.example.unknown"}, text("x"), False),
        ({"kind": "event_match", "key": "content.body"}, text("x"), False),
    ],
)
def test_conditions(condition: dict[str, Any], event: Any, expected: bool) -> None:
    rule = pr.PushRule("override", "t", ("notify",), conditions=(condition,))
    assert (pr.Evaluator([rule]).match(event, ctx()) is not None) is expected


def test_split_path_escapes() -> None:
    assert pr.split_path("content.m\\.relates_to.rel_type") == (
        "content",
        "m.relates_to",
        "rel_type",
    )
    assert pr.split_path("a\\\\.b") == ("a\\", "b")


def test_sender_notification_permission_defaults_and_v12_creators() -> None:
    rule = pr.PushRule(
        "override",
        "t",
        ("notify",),
        conditions=({"kind": "sender_notification_permission", "key": "room"},),
    )
    evaluator = pr.Evaluator([rule])
    low = pr.RoomContext(5, {"users": {OTHER: 49}}, frozenset(), None)
    assert evaluator.match(text("x"), low) is None
    custom = pr.RoomContext(
        5, {"users": {OTHER: 10}, "notifications": {"room": 10}}, frozenset(), None
    )
    assert evaluator.match(text("x"), custom) is not None
    no_pl = pr.RoomContext(5, None, frozenset({OTHER}), None)
    assert evaluator.match(text("x"), no_pl) is not None
    v12 = pr.RoomContext(5, {"users": {}}, frozenset({OTHER}), None, privileged_creators=True)
    v12_event = mk(V12, ROOM, "m.room.message", OTHER, {"body": "x"})
    assert evaluator.match(v12_event, v12) is not None


def test_render_shape() -> None:
    out = pr.render(
        pr.ruleset(ME, [pr.PushRule("content", "cake", ("notify",), pattern="cake")], {})
    )
    assert list(out["global"]) == ["override", "content", "room", "sender", "underride"]
    content = out["global"]["content"]
    assert content[0] == {
        "rule_id": "cake",
        "default": False,
        "enabled": True,
        "actions": ["notify"],
        "pattern": "cake",
    }
    assert content[1]["rule_id"] == ".m.rule.contains_user_name"
    assert content[1]["pattern"] == "alice"
    assert "conditions" in out["global"]["override"][0]


def _reference(pattern: str, text: str, *, words: bool) -> bool:
    """Brute force over every candidate part, for comparison."""
    import fnmatch

    def glob(part: str) -> bool:
        return fnmatch.fnmatchcase(part.casefold(), pattern.casefold().replace("[", "[[]"))

    if not words:
        return glob(text)

    def word(c: str) -> bool:
        return c.isascii() and (c.isalnum() or c == "_")

    def boundary(i: int) -> bool:  # a part may start at i
        return i == 0 or not word(text[i - 1])

    def end_boundary(j: int) -> bool:  # a part may end before j
        return j == len(text) or not word(text[j])

    return any(
        glob(text[i:j])
        for i in range(len(text) + 1)
        if boundary(i)
        for j in range(i, len(text) + 1)
        if end_boundary(j)
    )


def test_glob_agrees_with_brute_force() -> None:
    import random

    rng = random.Random(17)
    for _ in range(3000):
        pattern = "".join(rng.choice("ab*?-") for _ in range(rng.randint(0, 6)))
        text = "".join(rng.choice("abAB -_") for _ in range(rng.randint(0, 9)))
        g = pr.Glob(pattern)
        assert g.matches(text) == _reference(pattern, text, words=False), (pattern, text)
        assert g.search_words(text) == _reference(pattern, text, words=True), (pattern, text)


def test_glob_is_not_a_backtracking_trap() -> None:
    """A hostile pattern of many stars against a long body stays fast
    (a backtracking regex took 45 s for a*a*a*b over 2,000 letters)."""
    import time

    text = "a" * 60_000
    start = time.perf_counter()
    for pattern in ("a*a*a*a*a*b", "*a*a*a*a*a*b*", "?*?*?*?*b"):
        assert not pr.Glob(pattern).search_words(text)
        assert not pr.Glob(pattern).matches(text)
    assert time.perf_counter() - start < 2.0


def test_compiled_default_rules_are_shared_between_users() -> None:
    """Every user's rule set is compiled and kept (one per active user): the
    default rules that do not name the user are compiled once for all, so a
    server with thousands of users does not hold thousands of copies."""
    alice = pr.Evaluator(pr.ruleset(ME, [], {}))
    bob = pr.Evaluator(pr.ruleset(OTHER, [], {}))
    by_id = {c.rule.rule_id: c for c in bob._rules}
    shared = [c.rule.rule_id for c in alice._rules if by_id[c.rule.rule_id] is c]
    personal = sorted(c.rule.rule_id for c in alice._rules if by_id[c.rule.rule_id] is not c)
    assert personal == [
        ".m.rule.contains_user_name",
        ".m.rule.invite_for_me",
        ".m.rule.is_user_mention",
    ]
    assert ".m.rule.suppress_notices" in shared and ".m.rule.message" in shared
    # The personal rules still answer for their own user only.
    invite = ev("m.room.member", {"membership": "invite"}, state_key="@bob:hs.test")
    assert bob.match(invite, ctx()) is by_id[".m.rule.invite_for_me"].rule
    assert alice.match(invite, ctx()) is not None
    assert alice.match(invite, ctx()).rule_id == ".m.rule.member_event"  # type: ignore[union-attr]
