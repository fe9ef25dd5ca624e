"""Push rules, notification counts, ``/notifications`` and pushers.

Rules: the spec's server defaults (core/push_rules.py) plus each user's own
rules and changes to defaults, one document per user (storage/push.py); every
change is also written as the user's ``m.push_rules`` account data, which is
how clients hear of it through /sync.

Evaluation runs at read time, outside the append transaction, so the send
path (``Persister.commit_plain``'s one-statement append) gains nothing. When
a user's counts are needed (/sync, /notifications), the events from others
since the position evaluated last for that (user, room) — the user's join,
the first time — are run through the user's compiled rule set, and the
events that notify are stored together with the new evaluated position in
one statement: each event is evaluated once per member, a crash loses
nothing (the next read resumes from the stored position), and several
processes may race (the rows are idempotent). Counts are then the stored
notifications after the user's furthest read receipt, per thread.

Conditions see the room as of the event: member count, power levels and the
user's display name come from the event's state group (immutable, so
cached per group). Delivery to push gateways is not done yet; pushers are
stored and listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from homeserver.core import push_rules as pr
from homeserver.core.auth import creators
from homeserver.core.ids import InvalidID, RoomID, UserID
from homeserver.core.lru import LRU, CacheFill, scaled
from homeserver.services.account_data import AccountDataService
from homeserver.services.clock import now_ms
from homeserver.services.errors import MatrixError, not_found
from homeserver.services.serialize import EventSerializer
from homeserver.storage.events import EventStore, StoredEvent
from homeserver.storage.projections import Projections
from homeserver.storage.push import Counts, Found, Pusher, PushStore

PAGE = 1000  # events evaluated per room and round
MAX_USERS = 5_000  # compiled rule sets kept (active users; a miss costs one read)
MAX_GROUP_NAMES = 200_000  # room contexts (per state group) kept, by display names
MAX_MEMOS = 10_000  # per-event condition results shared by members (pr.Memo)
MAIN = "main"
THREAD_HOPS = 3  # relations followed to find an event's thread (spec advice)
# Size caps on what a user may store (every evaluation runs their rules).
MAX_USER_RULES = 500
MAX_RULE_ID = 255
MAX_PATTERN = 1000
MAX_CONDITIONS = 20


def _bad(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


@dataclass(frozen=True)
class _Group:
    """What rules need of one state group."""

    member_count: int
    power_levels: Mapping[str, Any] | None
    creators: frozenset[str]
    privileged_creators: bool
    names: Mapping[str, str]  # user → display name (joined members with one)

    def context(self, user_id: str) -> pr.RoomContext:
        return pr.RoomContext(
            self.member_count,
            self.power_levels,
            self.creators,
            self.names.get(user_id),
            self.privileged_creators,
        )


@dataclass(frozen=True)
class _RuleSet:
    version: int
    evaluator: pr.Evaluator


class PushService:
    def __init__(
        self,
        store: PushStore,
        events: EventStore,
        projections: Projections,
        serializer: EventSerializer,
        account_data: AccountDataService,
        *,
        cache_factor: float = 1.0,
    ) -> None:
        self._store = store
        self._events = events
        self._projections = projections
        self._serializer = serializer
        self._account_data = account_data
        self._rulesets = LRU(scaled(MAX_USERS, cache_factor))
        # weighed by their display names: a big room's contexts are big
        self._groups = LRU(scaled(MAX_GROUP_NAMES, cache_factor), weigh=lambda g: len(g.names) + 1)
        self._memos = LRU(scaled(MAX_MEMOS, cache_factor))

    def caches(self) -> dict[str, CacheFill]:
        return {
            "push_rule_sets": self._rulesets.fill,
            "push_room_contexts": self._groups.fill,
            "push_condition_memos": self._memos.fill,
            **pr.cache_fill(),
        }

    # =============================================================== rules
    async def rules(self, user_id: str) -> tuple[pr.PushRule, ...]:
        doc, _version = await self._store.rules(user_id)
        return _rules_of(user_id, doc)

    async def rendered(self, user_id: str) -> dict[str, Any]:
        """The user's rules as ``GET /pushrules/`` and ``m.push_rules`` give them."""
        return pr.render(await self.rules(user_id))

    async def rule(self, user_id: str, kind: str, rule_id: str) -> pr.PushRule:
        _check_kind(kind)
        for rule in await self.rules(user_id):
            if rule.kind == kind and rule.rule_id == rule_id:
                return rule
        raise not_found("Unknown push rule")

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        body: Mapping[str, Any],
        before: str | None,
        after: str | None,
    ) -> None:
        """Add or replace a user rule (PUT /pushrules/global/{kind}/{ruleId}):
        placed before/after another user rule of the kind, else first among
        them for a new rule (as Synapse), where it was for a replaced one."""
        _check_kind(kind)
        if rule_id.startswith("."):
            raise _bad("Rule ids starting with '.' are reserved for server-default rules")
        if "/" in rule_id or "\\" in rule_id or not rule_id or len(rule_id) > MAX_RULE_ID:
            raise _bad(f"Rule ids are 1 to {MAX_RULE_ID} characters without slashes")
        new = _parse_rule(kind, rule_id, body)

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            mine = list(doc.get("rules", []))
            old = next((r for r in mine if r["kind"] == kind and r["rule_id"] == rule_id), None)
            entry = {"kind": kind, **new.to_json()}
            entry["enabled"] = old["enabled"] if old is not None else True
            del entry["default"]
            anchor = before or after
            if anchor is not None:
                if anchor.startswith("."):
                    raise _bad("Cannot place a rule relative to a server-default rule")
                if not any(r["kind"] == kind and r["rule_id"] == anchor for r in mine):
                    raise not_found(f"Unknown rule {anchor!r} for 'before'/'after'")
            if old is None and len(mine) >= MAX_USER_RULES:
                raise _bad(f"At most {MAX_USER_RULES} push rules of one's own")
            if old is not None and anchor is None:
                mine[mine.index(old)] = entry
            else:
                if old is not None:
                    mine.remove(old)
                if anchor is None:
                    at = next((i for i, r in enumerate(mine) if r["kind"] == kind), len(mine))
                else:
                    at = next(
                        i
                        for i, r in enumerate(mine)
                        if r["kind"] == kind and r["rule_id"] == anchor
                    )
                    at += 1 if after is not None and before is None else 0
                mine.insert(at, entry)
            return {**doc, "rules": mine}

        await self._change(user_id, change)

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        _check_kind(kind)
        if rule_id.startswith("."):
            await self.rule(user_id, kind, rule_id)  # 404 for an unknown one
            raise _bad("Server-default rules cannot be deleted (disable them instead)")

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            mine = list(doc.get("rules", []))
            keep = [r for r in mine if not (r["kind"] == kind and r["rule_id"] == rule_id)]
            if len(keep) == len(mine):
                raise not_found("Unknown push rule")
            return {**doc, "rules": keep}

        await self._change(user_id, change)

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        await self._set_attribute(user_id, kind, rule_id, "enabled", enabled)

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        await self._set_attribute(
            user_id, kind, rule_id, "actions", [_jsonable(a) for a in _parse_actions(actions)]
        )

    async def _set_attribute(
        self, user_id: str, kind: str, rule_id: str, key: str, value: Any
    ) -> None:
        _check_kind(kind)

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            if rule_id.startswith("."):
                if not any(
                    r.kind == kind and r.rule_id == rule_id for r in pr.default_rules(user_id)
                ):
                    raise not_found("Unknown push rule")
                defaults = dict(doc.get("defaults", {}))
                defaults[f"{kind}/{rule_id}"] = {
                    **defaults.get(f"{kind}/{rule_id}", {}),
                    key: value,
                }
                return {**doc, "defaults": defaults}
            mine = list(doc.get("rules", []))
            for i, r in enumerate(mine):
                if r["kind"] == kind and r["rule_id"] == rule_id:
                    mine[i] = {**r, key: value}
                    return {**doc, "rules": mine}
            raise not_found("Unknown push rule")

        await self._change(user_id, change)

    async def _change(self, user_id: str, change: Any) -> None:
        doc = await self._store.update_rules(user_id, change)
        self._rulesets.drop(user_id)
        await self._account_data.put(
            user_id,
            user_id,
            "",
            "m.push_rules",
            pr.render(_rules_of(user_id, doc)),
            internal=True,
        )

    # ========================================================== evaluation
    async def counts(
        self, user_id: str, room_ids: Sequence[str], upto: int
    ) -> dict[str, dict[str, Counts]]:
        """Unread notification and highlight counts per room and thread
        ('main' for the main timeline) as of position ``upto``, once the
        rooms are evaluated up to it (the last write also counts: one round
        trip less)."""
        if not room_ids:
            return {}
        return await self._catch_up(user_id, room_ids, upto, count=True) or {}

    async def catch_up(self, user_id: str, room_ids: Sequence[str], upto: int) -> None:
        """Evaluate the user's rules on every event from others in
        ``room_ids`` up to ``upto`` not evaluated yet (module docstring)."""
        await self._catch_up(user_id, room_ids, upto, count=False)

    async def _catch_up(
        self, user_id: str, room_ids: Sequence[str], upto: int, *, count: bool
    ) -> dict[str, dict[str, Counts]] | None:
        """``catch_up``; with ``count``, the counts of ``room_ids``: from the
        first read when nothing was pending, else from the last write."""
        rooms = list(room_ids)
        first = True
        while rooms:
            version, pending, now = await self._store.pending(
                user_id, rooms, upto, PAGE, counts=count and first
            )
            first = False
            # (kept current even when nothing is pending: evaluate_cached uses it)
            ruleset = await self._ruleset(user_id, version)
            if not pending:
                if count and now is None:  # (a later round found nothing left)
                    return await self._store.counts(user_id, room_ids, upto)
                return now
            ids = [eid for p in pending for eid, _pos in p.events]
            evs = await self._events.get_events(ids) if ids else {}
            found: list[Found] = []
            evaluated: dict[str, int] = {}
            for p in pending:
                for eid, _pos in p.events:
                    se = evs.get(eid)
                    if se is None:
                        raise LookupError(f"event {eid} listed for evaluation but not found")
                    hit = await self._evaluate(user_id, ruleset.evaluator, se)
                    if hit is not None:
                        found.append(hit)
                evaluated[p.room_id] = p.events[-1][1] if p.more else upto
            rooms = [p.room_id for p in pending if p.more]
            last = count and not rooms
            counted = await self._store.record(
                user_id, found, evaluated, (room_ids, upto) if last else None
            )
            if last:
                return counted
        return None

    async def _evaluate(
        self, user_id: str, evaluator: pr.Evaluator, se: StoredEvent
    ) -> Found | None:
        group = await self._group(se.state_group)
        actions = evaluator.actions(se.event, group.context(user_id), self._memo(se))
        if not pr.notifies(actions):
            return None
        return Found(
            se.event.room_id,
            se.stream_ordering,
            se.event.event_id,
            await self._thread_of(se),
            pr.highlights(actions),
            actions,
            se.event.origin_server_ts,
        )

    async def evaluate_cached(
        self, user_id: str, events: Iterable[StoredEvent]
    ) -> dict[str, dict[str, Counts]] | None:
        """New notifications among ``events`` (rooms → threads → counts)
        with the user's cached compiled rules (as of their last count) and
        threads found without lookups, or None when either is missing (the
        caller then reads the database). Room contexts come from immutable
        state groups, normally cached too. For long-polls answered from
        memory."""
        ruleset = self._rulesets.get_(user_id)
        if ruleset is None:
            return None
        out: dict[str, dict[str, Counts]] = {}
        for se in events:
            if se.event.sender == user_id:
                continue
            group = await self._group(se.state_group)  # (cached: immutable)
            actions = ruleset.evaluator.actions(se.event, group.context(user_id), self._memo(se))
            if not pr.notifies(actions):
                continue
            thread = _direct_thread(se)
            if thread is None:
                return None
            threads = out.setdefault(se.event.room_id, {})
            old = threads.get(thread, Counts(0, 0))
            threads[thread] = Counts(
                old.notifications + 1, old.highlights + int(pr.highlights(actions))
            )
        return out

    def _memo(self, se: StoredEvent) -> pr.Memo:
        """The event's condition results, shared by every member's rules."""
        memo: pr.Memo | None = self._memos.get_(se.event.event_id)
        if memo is None:
            memo = {}
            self._memos.put(se.event.event_id, memo)
        return memo

    async def _ruleset(self, user_id: str, version: int) -> _RuleSet:
        cached = self._rulesets.get_(user_id)
        if cached is not None and cached.version == version:
            return cached  # type: ignore[no-any-return]
        doc, version = await self._store.rules(user_id)
        rules = _rules_of(user_id, doc)
        ruleset = _RuleSet(version, pr.Evaluator(rules))
        self._rulesets.put(user_id, ruleset)
        return ruleset

    async def _group(self, state_group: int | None) -> _Group:
        cached = self._groups.get_(state_group)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        state = await self._events.state_at_group(state_group)
        pl_id = state.get(("m.room.power_levels", ""))
        create_id = state.get(("m.room.create", ""))
        member_ids = [v for (t, _k), v in state.items() if t == "m.room.member"]
        evs = await self._events.get_events([*member_ids, *(i for i in (pl_id, create_id) if i)])
        count = 0
        names: dict[str, str] = {}
        for mid in member_ids:
            m = evs.get(mid)
            if m is None or m.event.membership != "join" or m.event.state_key is None:
                continue
            count += 1
            name = m.event.content.get("displayname")
            if isinstance(name, str) and name:
                names[m.event.state_key] = name
        pl = evs.get(pl_id) if pl_id else None
        create = evs.get(create_id) if create_id else None
        group = _Group(
            count,
            pl.event.content if pl is not None else None,
            frozenset(creators(create.event if create else None)),
            bool(create and create.event.room_version.privileged_creators),
            names,
        )
        self._groups.put(state_group, group)
        return group

    async def _thread_of(self, se: StoredEvent) -> str:
        """The thread an event belongs to: its ``m.thread`` relation, or the
        thread of what it relates to, up to THREAD_HOPS relations away (spec
        "Receiving notifications"); 'main' otherwise."""
        cur: StoredEvent | None = se
        for _ in range(THREAD_HOPS):
            if cur is None:
                return MAIN
            direct = _direct_thread(cur)
            if direct is not None:
                return direct
            rel = cur.event.content.get("m.relates_to")
            parent = rel.get("event_id") if isinstance(rel, Mapping) else None
            if not isinstance(parent, str):
                return MAIN
            cur = await self._events.get_event(parent)
        return MAIN

    # ====================================================== notifications
    async def notifications(
        self, user_id: str, before: int | None, limit: int, only_highlight: bool
    ) -> dict[str, Any]:
        """``GET /notifications``: the user's notifications, newest first,
        once every joined room is evaluated up to now."""
        upto = await self._events.current_position()
        rooms = await self._projections.rooms_for_user(user_id, ["join"])
        await self.catch_up(user_id, list(rooms), upto)
        rows = await self._store.notifications(user_id, before, limit + 1, only_highlight)
        page = rows[:limit]
        evs = await self._events.get_events([n.event_id for n in page])
        stored = [evs[n.event_id] for n in page if n.event_id in evs]
        bodies = iter(await self._serializer.serialize(stored))
        out: dict[str, Any] = {
            "notifications": [
                {
                    "actions": n.actions,
                    "event": next(bodies),
                    "profile_tag": None,
                    "read": n.read,
                    "room_id": n.room_id,
                    "ts": n.ts,
                }
                for n in page
                if n.event_id in evs
            ]
        }
        if len(rows) > limit:
            out["next_token"] = str(page[-1].stream_ordering)
        return out

    # ============================================================ pushers
    async def pushers(self, user_id: str) -> list[Pusher]:
        return await self._store.pushers(user_id)

    async def set_pusher(self, user_id: str, body: Mapping[str, Any]) -> None:
        """POST /pushers/set: ``kind: null`` deletes; otherwise every field
        the spec requires must be there, and an http pusher needs an
        http(s) ``data.url`` ending in /_matrix/push/v1/notify."""
        app_id = _str(body, "app_id", 64)
        pushkey = _str(body, "pushkey", 512)
        if "kind" in body and body["kind"] is None:
            await self._store.delete_pusher(user_id, app_id, pushkey)
            return
        kind = _str(body, "kind", 64)
        if kind != "http":
            raise _bad(f"Unsupported pusher kind {kind!r} (only 'http')")
        data = body.get("data")
        if not isinstance(data, dict):
            raise MatrixError(400, "M_MISSING_PARAM", "'data' must be an object")
        url = data.get("url")
        if not isinstance(url, str):
            raise MatrixError(400, "M_MISSING_PARAM", "'url' required in data for HTTP pushers")
        if not url.startswith(("https://", "http://")) or not url.endswith(
            "/_matrix/push/v1/notify"
        ):
            raise _bad("data.url must be an http(s) URL ending in /_matrix/push/v1/notify")
        append = body.get("append", False)
        if not isinstance(append, bool):
            raise MatrixError(400, "M_BAD_JSON", "'append' must be a boolean")
        tag = body.get("profile_tag")
        if tag is not None and not isinstance(tag, str):
            raise MatrixError(400, "M_BAD_JSON", "'profile_tag' must be a string")
        pusher = Pusher(
            user_id,
            app_id,
            pushkey,
            kind,
            _str(body, "app_display_name", 256),
            _str(body, "device_display_name", 256),
            tag,
            _str(body, "lang", 32),
            dict(data),
        )
        await self._store.set_pusher(pusher, append=append, now_ms=now_ms())


