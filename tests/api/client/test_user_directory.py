"""POST /user_directory/search: users sharing a room, and public rooms' members."""

from __future__ import annotations

from tests.helpers import CS, MatrixClient, User


async def find(user: User, term: str, limit: int | None = None) -> dict:  # type: ignore[type-arg]
    body: dict = {"search_term": term}  # type: ignore[type-arg]
    if limit is not None:
        body["limit"] = limit
    return dict(await user.call("POST", f"{CS}/user_directory/search", body))


async def test_directory_lists_shared_and_public_room_members(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    dave = await client.register("dave")
    await bob.call(
        "PUT", f"{CS}/profile/{bob.user_id}/displayname", {"displayname": "Bobby Tables"}
    )
    private = await alice.create_room(invite=[bob.user_id])
    await bob.call("POST", f"{CS}/join/{private}", {})
    public = await carol.create_room(preset="public_chat")
    hidden = await dave.create_room()  # dave shares no room with alice: not listed
    assert hidden
    r = await find(alice, "bob")
    assert [x["user_id"] for x in r["results"]] == [bob.user_id]
    assert r["results"][0]["display_name"] == "Bobby Tables" and r["limited"] is False
    assert (await find(alice, "tables"))["results"][0]["user_id"] == bob.user_id
    assert (await find(alice, "bobby tab"))["results"][0]["user_id"] == bob.user_id
    assert [x["user_id"] for x in (await find(alice, "carol"))["results"]] == [carol.user_id]
    assert (await find(alice, "dave"))["results"] == []
    # Wildcards in the term are plain characters.
    assert (await find(alice, "%"))["results"] == []
    assert (await find(alice, "_"))["results"] == []
    # limit and limited.
    for name in ("alpha1", "alpha2", "alpha3"):
        u = await client.register(name)
        await u.call("POST", f"{CS}/join/{public}", {})
    r = await find(alice, "alpha", limit=2)
    assert len(r["results"]) == 2 and r["limited"] is True
    r = await alice.call("POST", f"{CS}/user_directory/search", {"limit": 3}, expect=400)
    assert r["errcode"] == "M_MISSING_PARAM"
    await alice.call(
        "POST", f"{CS}/user_directory/search", {"search_term": "a", "limit": -1}, expect=400
    )
