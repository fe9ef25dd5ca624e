"""Push rules (Client-Server API "Push Rules"): the server-default rules,
a user's rule set in priority order, and a compiled evaluator.

Pure: no database, no asyncio. A rule set is compiled once into a list of
predicates (glob patterns turned into regular expressions, property paths
split) so evaluating an event for one user is a handful of dictionary
lookups and, at most, a few regex searches.

Priority (spec "Push Rules"): ``.m.rule.master`` first, then the kinds in
the order override, content, room, sender, underride; within a kind the
user's own rules come before the server-default ones. The first enabled rule
whose conditions all hold gives the actions.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from typing import Any

from homeserver.core.events import Event
from homeserver.core.lru import CacheFill

KINDS = ("override", "content", "room", "sender", "underride")
MASTER = ".m.rule.master"
# Deprecated as of v1.7: only enabled for events without ``m.mentions``.
LEGACY_MENTION_RULES = frozenset(
    {".m.rule.contains_display_name", ".m.rule.roomnotif", ".m.rule.contains_user_name"}
)
# Actions older versions defined; ignored wherever they appear (spec
# "Historical Actions").
HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})

Action = str | Mapping[str, Any]


@dataclass(frozen=True)
class PushRule:
    """One rule; ``conditions`` for override/underride, ``pattern`` for
    content rules; room and sender rules match on their ``rule_id``."""

    kind: str
    rule_id: str
    actions: tuple[Action, ...]
    default: bool = False
    enabled: bool = True
    conditions: tuple[Mapping[str, Any], ...] = ()
    pattern: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule_id": self.rule_id,
            "default": self.default,
            "enabled": self.enabled,
            "actions": [a if isinstance(a, str) else dict(a) for a in self.actions],
        }
        if self.kind in ("override", "underride"):
            out["conditions"] = [dict(c) for c in self.conditions]
        if self.kind == "content":
            out["pattern"] = self.pattern
        return out

    def effective_conditions(self) -> tuple[Mapping[str, Any], ...]:
        """The rule's conditions, the predefined ones of content, room and
        sender rules spelled out."""
        if self.kind == "content":
            return ({"kind": "event_match", "key": "content.body", "pattern": self.pattern},)
        if self.kind == "room":
            return ({"kind": "event_match", "key": "room_id", "pattern": self.rule_id},)
        if self.kind == "sender":
            return ({"kind": "event_match", "key": "sender", "pattern": self.rule_id},)
        return self.conditions


# --------------------------------------------------------- the defaults

_SOUND = {"set_tweak": "sound", "value": "default"}
_RING = {"set_tweak": "sound", "value": "ring"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _match(key: str, pattern: str) -> dict[str, Any]:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def default_rules(user_id: str) -> tuple[PushRule, ...]:
    """The spec's server-default rules for ``user_id`` ("Predefined
    Rules"), in the spec's order within each kind."""
    localpart = user_id[1:].split(":", 1)[0]

    def o(rule_id: str, conditions: list[dict[str, Any]], *actions: Action) -> PushRule:
        return PushRule("override", rule_id, actions, True, True, tuple(conditions))

    def u(rule_id: str, conditions: list[dict[str, Any]], *actions: Action) -> PushRule:
        return PushRule("underride", rule_id, actions, True, True, tuple(conditions))

    return (
        PushRule("override", MASTER, (), True, False),
        o(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")]),
        o(
            ".m.rule.invite_for_me",
            [
                _match("type", "m.room.member"),
                _match("content.membership", "invite"),
                _match("state_key", user_id),
            ],
            "notify",
            _SOUND,
        ),
        o(".m.rule.member_event", [_match("type", "m.room.member")]),
        o(
            ".m.rule.is_user_mention",
            [
                {
                    "kind": "event_property_contains",
                    "key": "content.m\\.mentions.user_ids",
                    "value": user_id,
                }
            ],
            "notify",
            _SOUND,
            _HIGHLIGHT,
        ),
        o(
            ".m.rule.contains_display_name",
            [{"kind": "contains_display_name"}],
            "notify",
            _SOUND,
            _HIGHLIGHT,
        ),
        o(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            "notify",
            _HIGHLIGHT,
        ),
        o(
            ".m.rule.roomnotif",
            [
                _match("content.body", "@room"),
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            "notify",
            _HIGHLIGHT,
        ),
        o(
            ".m.rule.tombstone",
            [_match("type", "m.room.tombstone"), _match("state_key", "")],
            "notify",
            _HIGHLIGHT,
        ),
        o(".m.rule.reaction", [_match("type", "m.reaction")]),
        o(
            ".m.rule.room.server_acl",
            [_match("type", "m.room.server_acl"), _match("state_key", "")],
        ),
        o(
            ".m.rule.suppress_edits",
            [
                {
                    "kind": "event_property_is",
                    "key": "content.m\\.relates_to.rel_type",
                    "value": "m.replace",
                }
            ],
        ),
        PushRule(
            "content",
            ".m.rule.contains_user_name",
            ("notify", _SOUND, _HIGHLIGHT),
            True,
            True,
            pattern=localpart,
        ),
        u(".m.rule.call", [_match("type", "m.call.invite")], "notify", _RING),
        u(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            "notify",
            _SOUND,
        ),
        u(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            "notify",
            _SOUND,
        ),
        u(".m.rule.message", [_match("type", "m.room.message")], "notify"),
        u(".m.rule.encrypted", [_match("type", "m.room.encrypted")], "notify"),
    )


@dataclass(frozen=True)
class DefaultOverride:
    """A user's change to a server-default rule: ``enabled`` and/or
    ``actions`` (None: as the spec defines it)."""

    enabled: bool | None = None
    actions: tuple[Action, ...] | None = None


def ruleset(
    user_id: str,
    user_rules: Iterable[PushRule],
    overrides: Mapping[tuple[str, str], DefaultOverride],
) -> tuple[PushRule, ...]:
    """Every rule of the user in priority order: the master rule, then per
    kind the user's rules (in their stored order) before the defaults."""
    defaults = []
    for rule in default_rules(user_id):
        ov = overrides.get((rule.kind, rule.rule_id))
        if ov is not None:
            rule = replace(
                rule,
                enabled=rule.enabled if ov.enabled is None else ov.enabled,
                actions=rule.actions if ov.actions is None else ov.actions,
            )
        defaults.append(rule)
    mine = list(user_rules)
    out = [r for r in defaults if r.rule_id == MASTER]
    for kind in KINDS:
        out += [r for r in mine if r.kind == kind]
        out += [r for r in defaults if r.kind == kind and r.rule_id != MASTER]
    return tuple(out)


def render(rules: Sequence[PushRule]) -> dict[str, Any]:
    """``GET /pushrules/`` and the ``m.push_rules`` account data."""
    return {"global": {k: [r.to_json() for r in rules if r.kind == k] for k in KINDS}}


def notifies(actions: Sequence[Action]) -> bool:
    return "notify" in actions


def highlights(actions: Sequence[Action]) -> bool:
    """A ``highlight`` tweak without a value means true; none means false."""
    for a in actions:
        if isinstance(a, Mapping) and a.get("set_tweak") == "highlight":
            return a.get("value", True) is True
    return False


def strip_historical(actions: Iterable[Action]) -> tuple[Action, ...]:
    return tuple(a for a in actions if not (isinstance(a, str) and a in HISTORICAL_ACTIONS))


# ------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class RoomContext:
    """What conditions need beyond the event: the room's joined member
    count, its power levels content (None: no such event, so the creators
    hold 100), the creators, and the display name of the user the rules
    belong to (None when they have none) — all as of the event."""

    member_count: int
    power_levels: Mapping[str, Any] | None
    creators: frozenset[str]
    display_name: str | None
    privileged_creators: bool = False  # room v12: creators outrank everyone

    def power_of(self, user_id: str) -> float:
        """The user's power level (spec "m.room.power_levels"; creators of
        rooms without power levels hold 100, those of v12 rooms infinite)."""
        if self.privileged_creators and user_id in self.creators:
            return float("inf")
        if self.power_levels is None:
            return 100 if user_id in self.creators else 0
        users = self.power_levels.get("users")
        if isinstance(users, Mapping) and user_id in users:
            return _int(users[user_id], 0)
        return _int(self.power_levels.get("users_default"), 0)

    def notification_level(self, key: str) -> int:
        notif = (self.power_levels or {}).get("notifications")
        if isinstance(notif, Mapping) and key in notif:
            return _int(notif[key], 50)
        return 50


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,16}", value.strip()):
        return int(value)
    return default


Predicate = Callable[[Event, RoomContext], bool]
_MISSING = object()
WORD = "A-Za-z0-9_"


def split_path(key: str) -> tuple[str, ...]:
    """A dot-separated property path (appendix "Dot-separated property
    paths"): ``\\.`` is a literal dot and ``\\\\`` a literal backslash."""
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == "\\" and i + 1 < len(key) and key[i + 1] in ".\\":
            cur.append(key[i + 1])
            i += 2
            continue
        if ch == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return tuple(parts)


def _lookup(ev: Event, path: tuple[str, ...]) -> Any:
    head = path[0]
    value: Any
    if head == "content":
        value = ev.content
    elif head == "type":
        value = ev.type
    elif head == "sender":
        value = ev.sender
    elif head == "room_id":
        value = ev.room_id
    elif head == "state_key":
        value = ev.state_key if ev.state_key is not None else _MISSING
    else:
        value = ev.pdu.get(head, _MISSING)
    for part in path[1:]:
        if not isinstance(value, Mapping):
            return _MISSING
        value = value.get(part, _MISSING)
    return value


_FLAGS = re.IGNORECASE | re.DOTALL
_NOT_AFTER_WORD = f"(?<![{WORD}])"
_NOT_BEFORE_WORD = f"(?![{WORD}])"


class Glob:
    """A glob (appendix "Glob-style matching": ``*`` any run, ``?`` one
    character), case-insensitive, in time linear in the pattern times the
    text: a backtracking regex of several ``*`` takes polynomial time on a
    hostile body (``a*a*a*b`` against 2,000 ``a`` took 45 s), and anyone
    may store such a pattern in their own rules.

    The pattern is cut at each ``*`` into fixed-length segments (``?`` and
    literals, each one quantifier-free regex). A match places the first
    segment at the start, every middle segment at its leftmost occurrence
    after the previous one, and the last at the end: leftmost placement
    leaves the most room, so it finds a match whenever one exists."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts = [
            "".join("." if c == "?" else re.escape(c) for c in seg) for seg in pattern.split("*")
        ]
        self._parts = parts
        self._lengths = [len(seg) for seg in pattern.split("*")]
        self._segments = [re.compile(p, _FLAGS) for p in parts]
        self._whole = re.compile(parts[0], _FLAGS) if len(parts) == 1 else None

    # (content.body) the first segment after a word boundary, the last before
    # one, and a lone segment between two; compiled when first needed (a
    # server holds a glob per user for the default mention rules).
    @cached_property
    def _first_bounded(self) -> re.Pattern[str]:
        return re.compile(_NOT_AFTER_WORD + self._parts[0], _FLAGS)

    @cached_property
    def _last_bounded(self) -> re.Pattern[str]:
        return re.compile(self._parts[-1] + _NOT_BEFORE_WORD, _FLAGS)

    @cached_property
    def _lone_bounded(self) -> re.Pattern[str]:
        return re.compile(_NOT_AFTER_WORD + self._parts[0] + _NOT_BEFORE_WORD, _FLAGS)

    def matches(self, text: str) -> bool:
        """The whole of ``text`` matches."""
        if self._whole is not None:
            return self._whole.fullmatch(text) is not None
        if self._segments[0].match(text) is None:
            return False
        end = len(text) - self._lengths[-1]
        pos = self._middles(text, self._lengths[0], end)
        return (
            pos is not None and pos <= end and self._segments[-1].fullmatch(text, end) is not None
        )

    def search_words(self, text: str) -> bool:
        """Some part of ``text`` that starts and ends at word boundaries
        (start, end, or a character outside ``[A-Za-z0-9_]``) matches: the
        special case of ``content.body``."""
        if self._whole is not None:
            return self._lone_bounded.search(text) is not None
        first = self._first_bounded.search(text)
        if first is None:
            return False
        pos = self._middles(text, first.end(), len(text))
        return pos is not None and self._last_bounded.search(text, pos) is not None

    def _middles(self, text: str, pos: int, end: int) -> int | None:
        """Where the text goes on after the middle segments, each at its
        leftmost place from ``pos`` (None: one does not fit before ``end``)."""
        for rx in self._segments[1:-1]:
            found = rx.search(text, pos, end)
            if found is None:
                return None
            pos = found.end()
        return pos


@lru_cache(maxsize=4096)
def _display_name_regex(name: str) -> re.Pattern[str]:
    return re.compile(f"(?:^|[^{WORD}]){re.escape(name)}(?:[^{WORD}]|$)", re.IGNORECASE | re.DOTALL)


def _scalar(value: Any) -> bool:
    """Non-compound canonical JSON values (event_property_is/contains)."""
    if value is None or isinstance(value, (bool, str)):
        return True
    return isinstance(value, int) and -(2**53) < value < 2**53


def _same(a: Any, b: Any) -> bool:
    """Exact equality of JSON values, without Python's True == 1 or 1 == 1.0
    (str subclasses such as typed ids count as strings)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return type(a) is type(b) and a == b


def _member_count_test(spec: Any) -> Callable[[int], bool] | None:
    if not isinstance(spec, str):
        return None
    m = re.fullmatch(r"(==|<=|>=|<|>)?([0-9]{1,9})", spec.strip())
    if m is None:
        return None
    op, n = m.group(1) or "==", int(m.group(2))
    tests: dict[str, Callable[[int], bool]] = {
        "==": lambda c: c == n,
        "<": lambda c: c < n,
        ">": lambda c: c > n,
        "<=": lambda c: c <= n,
        ">=": lambda c: c >= n,
    }
    return tests[op]


def compile_condition(cond: Mapping[str, Any]) -> Predicate | None:
    """A predicate for one condition; None for one that never matches
    (unknown kinds and malformed parameters: spec "Conditions")."""
    kind = cond.get("kind")
    key = cond.get("key")
    if kind == "event_match":
        pattern = cond.get("pattern")
        if not isinstance(key, str) or not isinstance(pattern, str):
            return None
        path = split_path(key)
        if path == ("content", "body"):
            glob_ = Glob(pattern)

            def body_match(ev: Event, ctx: RoomContext) -> bool:
                value = _lookup(ev, path)
                return isinstance(value, str) and glob_.search_words(value)

            return body_match
        if "*" not in pattern and "?" not in pattern:
            folded = pattern.casefold()

            def exact(ev: Event, ctx: RoomContext) -> bool:
                value = _lookup(ev, path)
                return isinstance(value, str) and value.casefold() == folded

            return exact
        glob_ = Glob(pattern)

        def glob(ev: Event, ctx: RoomContext) -> bool:
            value = _lookup(ev, path)
            return isinstance(value, str) and glob_.matches(value)

        return glob
    if kind in ("event_property_is", "event_property_contains"):
        want = cond.get("value", _MISSING)
        if not isinstance(key, str) or want is _MISSING or not _scalar(want):
            return None
        path = split_path(key)
        if kind == "event_property_is":

            def prop_is(ev: Event, ctx: RoomContext) -> bool:
                value = _lookup(ev, path)
                return _scalar(value) and _same(value, want)

            return prop_is

        def prop_contains(ev: Event, ctx: RoomContext) -> bool:
            value = _lookup(ev, path)
            return isinstance(value, list) and any(_same(v, want) for v in value)

        return prop_contains
    if kind == "contains_display_name":

        def display_name(ev: Event, ctx: RoomContext) -> bool:
            body = ev.content.get("body")
            name = ctx.display_name
            if not isinstance(body, str) or not name:
                return False
            return _display_name_regex(name).search(body) is not None

        return display_name
    if kind == "room_member_count":
        test = _member_count_test(cond.get("is"))
        if test is None:
            return None
        return lambda ev, ctx: test(ctx.member_count)
    if kind == "sender_notification_permission":
        if not isinstance(key, str):
            return None
        return lambda ev, ctx: ctx.power_of(ev.sender) >= ctx.notification_level(key)
    return None


# Per event, shared by every member's evaluation of it: condition (as
# canonical JSON) → result. Every condition but ``contains_display_name``
# gives the same answer for all members (the room context is the event's),
# so a room of N members tests each condition of the default rules once per
# event, not N times.
Memo = dict[str, bool]
PER_USER_KINDS = frozenset({"contains_display_name"})


@lru_cache(maxsize=8192)
def _compiled_condition(key: str) -> Predicate | None:
    """``compile_condition`` shared by every rule set holding the condition."""
    return compile_condition(json.loads(key))


@dataclass(frozen=True)
class _Compiled:
    rule: PushRule
    # (memo key, or None for a per-user condition; predicate)
    checks: tuple[tuple[str | None, Predicate], ...]
    legacy: bool
    # memo key of the whole rule when no condition is per user
    key: str | None


# Compiled rules shared by every rule set holding the same rule: most of a
# user's rules are the server defaults, identical for everyone, and a
# compiled rule set of its own per user cost some 22 KB (a busy server keeps
# thousands). Weak: a rule lives as long as some evaluator uses it.
_SHARED: weakref.WeakValueDictionary[str, _Compiled] = weakref.WeakValueDictionary()


def _compile_rule(rule: PushRule) -> _Compiled | None:
    """``rule`` compiled, or None when a condition is not recognised (then
    the rule never matches)."""
    conditions = rule.effective_conditions()
    ident = json.dumps(
        [rule.kind, rule.rule_id, rule.actions, rule.default, conditions],
        sort_keys=True,
        separators=(",", ":"),
    )
    shared = _SHARED.get(ident)
    if shared is not None:
        return shared
    checks: list[tuple[str | None, Predicate]] = []
    for cond in conditions:
        key = json.dumps(cond, sort_keys=True, separators=(",", ":"))
        pred = _compiled_condition(key)
        if pred is None:
            return None
        checks.append((None if cond.get("kind") in PER_USER_KINDS else key, pred))
    keys = [k for k, _ in checks]
    whole = "&".join(k for k in keys if k) if all(keys) else None
    compiled = _Compiled(rule, tuple(checks), rule.rule_id in LEGACY_MENTION_RULES, whole)
    _SHARED[ident] = compiled
    return compiled


def cache_fill() -> dict[str, CacheFill]:
    """The process-wide compiled-rule caches, for the metrics (the shared
    rules are bounded by the rule sets that use them)."""
    names = _display_name_regex.cache_info()
    conditions = _compiled_condition.cache_info()
    shared = len(_SHARED)
    return {
        "push_display_name_regexes": CacheFill(names.currsize, names.currsize, names.maxsize or 0),
        "push_compiled_conditions": CacheFill(
            conditions.currsize, conditions.currsize, conditions.maxsize or 0
        ),
        "push_shared_rules": CacheFill(shared, shared, 0),
    }


class Evaluator:
    """A user's rule set compiled once; ``actions`` runs it on an event."""

    def __init__(self, rules: Sequence[PushRule]) -> None:
        compiled = (_compile_rule(rule) for rule in rules if rule.enabled)
        self._rules = tuple(c for c in compiled if c is not None)

    def match(self, ev: Event, ctx: RoomContext, memo: Memo | None = None) -> PushRule | None:
        """The first rule that matches ``ev`` (None: no notification);
        ``memo`` (one per event) carries condition results between members."""
        memo = {} if memo is None else memo
        mentions = "m.mentions" in ev.content
        for c in self._rules:
            if c.legacy and mentions:
                continue
            if c.key is not None:
                hit = memo.get(c.key)
                if hit is None:
                    hit = memo[c.key] = self._holds(c, ev, ctx, memo)
                if hit:
                    return c.rule
                continue
            if self._holds(c, ev, ctx, memo):
                return c.rule
        return None

    @staticmethod
    def _holds(c: _Compiled, ev: Event, ctx: RoomContext, memo: Memo) -> bool:
        """Whether every condition of ``c`` holds (each memoised unless per user)."""
        for key, pred in c.checks:
            if key is None:
                ok = pred(ev, ctx)
            else:
                got = memo.get(key)
                ok = got if got is not None else memo.setdefault(key, pred(ev, ctx))
            if not ok:
                return False
        return True

    def actions(self, ev: Event, ctx: RoomContext, memo: Memo | None = None) -> tuple[Action, ...]:
        rule = self.match(ev, ctx, memo)
        return strip_historical(rule.actions) if rule is not None else ()
