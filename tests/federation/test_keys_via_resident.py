"""A member server that is down does not split the room for a new joiner.

C's user joins A's room and talks; C stops; B's user joins through A. B has
never seen C, so C's signing key cannot come from C: B asks A (the server
whose send_join answer it is checking) as a notary, verifies C's events and
ends with A's state and members. Without that, B dropped C's member event
and the two servers disagreed on who is in the room."""

from __future__ import annotations

import uuid

from tests.federation.conftest import Pair
from tests.federation.harness import OurServer, eventually, state_map


async def test_joiner_gets_a_down_servers_keys_from_the_resident(
    pair: Pair, ours: OurServer
) -> None:
    c = ours  # the third server, stopped before B's user joins
    tag = uuid.uuid4().hex[:6]
    alice = await pair.client(pair.a).register(f"alice{tag}")
    carol = await pair.client(c).register(f"carol{tag}")
    room = await alice.create_room(
        preset="public_chat", power_level_content_override={"events": {"m.room.topic": 0}}
    )
    await carol.join(room, [pair.a.server_name])
    await carol.send(room, "from c")
    await carol.put_state(room, "m.room.topic", {"topic": "set on c"})
    await eventually(lambda: alice.bodies(room), lambda b: "from c" in b)
    await eventually(
        lambda: alice.state_event(room, "m.room.topic"),
        lambda t: t.get("topic") == "set on c",
    )
    c.stop()
    bob = await pair.client(pair.b).register(f"bob{tag}")
    await bob.join(room, [pair.a.server_name])
    want = {alice.user_id, carol.user_id, bob.user_id}
    assert await bob.joined_members(room) == want
    await eventually(lambda: alice.joined_members(room), lambda m: m == want)
    assert state_map(await bob.state(room)) == state_map(await alice.state(room))
    assert (await bob.state_event(room, "m.room.topic"))["topic"] == "set on c"
