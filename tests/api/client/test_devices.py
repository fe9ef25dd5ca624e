"""Devices, password changes, deactivation and third-party identifiers."""

from __future__ import annotations

from typing import Any

from tests.helpers import CS, MatrixClient, User


async def login(client: MatrixClient, name: str, password: str, device: str) -> dict[str, Any]:
    return dict(
        await client.call(
            "POST",
            f"{CS}/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": password,
                "device_id": device,
                "initial_device_display_name": f"{device} phone",
            },
        )
    )


def password_auth(user: User, password: str, session: str) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": password,
        "session": session,
    }


async def test_list_get_rename_devices(client: MatrixClient) -> None:
    alice = await client.register("alice", "pw")
    await login(client, "alice", "pw", "PHONE")
    devices = (await alice.call("GET", f"{CS}/devices"))["devices"]
    assert {d["device_id"] for d in devices} == {alice.device_id, "PHONE"}
    phone = await alice.call("GET", f"{CS}/devices/PHONE")
    assert phone["display_name"] == "PHONE phone" and phone["last_seen_ts"] > 0
    await alice.call("PUT", f"{CS}/devices/PHONE", {"display_name": "work"})
    assert (await alice.call("GET", f"{CS}/devices/PHONE"))["display_name"] == "work"
    # Not mine, or no such device: 404.
    bob = await client.register("bob", "pw")
    r = await bob.call("GET", f"{CS}/devices/PHONE", expect=404)
    assert r["errcode"] == "M_NOT_FOUND"
    await bob.call("PUT", f"{CS}/devices/PHONE", {"display_name": "x"}, expect=404)
    assert (await alice.call("GET", f"{CS}/devices/PHONE"))["display_name"] == "work"


async def test_delete_device_needs_the_password(client: MatrixClient) -> None:
    alice = await client.register("alice", "pw")
    phone = await login(client, "alice", "pw", "PHONE")
    # No auth: the flows and a session.
    r = await alice.call("DELETE", f"{CS}/devices/PHONE", {}, expect=401)
    assert r["flows"] == [{"stages": ["m.login.password"]}] and r["session"]
    # Wrong password: 401 again, with the error.
    wrong = password_auth(alice, "nope", r["session"])
    r2 = await alice.call("DELETE", f"{CS}/devices/PHONE", {"auth": wrong}, expect=401)
    assert r2["errcode"] == "M_FORBIDDEN" and r2["session"] == r["session"]
    await client.call("GET", f"{CS}/account/whoami", token=phone["access_token"])
    # Someone else's identity: refused.
    bob = await client.register("bob", "pw")
    other = password_auth(bob, "pw", r["session"])
    await alice.call("DELETE", f"{CS}/devices/PHONE", {"auth": other}, expect=403)
    # Right password: the device and its token are gone.
    right = password_auth(alice, "pw", r["session"])
    await alice.call("DELETE", f"{CS}/devices/PHONE", {"auth": right})
    await client.call("GET", f"{CS}/account/whoami", token=phone["access_token"], expect=401)
    await alice.call("DELETE", f"{CS}/devices/PHONE", {"auth": right}, expect=404)


async def test_delete_devices_in_bulk(client: MatrixClient) -> None:
    alice = await client.register("alice", "pw")
    a = await login(client, "alice", "pw", "A")
    b = await login(client, "alice", "pw", "B")
    r = await alice.call("POST", f"{CS}/delete_devices", {"devices": ["A", "B"]}, expect=401)
    body = {"devices": ["A", "B", "NEVER"], "auth": password_auth(alice, "pw", r["session"])}
    await alice.call("POST", f"{CS}/delete_devices", body)
    for t in (a, b):
        await client.call("GET", f"{CS}/account/whoami", token=t["access_token"], expect=401)
    devices = (await alice.call("GET", f"{CS}/devices"))["devices"]
    assert [d["device_id"] for d in devices] == [alice.device_id]
    await alice.call("POST", f"{CS}/delete_devices", {"devices": [1]}, expect=400)


