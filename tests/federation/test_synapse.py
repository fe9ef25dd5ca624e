"""Interoperability with Synapse (the reference server) as the other side:
events, state and membership in both directions. Skipped when Synapse
cannot be started (shared/peers/synapse.sh installs it from PyPI)."""

from __future__ import annotations

import uuid

import pytest

from tests.federation.harness import (
    Client,
    OurServer,
    SynapseServer,
    eventually,
    state_map,
)

pytestmark = pytest.mark.interop


def uniq(name: str) -> str:
    return f"{name}{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def users(ours: OurServer, synapse: SynapseServer, session) -> tuple[Client, Client]:  # type: ignore[no-untyped-def]
    mine = await Client(session, ours.base, ours.server_name).register(uniq("ours"))
    theirs = await Client(session, synapse.base, synapse.server_name).register(uniq("syn"))
    return mine, theirs


async def same_view(x: Client, y: Client, room: str) -> None:
    want = state_map(await x.state(room))
    await eventually(lambda: y.state(room), lambda s: state_map(s) == want, timeout=30)
    assert await x.joined_members(room) == await y.joined_members(room)


@pytest.mark.parametrize("version", ["12", "10"])
async def test_our_user_joins_synapse_room_messages_and_rename(
    users: tuple[Client, Client], version: str
) -> None:
    mine, theirs = users
    room = await theirs.create_room(preset="public_chat", room_version=version, name="syn room")
    await mine.join(room, [theirs.server_name])
    await eventually(lambda: theirs.joined_members(room), lambda m: mine.user_id in m, timeout=30)
    await theirs.send(room, "from synapse")
    await eventually(lambda: mine.bodies(room), lambda b: "from synapse" in b, timeout=30)
    await mine.send(room, "from ours")
    await eventually(lambda: theirs.bodies(room), lambda b: "from ours" in b, timeout=30)
    await theirs.put_state(room, "m.room.name", {"name": "renamed by synapse"})
    await eventually(
        lambda: mine.state_event(room, "m.room.name"),
        lambda c: c["name"] == "renamed by synapse",
        timeout=30,
    )
    await same_view(theirs, mine, room)


@pytest.mark.parametrize("version", ["12", "11"])
async def test_synapse_user_joins_our_room_messages_and_rename(
    users: tuple[Client, Client], version: str
) -> None:
    mine, theirs = users
    room = await mine.create_room(preset="public_chat", room_version=version, name="our room")
    await theirs.join(room, [mine.server_name])
    await eventually(lambda: mine.joined_members(room), lambda m: theirs.user_id in m, timeout=30)
    await mine.send(room, "from ours")
    await eventually(lambda: theirs.bodies(room), lambda b: "from ours" in b, timeout=30)
    await theirs.send(room, "from synapse")
    await eventually(lambda: mine.bodies(room), lambda b: "from synapse" in b, timeout=30)
    await mine.put_state(room, "m.room.name", {"name": "renamed by ours"})
    await eventually(
        lambda: theirs.state_event(room, "m.room.name"),
        lambda c: c["name"] == "renamed by ours",
        timeout=30,
    )
    await same_view(mine, theirs, room)


# The membership scenarios of test_membership.py, with Synapse as one side.
from tests.federation.test_membership import (  # noqa: E402
    test_direct_message_carries_is_direct,
    test_invite_then_join_and_leave,
    test_join_by_alias,
    test_kick_ban_refused_rejoin_unban,
    test_knock_then_accept,
    test_reject_invite_with_reason,
)

__all__ = [
    "test_direct_message_carries_is_direct",
    "test_invite_then_join_and_leave",
    "test_join_by_alias",
    "test_kick_ban_refused_rejoin_unban",
    "test_knock_then_accept",
    "test_reject_invite_with_reason",
]


@pytest.fixture(params=["ours_hosts", "synapse_hosts"])
async def sides(
    request: pytest.FixtureRequest, users: tuple[Client, Client]
) -> tuple[Client, Client]:
    """(host user, guest user) for the shared membership scenarios."""
    mine, theirs = users
    return (mine, theirs) if request.param == "ours_hosts" else (theirs, mine)
