"""Registration on a server that is not open (``registration.requires_token``):
only a token an operator handed out admits an account, and only as many
times as it allows (Client-Server API m.login.registration_token; operator
API and CLI in the shape of Synapse's registration-token admin API)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from homeserver.api.appkeys import ACCOUNTS
from homeserver.config import Config
from tests.helpers import CS, MatrixClient, User, make_config

ADMIN = "/_homeserver/admin/v1/registration_tokens"
VALIDITY = "/_matrix/client/v1/register/m.login.registration_token/validity"
STAGE = "m.login.registration_token"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    # Rate limits stay lifted: this file is about tokens (test_rate_limits.py
    # covers the limits on registration and on the validity endpoint).
    return make_config(
        tmp_path,
        **{
            "admins": ["@op:hs.test"],
            "listen.bind": "0.0.0.0",  # not loopback: registration is closed by default
            "registration.requires_token": True,
        },
    )


@pytest.fixture
async def op(client: MatrixClient) -> User:
    accounts = client.http.server.app[ACCOUNTS]
    user_id = await accounts.register("op", "password", admin=True)
    session = await accounts.create_session(user_id, None, None)
    return User(user_id, session.access_token, session.device_id, client)


def signup(name: str, auth: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"username": name, "password": "pw"}
    if auth is not None:
        body["auth"] = auth
    return body


async def test_registration_without_a_token_is_refused(client: MatrixClient) -> None:
    """The open-server moves (no auth, m.login.dummy, a made-up token) all
    get 401 with the token stage as the only flow; no account is made."""
    r = await client.call("POST", f"{CS}/register", signup("intruder", None), expect=401)
    assert r["flows"] == [{"stages": [STAGE]}] and r["session"]
    r = await client.call(
        "POST", f"{CS}/register", signup("intruder", {"type": "m.login.dummy"}), expect=401
    )
    assert r["flows"] == [{"stages": [STAGE]}]
    r = await client.call(
        "POST",
        f"{CS}/register",
        signup("intruder", {"type": STAGE, "token": "letmein", "session": r["session"]}),
        expect=401,
    )
    assert r["errcode"] == "M_UNAUTHORIZED" and r["flows"] == [{"stages": [STAGE]}]
    for bad in (None, 42, "x" * 65, "bad token"):
        r = await client.call(
            "POST", f"{CS}/register", signup("intruder", {"type": STAGE, "token": bad}), expect=401
        )
        assert r["errcode"] == "M_UNAUTHORIZED"
    r = await client.call("GET", f"{CS}/register/available?username=intruder")
    assert r == {"available": True}


async def test_a_token_admits_as_many_accounts_as_it_allows(client: MatrixClient, op: User) -> None:
    token = (await op.call("POST", f"{ADMIN}/new", {"uses_allowed": 1}))["token"]
    assert len(token) == 16
    assert await client.call("GET", f"{VALIDITY}?token={token}") == {"valid": True}
    first = await client.call("POST", f"{CS}/register", signup("invited", None), expect=401)
    r = await client.call(
        "POST",
        f"{CS}/register",
        signup("invited", {"type": STAGE, "token": token, "session": first["session"]}),
    )
    assert r["user_id"] == "@invited:hs.test" and r["access_token"]
    info = await op.call("GET", f"{ADMIN}/{token}")
    assert info == {
        "token": token,
        "uses_allowed": 1,
        "pending": 0,
        "completed": 1,
        "expiry_time": None,
    }
    assert await client.call("GET", f"{VALIDITY}?token={token}") == {"valid": False}
    r = await client.call(
        "POST", f"{CS}/register", signup("second", {"type": STAGE, "token": token}), expect=401
    )
    assert r["errcode"] == "M_UNAUTHORIZED"


async def test_racing_registrations_cannot_overspend_a_token(
    client: MatrixClient, op: User
) -> None:
    await op.call("POST", f"{ADMIN}/new", {"token": "two-seats", "uses_allowed": 2})
    answers = await asyncio.gather(
        *(
            client.call(
                "POST",
                f"{CS}/register",
                signup(f"racer{i}", {"type": STAGE, "token": "two-seats"}),
                expect=None,
            )
            for i in range(8)
        )
    )
    assert sorted(a.get("_status", 200) for a in answers) == [200, 200] + [401] * 6
    info = await op.call("GET", f"{ADMIN}/two-seats")
    assert (info["pending"], info["completed"]) == (0, 2)


async def test_a_failed_registration_gives_its_use_back(client: MatrixClient, op: User) -> None:
    """Four clients racing for one user name with one token: one account;
    the losers' uses of the token are given back, not lost."""
    await op.call("POST", f"{ADMIN}/new", {"token": "four", "uses_allowed": 4})
    answers = await asyncio.gather(
        *(
            client.call(
                "POST",
                f"{CS}/register",
                signup("dup", {"type": STAGE, "token": "four"}),
                expect=None,
            )
            for _ in range(4)
        )
    )
    assert sorted(a.get("errcode", "ok") for a in answers) == ["M_USER_IN_USE"] * 3 + ["ok"]
    info = await op.call("GET", f"{ADMIN}/four")
    assert (info["pending"], info["completed"]) == (0, 1)
    assert await client.call("GET", f"{VALIDITY}?token=four") == {"valid": True}