async def test_change_password_logs_out_other_devices(client: MatrixClient) -> None:
    alice = await client.register("alice", "old")
    phone = await login(client, "alice", "old", "PHONE")
    r = await alice.call("POST", f"{CS}/account/password", {"new_password": "new"}, expect=401)
    body = {"new_password": "new", "auth": password_auth(alice, "old", r["session"])}
    await alice.call("POST", f"{CS}/account/password", body)
    await alice.call("GET", f"{CS}/account/whoami")  # this device stays
    await client.call("GET", f"{CS}/account/whoami", token=phone["access_token"], expect=401)
    await client.call(
        "POST",
        f"{CS}/login",
        {"type": "m.login.password", "user": "alice", "password": "old"},
        expect=403,
    )
    tablet = await login(client, "alice", "new", "TABLET")
    # logout_devices false keeps the others.
    body = {
        "new_password": "newer",
        "logout_devices": False,
        "auth": password_auth(alice, "new", "s"),
    }
    await alice.call("POST", f"{CS}/account/password", body)
    await client.call("GET", f"{CS}/account/whoami", token=tablet["access_token"])
    caps = await alice.call("GET", f"{CS}/capabilities")
    assert caps["capabilities"]["m.change_password"] == {"enabled": True}
    assert caps["capabilities"]["m.3pid_changes"] == {"enabled": False}


async def test_deactivate_leaves_rooms_and_ends_logins(client: MatrixClient) -> None:
    alice = await client.register("alice", "pw")
    bob = await client.register("bob", "pw")
    room = await alice.create_room(preset="public_chat")
    await bob.call("POST", f"{CS}/join/{room}", {})
    invited = await alice.create_room()
    await alice.call("POST", f"{CS}/rooms/{invited}/invite", {"user_id": bob.user_id})
    r = await bob.call("POST", f"{CS}/account/deactivate", {}, expect=401)
    body = {"auth": password_auth(bob, "pw", r["session"])}
    out = await bob.call("POST", f"{CS}/account/deactivate", body)
    assert out["id_server_unbind_result"] == "no-support"
    await bob.call("GET", f"{CS}/account/whoami", expect=401)
    members = await alice.call("GET", f"{CS}/rooms/{room}/joined_members")
    assert bob.user_id not in members["joined"]
    bob_in_invited = await alice.state(invited, "m.room.member", bob.user_id)
    assert bob_in_invited["membership"] == "leave"
    r = await client.call(
        "POST",
        f"{CS}/login",
        {"type": "m.login.password", "user": "bob", "password": "pw"},
        expect=403,
    )
    # The name is not handed out again.
    await client.call(
        "POST",
        f"{CS}/register",
        {"username": "bob", "password": "pw", "auth": {"type": "m.login.dummy"}},
        expect=400,
    )


async def test_third_party_identifiers_are_refused_the_spec_way(client: MatrixClient) -> None:
    alice = await client.register("alice", "pw")
    assert await alice.call("GET", f"{CS}/account/3pid") == {"threepids": []}
    token_req = {"client_secret": "s", "email": "a@example.org", "send_attempt": 1}
    r = await client.call("POST", f"{CS}/account/3pid/email/requestToken", token_req, expect=400)
    assert r["errcode"] == "M_THREEPID_MEDIUM_NOT_SUPPORTED"
    r = await client.call("POST", f"{CS}/register/email/requestToken", token_req, expect=400)
    assert r["errcode"] == "M_THREEPID_MEDIUM_NOT_SUPPORTED"
    r = await alice.call(
        "POST", f"{CS}/account/3pid/add", {"client_secret": "s", "sid": "x"}, expect=400
    )
    assert r["errcode"] == "M_THREEPID_AUTH_FAILED"
    r = await alice.call(
        "POST", f"{CS}/account/3pid/delete", {"medium": "email", "address": "a@example.org"}
    )
    assert r["id_server_unbind_result"] == "no-support"