# ------------------------------------------------------------------ parsing


def _check_kind(kind: str) -> None:
    if kind not in pr.KINDS:
        raise _bad(f"Unknown push rule kind {kind!r}")


def _str(body: Mapping[str, Any], key: str, max_len: int) -> str:
    value = body.get(key)
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"Missing '{key}'")
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", f"'{key}' must be a string")
    if len(value) > max_len:
        raise _bad(f"'{key}' is longer than {max_len} characters")
    return value


def _jsonable(action: pr.Action) -> Any:
    return action if isinstance(action, str) else dict(action)


def _parse_actions(actions: Any) -> tuple[pr.Action, ...]:
    if not isinstance(actions, list):
        raise MatrixError(400, "M_MISSING_PARAM", "'actions' must be an array")
    out: list[pr.Action] = []
    for a in actions:
        if isinstance(a, str):
            if a != "notify" and a not in pr.HISTORICAL_ACTIONS:
                raise _bad(f"Unrecognised action {a!r}")
        elif isinstance(a, dict):
            if not isinstance(a.get("set_tweak"), str):
                raise _bad("An action object needs a 'set_tweak' string")
        else:
            raise _bad("Actions are strings or objects")
        out.append(a)
    return tuple(out)


def _parse_rule(kind: str, rule_id: str, body: Mapping[str, Any]) -> pr.PushRule:
    actions = _parse_actions(body.get("actions"))
    if kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str):
            raise MatrixError(400, "M_MISSING_PARAM", "Content rules need a 'pattern' string")
        if len(pattern) > MAX_PATTERN:
            raise _bad(f"'pattern' is longer than {MAX_PATTERN} characters")
        return pr.PushRule(kind, rule_id, actions, pattern=pattern)
    if kind in ("override", "underride"):
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list) or not all(
            isinstance(c, dict) and isinstance(c.get("kind"), str) for c in conditions
        ):
            raise _bad("'conditions' must be an array of objects with a 'kind'")
        if len(conditions) > MAX_CONDITIONS:
            raise _bad(f"At most {MAX_CONDITIONS} conditions")
        return pr.PushRule(kind, rule_id, actions, conditions=tuple(conditions))
    try:
        if kind == "room":
            RoomID.parse(rule_id)
        else:
            UserID.parse(rule_id)
    except InvalidID as e:
        raise _bad(f"A {kind} rule's id must be a {kind} id: {e}") from e
    return pr.PushRule(kind, rule_id, actions)


def _rules_of(user_id: str, doc: Mapping[str, Any]) -> tuple[pr.PushRule, ...]:
    """The user's full rule set from their stored document."""
    mine = [
        pr.PushRule(
            r["kind"],
            r["rule_id"],
            tuple(r.get("actions", [])),
            False,
            bool(r.get("enabled", True)),
            tuple(r.get("conditions", [])),
            r.get("pattern"),
        )
        for r in doc.get("rules", [])
    ]
    overrides = {}
    for key, ov in doc.get("defaults", {}).items():
        kind, _, rule_id = key.partition("/")
        actions = ov.get("actions")
        overrides[(kind, rule_id)] = pr.DefaultOverride(
            ov.get("enabled"), tuple(actions) if actions is not None else None
        )
    return pr.ruleset(user_id, mine, overrides)


def _direct_thread(se: StoredEvent) -> str | None:
    """'main' or a thread root when the event says so itself; None when it
    relates to another event whose thread would have to be looked up."""
    rel = se.event.content.get("m.relates_to")
    if not isinstance(rel, Mapping) or not isinstance(rel.get("event_id"), str):
        return MAIN
    if rel.get("rel_type") == "m.thread":
        return str(rel["event_id"])
    return None