async def test_expired_and_revoked_tokens_stop_working(client: MatrixClient, op: User) -> None:
    r = await op.call("POST", f"{ADMIN}/new", {"token": "old", "expiry_time": 1_000}, expect=400)
    assert r["errcode"] == "M_INVALID_PARAM"
    expiry = int(time.time() * 1000) + 300
    await op.call("POST", f"{ADMIN}/new", {"token": "brief", "expiry_time": expiry})
    await op.call("POST", f"{ADMIN}/new", {"token": "revoked"})
    await op.call("DELETE", f"{ADMIN}/revoked")
    while time.time() * 1000 <= expiry:
        await asyncio.sleep(0.1)
    for token in ("brief", "revoked"):
        assert await client.call("GET", f"{VALIDITY}?token={token}") == {"valid": False}
        await client.call(
            "POST", f"{CS}/register", signup("late", {"type": STAGE, "token": token}), expect=401
        )
    listed = await op.call("GET", f"{ADMIN}?valid=false")
    assert [t["token"] for t in listed["registration_tokens"]] == ["brief"]
    await op.call("DELETE", f"{ADMIN}/revoked", expect=404)


async def test_operator_api(client: MatrixClient, op: User) -> None:
    made = await op.call("POST", f"{ADMIN}/new", {"length": 40, "uses_allowed": 3})
    assert len(made["token"]) == 40
    await op.call("POST", f"{ADMIN}/new", {"token": "spent", "uses_allowed": 0})
    await op.call("POST", f"{ADMIN}/new", {"token": "spent"}, expect=400)
    for bad in (
        {"token": "no spaces"},
        {"uses_allowed": -1},
        {"length": 65},
        {"uses_allowed": "3"},
    ):
        r = await op.call("POST", f"{ADMIN}/new", bad, expect=400)
        assert r["errcode"] == "M_INVALID_PARAM"
    valid = await op.call("GET", f"{ADMIN}?valid=true")
    assert [t["token"] for t in valid["registration_tokens"]] == [made["token"]]
    updated = await op.call("PUT", f"{ADMIN}/spent", {"uses_allowed": None})
    assert updated["uses_allowed"] is None
    assert await client.call("GET", f"{VALIDITY}?token=spent") == {"valid": True}
    await op.call("PUT", f"{ADMIN}/unknown", {"uses_allowed": 1}, expect=404)
    await op.call("GET", f"{ADMIN}/unknown", expect=404)
    # Synapse's path serves the same API.
    synapse_path = "/_synapse/admin/v1/registration_tokens"
    assert len((await op.call("GET", synapse_path))["registration_tokens"]) == 2
    # Not for ordinary users, nor for nobody.
    accounts = client.http.server.app[ACCOUNTS]
    user_id = await accounts.register("someone", "pw")
    token = (await accounts.create_session(user_id, None, None)).access_token
    r = await client.call("POST", f"{ADMIN}/new", {}, token=token, expect=403)
    assert r["errcode"] == "M_FORBIDDEN"
    await client.call("GET", ADMIN, expect=401)


async def test_validity_endpoint_edges(
    client: MatrixClient, aiohttp_client: Any, db: Any, tmp_path: Path
) -> None:
    r = await client.call("GET", VALIDITY, expect=400)
    assert r["errcode"] == "M_MISSING_PARAM"
    assert await client.call("GET", f"{VALIDITY}?token={'x' * 65}") == {"valid": False}
    from homeserver.app import create_app

    closed = make_config(
        tmp_path / "closed",
        **{"registration.enabled": False, "registration.requires_token": True},
    )
    other = MatrixClient(await aiohttp_client(create_app(closed, db)))
    r = await other.call("GET", f"{VALIDITY}?token=abc", expect=403)
    assert r["errcode"] == "M_FORBIDDEN"


def test_cli(db_url: str, tmp_path: Path) -> None:
    """``homeserver admin registration-token create | list | update | show | revoke``."""

    def run(*args: str) -> Any:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "homeserver.cli",
                "admin",
                "registration-token",
                *args,
                "--database-url",
                db_url,
                "--data-dir",
                str(tmp_path),
                "--server-name",
                "hs.test",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ),
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    made = run("create", "--token", "cli-token", "--uses-allowed", "2")
    assert made == {
        "token": "cli-token",
        "uses_allowed": 2,
        "pending": 0,
        "completed": 0,
        "expiry_time": None,
    }
    assert run("update", "cli-token", "--uses-allowed", "none")["uses_allowed"] is None
    assert [t["token"] for t in run("list", "--valid", "true")["registration_tokens"]] == [
        "cli-token"
    ]
    assert run("show", "cli-token")["token"] == "cli-token"
    assert run("revoke", "cli-token") == {"revoked": "cli-token"}
    assert run("list")["registration_tokens"] == []
