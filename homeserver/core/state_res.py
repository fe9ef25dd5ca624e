"""State resolution v2 (room versions 10, 11) and v2.1 (room version 12).

Pure: the caller passes the state sets, every event they and their auth
chains mention, and the full auth chain of each set. Steps are numbered as in
the specification's "State resolution v2" (and MSC4297 for v2.1):

0. Split the keys into unconflicted and conflicted state.
1. Full conflicted set = conflicted events ∪ auth difference
   (v2.1: ∪ the conflicted state subgraph).
2. Power events of it (with their auth ancestors inside it), sorted by the
   reverse topological power ordering, go through the iterative auth checks
   starting from the unconflicted state (v2.1: from empty state).
3. The other events, sorted by mainline ordering against the resolved power
   levels, go through the iterative auth checks.
4. The unconflicted state is applied on top.

Nothing given is ignored: an event named in a state set or an auth chain,
or cited as an auth event by one of them, that is not in ``events`` raises
``MissingStateEvent`` — the caller fetches it and tries again (DESIGN rule
14). Resolving without it would quietly resolve a different question.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence, Set
from functools import cmp_to_key

from homeserver.core.auth import AuthError, check_auth, get_user_power_level
from homeserver.core.events import Event, StateKey, auth_types_for_event
from homeserver.core.room_versions import RoomVersion, StateResAlgorithm

StateMap = Mapping[StateKey, str]


class MissingStateEvent(LookupError):
    """State resolution was asked about events it was not given."""

    def __init__(self, event_ids: Set[str]) -> None:
        self.event_ids = frozenset(event_ids)
        shown = ", ".join(sorted(event_ids)[:5])
        more = f" and {len(event_ids) - 5} more" if len(event_ids) > 5 else ""
        super().__init__(f"state resolution lacks events {shown}{more}")


def _require(events: Mapping[str, Event], ids: Set[str]) -> None:
    missing = {e for e in ids if e not in events}
    if missing:
        raise MissingStateEvent(missing)


def _is_power_event(ev: Event) -> bool:
    if ev.type in ("m.room.power_levels", "m.room.join_rules", "m.room.create"):
        return ev.state_key == ""
    if ev.type == "m.room.member":
        return ev.membership in ("leave", "ban") and ev.sender != ev.state_key
    return False


def resolve_state(
    room_version: RoomVersion,
    state_sets: Sequence[StateMap],
    events: Mapping[str, Event],
    auth_chains: Sequence[Set[str]],
) -> dict[StateKey, str]:
    if not state_sets:
        return {}
    if len(state_sets) == 1:
        return dict(state_sets[0])
    if len(auth_chains) != len(state_sets):
        raise ValueError("one auth chain per state set is needed")
    # Everything named must be here, and so must everything those cite.
    named = set().union(*(s.values() for s in state_sets), *auth_chains)
    _require(events, named)
    _require(events, {a for e in named for a in events[e].auth_events})
    # 0. Unconflicted and conflicted state.
    keys = set().union(*(s.keys() for s in state_sets))
    unconflicted: dict[StateKey, str] = {}
    conflicted: set[str] = set()
    for k in keys:
        values = {s.get(k) for s in state_sets}
        if len(values) == 1 and None not in values:
            unconflicted[k] = values.pop()  # type: ignore[assignment]
        else:
            conflicted |= {v for v in values if v is not None}
    if not conflicted:
        return unconflicted
    # 1. Auth difference and the full conflicted set.
    union = set().union(*auth_chains)
    inter = set(auth_chains[0]).intersection(*auth_chains[1:])
    full = conflicted | (union - inter)
    v21 = room_version.state_res is StateResAlgorithm.V2_1
    if v21:
        full |= _conflicted_subgraph(conflicted, events)
    # 2. Power events by reverse topological power ordering.
    power = {e for e in full if _is_power_event(events[e])}
    closure = set(power)
    stack = list(power)
    while stack:
        for a in events[stack.pop()].auth_events:
            if a in full and a not in closure:
                closure.add(a)
                stack.append(a)
    ordered = _reverse_topological_power_order(closure, events)
    resolved = _iterative_auth_checks(ordered, {} if v21 else dict(unconflicted), events)
    # 3. The rest by mainline ordering.
    rest = [e for e in full if e not in closure]
    rest = _mainline_order(rest, resolved.get(("m.room.power_levels", "")), events)
    resolved = _iterative_auth_checks(rest, resolved, events)
    # 4. Unconflicted state wins.
    resolved.update(unconflicted)
    return resolved


def _auth_closure(start: Set[str], events: Mapping[str, Event]) -> set[str]:
    seen: set[str] = set()
    stack = [a for e in start for a in events[e].auth_events]
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        if e not in events:
            raise MissingStateEvent({e})
        seen.add(e)
        stack.extend(events[e].auth_events)
    return seen


def _conflicted_subgraph(conflicted: set[str], events: Mapping[str, Event]) -> set[str]:
    """v2.1: events both descended from and ancestors of conflicted events.

    Whether an event's auth chain reaches a conflicted event is computed by
    an explicit depth-first walk, not by recursion: auth chains are as deep
    as a room's history of one user's memberships (each cites the one
    before), and a user who left and joined a thousand times exceeded
    Python's recursion limit (seen in the soak: every PDU of the room then
    failed)."""
    ancestors = _auth_closure(conflicted, events) | conflicted
    reaches: dict[str, bool] = {}  # does the event's auth chain hold a conflicted one?
    for root in ancestors:
        if root in reaches:
            continue
        reaches[root] = False
        stack = [(root, iter(events[root].auth_events))]
        while stack:
            node, auth = stack[-1]
            a = next(auth, None)
            if a is None:
                stack.pop()
                if stack and reaches[node]:
                    reaches[stack[-1][0]] = True
                continue
            if a in conflicted:
                reaches[node] = True
            elif a in reaches:  # done (or on the stack: no cycles in an auth DAG)
                reaches[node] = reaches[node] or reaches[a]
            else:
                reaches[a] = False
                stack.append((a, iter(events[a].auth_events)))
    return {e for e in ancestors if e in conflicted or reaches[e]}


def _create_of(ev: Event, events: Mapping[str, Event]) -> Event:
    """v12: the create event, named by the room id rather than cited."""
    cid = "$" + ev.room_id[1:]
    if cid not in events:
        raise MissingStateEvent({cid})
    return events[cid]


def _sender_power(ev: Event, events: Mapping[str, Event]) -> float:
    pl = create = None
    for a in ev.auth_events:
        ae = events[a]
        if ae.type == "m.room.power_levels" and ae.state_key == "":
            pl = ae
        elif ae.type == "m.room.create" and ae.state_key == "":
            create = ae
    if create is None and ev.room_version.room_id_is_create_event_hash:
        create = _create_of(ev, events)
    if ev.type == "m.room.create":
        create = ev
    return get_user_power_level(ev.sender, pl, create)


def _reverse_topological_power_order(ids: set[str], events: Mapping[str, Event]) -> list[str]:
    """Kahn's algorithm: auth events first; ties by greater sender power,
    then earlier origin_server_ts, then smaller event id."""
    power = {e: _sender_power(events[e], events) for e in ids}
    indegree = {e: 0 for e in ids}
    children: dict[str, list[str]] = {e: [] for e in ids}
    for e in ids:
        for a in set(events[e].auth_events):
            if a in ids:
                indegree[e] += 1
                children[a].append(e)

    def key(e: str) -> tuple[float, int, str]:
        return (-power[e], events[e].origin_server_ts, e)

    heap = [(key(e), e) for e, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    out = []
    while heap:
        _, e = heapq.heappop(heap)
        out.append(e)
        for c in children[e]:
            indegree[c] -= 1
            if indegree[c] == 0:
                heapq.heappush(heap, (key(c), c))
    return out


def _pl_auth_event(ev: Event, events: Mapping[str, Event]) -> Event | None:
    for a in ev.auth_events:
        if a not in events:
            raise MissingStateEvent({a})
        ae = events[a]
        if ae.type == "m.room.power_levels" and ae.state_key == "":
            return ae
    return None


def _mainline_order(ids: list[str], pl_id: str | None, events: Mapping[str, Event]) -> list[str]:
    mainline: list[str] = []
    cur = events[pl_id] if pl_id else None
    while cur is not None:
        mainline.append(cur.event_id)
        cur = _pl_auth_event(cur, events)
    position = {e: i for i, e in enumerate(reversed(mainline))}  # oldest = 0

    def closest(e: str) -> int:
        cur: Event | None = events[e]
        while cur is not None:
            if cur.event_id in position:
                return position[cur.event_id]
            cur = _pl_auth_event(cur, events)
        return -1

    depth = {e: closest(e) for e in ids}

    def cmp(x: str, y: str) -> int:
        kx = (depth[x], events[x].origin_server_ts, x)
        ky = (depth[y], events[y].origin_server_ts, y)
        return -1 if kx < ky else (1 if kx > ky else 0)

    return sorted(ids, key=cmp_to_key(cmp))


def _iterative_auth_checks(
    ordered: list[str], state: dict[StateKey, str], events: Mapping[str, Event]
) -> dict[StateKey, str]:
    """Apply each event whose auth passes against its own auth events
    overridden by the partially resolved state."""
    for e in ordered:
        ev = events[e]
        if ev.state_key is None:
            continue
        auth: dict[StateKey, Event] = {}
        for a in ev.auth_events:
            ae = events[a]
            if ae.state_key is not None:
                auth[ae.state_tuple] = ae
        wanted = auth_types_for_event(ev.room_version, ev.type, ev.state_key, ev.sender, ev.content)
        for k in [*wanted, ("m.room.create", "")]:
            if k in state:
                auth[k] = events[state[k]]
        if ev.room_version.room_id_is_create_event_hash and ("m.room.create", "") not in auth:
            auth[("m.room.create", "")] = _create_of(ev, events)
        try:
            check_auth(ev, auth)
        except AuthError:
            continue
        state[ev.state_tuple] = e
    return state
