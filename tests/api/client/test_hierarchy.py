"""GET /hierarchy: walking a space's children."""

from __future__ import annotations

from typing import Any

from tests.helpers import MatrixClient, User

V1 = "/_matrix/client/v1"


async def add_child(
    user: User, space: str, child: str, *, order: str | None = None, suggested: bool = False
) -> None:
    content: dict[str, Any] = {"via": ["hs.test"], "suggested": suggested}
    if order is not None:
        content["order"] = order
    await user.put_state(space, "m.space.child", content, child)


async def walk(user: User, space: str, query: str = "", expect: int = 200) -> Any:
    return await user.call("GET", f"{V1}/rooms/{space}/hierarchy{query}", expect=expect)


async def test_space_hierarchy(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    space = await alice.create_room(
        preset="public_chat", name="Space", creation_content={"type": "m.space"}
    )
    public = await alice.create_room(preset="public_chat", name="Public")
    private = await alice.create_room(name="Private")
    sub = await alice.create_room(
        preset="public_chat", name="Sub", creation_content={"type": "m.space"}
    )
    deep = await alice.create_room(preset="public_chat", name="Deep")
    await add_child(alice, space, public, order="b")
    await add_child(alice, space, private, order="a")
    await add_child(alice, space, sub, order="c", suggested=True)
    await add_child(alice, sub, deep)
    gone = await alice.create_room(preset="public_chat", name="Removed")
    await add_child(alice, space, gone)
    await alice.put_state(space, "m.space.child", {}, gone)  # emptied: no longer a child

    r = await walk(alice, space)
    names = [x.get("name") for x in r["rooms"]]
    assert names == ["Space", "Private", "Public", "Sub", "Deep"]
    root = r["rooms"][0]
    assert root["room_type"] == "m.space" and root["num_joined_members"] == 1
    assert {c["state_key"] for c in root["children_state"]} == {public, private, sub}
    assert all("origin_server_ts" in c for c in root["children_state"])
    # Bob sees what is public, not the private room.
    r = await walk(bob, space)
    assert [x.get("name") for x in r["rooms"]] == ["Space", "Public", "Sub", "Deep"]
    # suggested_only, max_depth, paging.
    r = await walk(alice, space, "?suggested_only=true")
    assert [x.get("name") for x in r["rooms"]] == ["Space", "Sub"]  # at every level
    r = await walk(alice, space, "?max_depth=1")
    assert [x.get("name") for x in r["rooms"]] == ["Space", "Private", "Public", "Sub"]
    got: list[str] = []
    token = ""
    while True:
        r = await walk(alice, space, "?limit=2" + (f"&from={token}" if token else ""))
        got += [x["name"] for x in r["rooms"]]
        if "next_batch" not in r:
            break
        token = r["next_batch"]
    assert got == ["Space", "Private", "Public", "Sub", "Deep"]
    # A private space is not walked for outsiders; bad queries are 400s.
    hidden = await alice.create_room(name="Hidden", creation_content={"type": "m.space"})
    r = await walk(bob, hidden, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    await walk(alice, space, "?suggested_only=yes", expect=400)
    await walk(alice, space, "?from=zzz", expect=400)
    await walk(alice, space, "?limit=-1", expect=400)
