"""The seed systems' promises of issue 20 (docs/room-kinds.md), one test each,
through the HTTP endpoints (the JavaScript Room API's createRoom promise is in
tests/js/room-api.test.mjs):

- the server owns ``creator`` on every path that creates rooms (createRoom
  here and in the JS test, operator creation below, the one-to-one and
  upgrade paths in test_room_kinds.py::test_upgrade_one_to_one_to_group);
- OpenSER IMC: only the owner and the administrators may invite;
- IM SOAP MUC: members-only means only admins can invite (``allow_invites``);
- OpenSER IMC: the owner's exit destroys the room;
- IPCortex api_chat: operators create rooms without being a participant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from homeserver.config import Config
from homeserver.storage.database import Database
from tests.helpers import CS, MatrixClient, User, make_config

HS = "/_homeserver/client/v1"
ADMIN = "/_homeserver/admin/v1"
SYSTEM = "@_homeserver:hs.test"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path, admins=["@admin:hs.test"])


async def create_event(user: User, room: str) -> dict[str, Any]:
    state = await user.call("GET", f"{CS}/rooms/{room}/state")
    (ev,) = [e for e in state if e["type"] == "m.room.create"]
    return dict(ev)


async def membership(user: User, room: str, target: str) -> str | None:
    members = await user.call("GET", f"{CS}/rooms/{room}/members")
    got = {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}
    return got.get(target)


# ------------------------------------------------------------ 1. creator


@pytest.mark.parametrize("version", ["10", "11", "12"])
async def test_create_room_overwrites_or_drops_a_client_creator(
    client: MatrixClient, version: str
) -> None:
    alice = await client.register("alice")
    room = await alice.create_room(
        room_version=version,
        creation_content={
            "creator": "@mallory:hs.test",
            "io.homeserver.owner": "@mallory:hs.test",
            "m.federate": True,
        },
    )
    ev = await create_event(alice, room)
    content = ev["content"]
    assert ev["sender"] == alice.user_id and content["room_version"] == version
    if version == "10":
        assert content["creator"] == alice.user_id
    else:
        assert "creator" not in content  # v11+ have no such field: dropped
    assert "io.homeserver.owner" not in content  # server-owned, not owner-bound
    assert content["m.federate"] is True  # other keys are kept


# ------------------------------------------- 2. IMC: owner and admins invite


async def test_imc_conference_room_only_owner_and_admins_invite(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    dave = await client.register("dave")
    room = await alice.create_room(
        name="chat-000", creation_content={"io.homeserver.kind": "conference"}
    )
    await alice.membership(room, "invite", user_id=bob.user_id)
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    # a plain member may not invite (the invite power level says so, so every
    # server enforces it) ...
    r = await bob.membership(room, "invite", user_id=carol.user_id, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    assert await membership(alice, room, carol.user_id) is None
    cfg = await bob.call("GET", f"{HS}/rooms/{room}/config")
    assert cfg["kind"] == "conference" and cfg["members_only"] is True
    assert cfg["allow_invites"] is False and cfg["owner_bound"] is True
    pl = await alice.state(room, "m.room.power_levels")
    assert pl["invite"] == 100
    # ... the owner may, and so may an administrator
    await alice.membership(room, "invite", user_id=carol.user_id)
    pl["users"] = {**pl.get("users", {}), bob.user_id: 100}
    await alice.put_state(room, "m.room.power_levels", pl)
    await bob.membership(room, "invite", user_id=dave.user_id)
    assert await membership(alice, room, dave.user_id) == "invite"


# ------------------------------------ 3. MUC: members-only → admins invite


async def test_members_only_turns_invites_to_admins_unless_allowed(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(preset="public_chat", power_level_content_override={"invite": 0})
    await bob.call("POST", f"{CS}/join/{room}", {})
    cfg = await bob.call("GET", f"{HS}/rooms/{room}/config")
    assert cfg["members_only"] is False and cfg["allow_invites"] is True
    cfg = await alice.call("PUT", f"{HS}/rooms/{room}/config", {"members_only": True})
    assert cfg["members_only"] is True and cfg["allow_invites"] is False
    r = await bob.membership(room, "invite", user_id=carol.user_id, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    # allowinvites: "allow occupants to invite others"
    cfg = await alice.call("PUT", f"{HS}/rooms/{room}/config", {"allow_invites": True})
    assert cfg["members_only"] is True and cfg["allow_invites"] is True
    await bob.membership(room, "invite", user_id=carol.user_id)
    # set explicitly beside members_only, allow_invites wins
    cfg = await alice.call(
        "PUT", f"{HS}/rooms/{room}/config", {"members_only": True, "allow_invites": True}
    )
    assert cfg["allow_invites"] is True
    r = await alice.call("PUT", f"{HS}/rooms/{room}/config", {"allow_invites": "no"}, expect=400)
    assert r["errcode"] == "M_BAD_JSON"
    r = await bob.call("PUT", f"{HS}/rooms/{room}/config", {"allow_invites": False}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_a_moderator_makes_an_admin_invite_room_members_only(client: MatrixClient) -> None:
    """Invites already at the admin level: turning members_only on sends only
    the join rules, which a moderator may change (not the power levels)."""
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(
        preset="public_chat",
        power_level_content_override={"invite": 100, "users": {bob.user_id: 50}},
    )
    await bob.call("POST", f"{CS}/join/{room}", {})
    cfg = await bob.call("PUT", f"{HS}/rooms/{room}/config", {"members_only": True})
    assert cfg["members_only"] is True and cfg["allow_invites"] is False
    r = await bob.call("PUT", f"{HS}/rooms/{room}/config", {"allow_invites": True}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


# ---------------------------------------- 4. IMC: the owner's exit destroys


async def test_owner_exit_destroys_an_owner_bound_room(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    carol = await client.register("carol")
    room = await alice.create_room(
        room_alias_name="chat-001",
        creation_content={"io.homeserver.kind": "conference"},
        invite=[bob.user_id, carol.user_id],
    )
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    await carol.call("POST", f"{CS}/rooms/{room}/join", {})
    create = (await create_event(alice, room))["content"]
    assert create["io.homeserver.owner_bound"] is True
    assert create["io.homeserver.owner"] == alice.user_id
    # anyone else leaving is just leaving
    await carol.call("POST", f"{CS}/rooms/{room}/leave", {})
    assert await membership(alice, room, bob.user_id) == "join"
    # the owner's exit: members removed with a reason, alias gone, room closed
    await alice.call("POST", f"{CS}/rooms/{room}/leave", {})
    bob_member = await bob.state(room, "m.room.member", bob.user_id)
    assert bob_member["membership"] == "leave"
    assert bob_member["reason"] == "The room's owner left, so the room is closed"
    assert (await alice.state(room, "m.room.member", alice.user_id))["membership"] == "leave"
    r = await bob.call("GET", f"{CS}/directory/room/%23chat-001:hs.test", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    r = await bob.call("POST", f"{CS}/rooms/{room}/join", {}, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


async def test_without_owner_bound_the_owner_just_leaves(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    for content in (
        {"io.homeserver.kind": "persistent"},
        {"io.homeserver.kind": "conference", "io.homeserver.owner_bound": False},
    ):
        room = await alice.create_room(creation_content=content, invite=[bob.user_id])
        await bob.call("POST", f"{CS}/rooms/{room}/join", {})
        await alice.call("POST", f"{CS}/rooms/{room}/leave", {})
        assert await membership(bob, room, bob.user_id) == "join"
        await bob.send(room, "still open")


async def test_owner_bound_option_on_another_kind(client: MatrixClient) -> None:
    alice = await client.register("alice")
    bob = await client.register("bob")
    room = await alice.create_room(
        creation_content={"io.homeserver.owner_bound": True}, invite=[bob.user_id]
    )
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    await alice.call("POST", f"{CS}/rooms/{room}/leave", {"reason": "closing time"})
    member = await bob.state(room, "m.room.member", bob.user_id)
    assert member["membership"] == "leave" and member["reason"] == "closing time"


# ------------------------------------------ 5. IPCortex: operator creation


@pytest.mark.parametrize("version", ["10", "12"])
async def test_operator_creates_a_room_for_others(
    client: MatrixClient, db: Database, version: str
) -> None:
    admin = await client.register("admin")
    alice = await client.register("alice")
    bob = await client.register("bob")
    out = await admin.call(
        "POST",
        f"{ADMIN}/rooms",
        {
            "name": "Support",
            "kind": "conference",
            "owner": alice.user_id,
            "add": [alice.user_id],
            "invite": [bob.user_id],
            "room_version": version,
        },
    )
    room = out["room_id"]
    assert out["created_by"] == SYSTEM and out["owner"] == alice.user_id
    members = await alice.call("GET", f"{CS}/rooms/{room}/members")
    got = {e["state_key"]: e["content"]["membership"] for e in members["chunk"]}
    # the operator is no member; the system user made the room and left
    assert got == {SYSTEM: "leave", alice.user_id: "join", bob.user_id: "invite"}
    ev = await create_event(alice, room)
    assert ev["sender"] == SYSTEM
    assert ev["content"]["io.homeserver.owner"] == alice.user_id
    pl = await alice.state(room, "m.room.power_levels")
    if version == "10":
        assert ev["content"]["creator"] == SYSTEM
        assert pl["users"] == {alice.user_id: 100}  # the system user stepped down
    else:
        assert "creator" not in ev["content"]
        assert ev["content"]["additional_creators"] == [alice.user_id]
    # the owner runs the room: renames it, and her exit closes it
    await alice.put_state(room, "m.room.name", {"name": "Help desk"})
    await bob.call("POST", f"{CS}/rooms/{room}/join", {})
    await alice.call("POST", f"{CS}/rooms/{room}/leave", {})
    assert (await bob.state(room, "m.room.member", bob.user_id))["membership"] == "leave"
    rows = await db.fetch(
        "SELECT admin, action, target, details FROM admin_audit WHERE action = 'create_room'"
    )
    assert [(r["admin"], r["target"]) for r in rows] == [(admin.user_id, room)]


async def test_operator_creation_refusals(client: MatrixClient, db: Database) -> None:
    admin = await client.register("admin")
    alice = await client.register("alice")
    r = await alice.call(
        "POST", f"{ADMIN}/rooms", {"owner": alice.user_id, "add": [alice.user_id]}, expect=403
    )
    assert r["errcode"] == "M_FORBIDDEN"
    bad: list[tuple[dict[str, Any], int, str]] = [
        ({"add": [alice.user_id]}, 400, "M_MISSING_PARAM"),
        ({"owner": alice.user_id}, 400, "M_INVALID_PARAM"),  # owner among the members
        ({"owner": "alice", "add": ["alice"]}, 400, "M_INVALID_PARAM"),
        ({"owner": alice.user_id, "add": [alice.user_id], "kind": "odd"}, 400, "M_BAD_JSON"),
        ({"owner": alice.user_id, "add": "x"}, 400, "M_BAD_JSON"),
        ({"owner": "@nobody:hs.test", "add": ["@nobody:hs.test"]}, 404, "M_NOT_FOUND"),
        ({"owner": alice.user_id, "add": [alice.user_id, "@x:elsewhere"]}, 400, "M_INVALID_PARAM"),
        ({"owner": SYSTEM, "add": [SYSTEM]}, 400, "M_INVALID_PARAM"),
        ({"owner": "@x:elsewhere", "invite": ["@x:elsewhere"]}, 400, "M_INVALID_PARAM"),
    ]
    for body, status, errcode in bad:
        r = await admin.call("POST", f"{ADMIN}/rooms", body, expect=status)
        assert r["errcode"] == errcode, (body, r)
    out = await admin.call("GET", f"{ADMIN}/rooms")
    assert out["total_rooms"] == 0
    refused = await db.fetchval(
        "SELECT count(*) FROM admin_audit WHERE action = 'create_room' AND details ? 'error'"
    )
    assert refused >= 3
