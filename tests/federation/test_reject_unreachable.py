"""Rejecting an invite while the inviting server is down (issue 15, point 6).

The user's leave succeeds at once (made locally, out of band), the invite is
gone from /sync and from the pending-invites list, and the rejection reaches
the inviting server once it is back: its room then shows the invitee as
having left, as a rejection made while it was up would."""

from __future__ import annotations

import uuid

from tests.federation.conftest import Pair
from tests.federation.harness import CS, Client, eventually

INVITES = "/_homeserver/client/v1/invites"


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


async def invited_rooms(c: Client) -> set[str]:
    return set((await c.sync())["rooms"].get("invite", {}))


async def pending(c: Client) -> set[str]:
    return {i["room_id"] for i in (await c.call("GET", INVITES))["invites"]}


async def test_reject_invite_while_the_inviter_is_down(pair: Pair) -> None:
    alice = await pair.client(pair.a).register(uniq("alice"))
    bob = await pair.client(pair.b).register(uniq("bob"))
    room = await alice.create_room(preset="private_chat", name="invite me")
    await alice.membership(room, "invite", user_id=bob.user_id)
    assert room in await eventually(lambda: invited_rooms(bob), lambda r: room in r)
    assert room in await pending(bob)

    since = (await bob.sync())["next_batch"]
    pair.a.stop()
    try:
        # The leave answers 200 although nobody can be asked for a template.
        await bob.membership(room, "leave", reason="not now")
        assert room not in await invited_rooms(bob)
        assert room not in await pending(bob)
        # A client syncing on sees the room move to "leave".
        assert room in (await bob.sync(since))["rooms"].get("leave", {})
        # Leaving again is the no-op it always is.
        await bob.membership(room, "leave")
    finally:
        pair.a.start()
        await pair.a.wait_ready()

    # Back up: the rejection arrives, and the room shows bob as left.
    await eventually(
        lambda: alice.membership_of(room, bob.user_id), lambda m: m == "leave", timeout=60
    )
    member = await alice.state_event(room, "m.room.member", bob.user_id)
    assert member.get("reason") == "not now"
    # Bob can be invited again and join: nothing is stuck on either side.
    await alice.membership(room, "invite", user_id=bob.user_id)
    await eventually(lambda: invited_rooms(bob), lambda r: room in r, timeout=30)
    await bob.join(room, [pair.a.server_name])
    assert bob.user_id in await alice.joined_members(room)
    got = await bob.call("GET", f"{CS}/rooms/{room}/joined_members")
    assert alice.user_id in got["joined"]


def test_owed_rejections_back_off_doubling_to_a_cap() -> None:
    from homeserver.services.federation.rejections import MAX_RETRY_MS, retry_delay_ms

    assert [retry_delay_ms(n) for n in range(4)] == [2_000, 4_000, 8_000, 16_000]
    assert retry_delay_ms(40) == MAX_RETRY_MS == retry_delay_ms(10_000)
