"""Finding 2: any member could delete an abandoned room.

``POST /_homeserver/client/v1/rooms/{id}/delete`` allowed "the member with
the highest power among those joined now": once the creator (the only admin)
left a public room, a newcomer at power 0 joined and deleted it with
``purge: true`` — members kicked, aliases gone, history purged, the room
blocked for good. Deletion now follows the room's own rules: the caller's
power in m.room.power_levels must suffice to send m.room.tombstone and
m.room.power_levels. Operators keep their API.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.helpers import CS, MatrixClient, User

DELETE = "/_homeserver/client/v1/rooms/{}/delete"


pytestmark = pytest.mark.config({"admins": ["@root:hs.test"]})


async def delete(user: User, room: str, expect: int, **body: object) -> dict[str, object]:
    out: dict[str, object] = await user.call(
        "POST", DELETE.format(quote(room, safe="")), body, expect=expect
    )
    return out


async def test_newcomer_cannot_delete_an_abandoned_room(client: MatrixClient) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(preset="public_chat", room_alias_name="plaza")
    await alice.send(room, "history worth keeping")
    await alice.membership(room, "leave")  # the only admin leaves

    mallory = await client.register("mallory")
    await mallory.call("POST", f"{CS}/join/{quote(room, safe='')}", {})
    r = await delete(mallory, room, 403, purge=True, reason="mine now")
    assert r["errcode"] == "M_FORBIDDEN"

    # Nothing happened: the alias resolves, the creator can come back and
    # still reads the history, the newcomer is still a member.
    alias = await client.call("GET", f"{CS}/directory/room/%23plaza:hs.test")
    assert alias["room_id"] == room
    await alice.call("POST", f"{CS}/join/{quote(room, safe='')}", {})
    msgs = await alice.call("GET", f"{CS}/rooms/{quote(room, safe='')}/messages?dir=b&limit=20")
    bodies = [e["content"].get("body") for e in msgs["chunk"]]
    assert "history worth keeping" in bodies
    m = await alice.state(room, "m.room.member", mallory.user_id)
    assert m["membership"] == "join"


async def test_power_comes_from_the_power_levels_not_from_who_is_present(
    client: MatrixClient,
) -> None:
    alice = await client.register("alice")
    mod = await client.register("mod")
    heir = await client.register("heir")
    room = await alice.create_room(preset="public_chat", room_version="11")
    for u in (mod, heir):
        await u.call("POST", f"{CS}/join/{quote(room, safe='')}", {})
    pl = await alice.state(room, "m.room.power_levels")
    pl["users"].update({mod.user_id: 50, heir.user_id: 100})
    await alice.put_state(room, "m.room.power_levels", pl)
    await alice.membership(room, "leave")
    await heir.membership(room, "leave")
    # The moderator is now the highest joined power, which is not enough.
    assert (await delete(mod, room, 403))["errcode"] == "M_FORBIDDEN"
    # A user the room made an admin may end it, whoever else is present.
    await heir.call("POST", f"{CS}/join/{quote(room, safe='')}", {})
    out = await delete(heir, room, 200, reason="closing")
    assert set(out["kicked_users"]) == {mod.user_id, heir.user_id}  # type: ignore[arg-type]


async def test_room_rules_that_raise_the_tombstone_level_are_followed(
    client: MatrixClient,
) -> None:
    """Room v12: creators outrank every level; the preset puts tombstone at
    150, so an admin at 100 may not end the room, the creator may."""
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(preset="public_chat", room_version="12")
    await bob.call("POST", f"{CS}/join/{quote(room, safe='')}", {})
    pl = await alice.state(room, "m.room.power_levels")
    pl["users"][bob.user_id] = 100
    await alice.put_state(room, "m.room.power_levels", pl)
    assert (await delete(bob, room, 403))["errcode"] == "M_FORBIDDEN"
    await delete(alice, room, 200)


async def test_operators_keep_their_api(client: MatrixClient) -> None:
    alice = await client.register("alice")
    root = await client.register("root")
    room = await alice.create_room(preset="public_chat")
    await alice.membership(room, "leave")
    out = await root.call(
        "DELETE", f"/_homeserver/admin/v1/rooms/{quote(room, safe='')}", {"purge": True}
    )
    assert out["blocked"] is True
