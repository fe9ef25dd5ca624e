"""State resolution over deep auth chains (core/state_res.py): the v2.1
conflicted subgraph is found without recursion, so a user's thousandth
re-join (each membership citing the one before) does not exceed Python's
recursion limit — the soak hit it, and every PDU of the room then failed."""

from __future__ import annotations

import random
import sys
from types import SimpleNamespace
from typing import Any

from homeserver.core.state_res import _conflicted_subgraph


def dag(edges: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    return {e: SimpleNamespace(auth_events=a) for e, a in edges.items()}


def reference(conflicted: set[str], events: dict[str, Any]) -> set[str]:
    """The definition, by brute force: ancestors of a conflicted event
    (through auth events) that have a conflicted event in their own chain."""

    def chain(e: str) -> set[str]:
        seen: set[str] = set()
        todo = list(events[e].auth_events)
        while todo:
            a = todo.pop()
            if a not in seen:
                seen.add(a)
                todo.extend(events[a].auth_events)
        return seen

    ancestors = set().union(*(chain(c) for c in conflicted)) | conflicted
    return {e for e in ancestors if e in conflicted or chain(e) & conflicted}


def test_agrees_with_the_definition_on_random_dags() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randrange(2, 40)
        edges = {
            f"e{i}": tuple(f"e{j}" for j in rng.sample(range(i), min(i, rng.randrange(0, 4))))
            for i in range(n)
        }
        events = dag(edges)
        conflicted = {f"e{i}" for i in rng.sample(range(n), rng.randrange(1, min(n, 6) + 1))}
        assert _conflicted_subgraph(conflicted, events) == reference(conflicted, events)


def test_a_chain_deeper_than_the_recursion_limit() -> None:
    depth = sys.getrecursionlimit() * 5
    edges: dict[str, tuple[str, ...]] = {"create": ()}
    prev = "create"
    for i in range(depth):
        edges[f"m{i}"] = ("create", prev)
        prev = f"m{i}"
    events = dag(edges)
    conflicted = {"m10", prev}
    got = _conflicted_subgraph(conflicted, events)
    assert got == {f"m{i}" for i in range(10, depth)}
