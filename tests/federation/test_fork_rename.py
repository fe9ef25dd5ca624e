"""A forked DAG followed by a state change converges on both servers.

The issue-15 reproduction: a user on each server sends at the same moment
(both messages cite the same parent, so the DAG forks), then the user on A
renames the room citing both. Server B used to keep the old name: the rename
dropped out of its own state resolution.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.federation.conftest import Pair
from tests.federation.harness import eventually, state_map


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


async def test_fork_then_rename_converges(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="public_chat", name="old name")
    await bob.join(room, [pair.a.server_name])
    await eventually(lambda: alice.joined_members(room), lambda m: bob.user_id in m)
    for round_ in range(3):
        # Both sides write at once: each message is built on the join.
        await asyncio.gather(alice.send(room, f"a{round_}"), bob.send(room, f"b{round_}"))
        await eventually(lambda: alice.bodies(room), lambda b, r=round_: f"b{r}" in b)
        await eventually(lambda: bob.bodies(room), lambda b, r=round_: f"a{r}" in b)
        name = f"new name {round_}"
        await alice.put_state(room, "m.room.name", {"name": name})
        await eventually(
            lambda: bob.state_event(room, "m.room.name"),
            lambda c, name=name: c.get("name") == name,  # type: ignore[misc]
            timeout=15,
        )
    sa = state_map(await alice.state(room))
    sb = state_map(await bob.state(room))
    assert sa == sb
