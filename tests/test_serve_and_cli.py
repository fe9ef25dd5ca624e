"""The `homeserver` command for real: serve with the embedded PostgreSQL,
SIGTERM, serve again (accounts and signing key kept); operator subcommands."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.ports import free_port

HS = [sys.executable, "-m", "homeserver.cli"]


def _insecure_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http(method: str, url: str, body: object = None, token: str | None = None) -> dict:
    """JSON over HTTP, or HTTPS to the federation port (self-signed)."""
    req = urllib.request.Request(
        url, method=method, data=json.dumps(body).encode() if body is not None else None
    )
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10, context=_insecure_tls()) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def start(data: Path, port: int, fed: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [
            *HS,
            "serve",
            "--data-dir",
            str(data),
            "--client-port",
            str(port),
            "--federation-port",
            str(fed),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(data.parent / "serve.log", "ab"),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            http("GET", f"http://127.0.0.1:{port}/_matrix/client/versions")
            return p
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise AssertionError("server did not answer /versions within 60 s")


@pytest.mark.slow
def test_restart_keeps_accounts_and_signing_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port, fed = free_port(), free_port()
    base = f"http://127.0.0.1:{port}/_matrix/client/v3"
    p = start(data, port, fed)
    try:
        r = http(
            "POST",
            f"{base}/register",
            {"username": "keep", "password": "pw", "auth": {"type": "m.login.dummy"}},
        )
        assert r["user_id"] == "@keep:localhost:8448"
        key1 = http("GET", f"https://127.0.0.1:{fed}/_matrix/key/v2/server")["verify_keys"]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    # the embedded PostgreSQL stopped with it
    assert not (data / "postgres" / "postmaster.pid").exists()
    p = start(data, port, fed)
    try:
        r = http(
            "POST",
            f"{base}/login",
            {
                "type": "m.login.password",
                "password": "pw",
                "identifier": {"type": "m.id.user", "user": "keep"},
            },
        )
        assert r["user_id"] == "@keep:localhost:8448"
        key2 = http("GET", f"https://127.0.0.1:{fed}/_matrix/key/v2/server")["verify_keys"]
        assert key1 == key2
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def run(*args: str, db_url: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HS, *args, "--database-url", db_url, "--data-dir", str(tmp), "--server-name", "hs.test"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


def test_operator_commands(db_url: str, tmp_path: Path) -> None:
    r = run("register-user", "op", "--admin", "--password", "pw", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 0 and "@op:hs.test" in r.stdout, r.stderr
    r = run("register-user", "op", "--password", "pw2", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 0 and "updated" in r.stdout
    r = run("verify", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 0 and "no drift" in r.stdout, r.stdout + r.stderr
    r = run("admin", "rooms", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["total_rooms"] == 0
    r = run("admin", "show", "!nope:hs.test", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 1 and "M_NOT_FOUND" in r.stderr
    r = run("rebuild", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 0 and "rebuilt projections of 0 room(s)" in r.stdout


def test_admin_create_room(db_url: str, tmp_path: Path) -> None:
    """`homeserver admin create-room`: a room for others, made by the system
    user, which leaves; the operator is no member; audited."""
    for name in ("alice", "bob"):
        r = run("register-user", name, "--password", "pw", db_url=db_url, tmp=tmp_path)
        assert r.returncode == 0, r.stderr
    r = run(
        *("admin", "--as", "@op:hs.test", "create-room", "--name", "Ops", "--kind", "conference"),
        *("--owner", "@alice:hs.test", "--add", "@alice:hs.test", "--invite", "@bob:hs.test"),
        db_url=db_url,
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["owner"] == "@alice:hs.test" and out["created_by"] == "@_homeserver:hs.test"
    r = run("admin", "members", out["room_id"], db_url=db_url, tmp=tmp_path)
    members = {m["user_id"]: m["membership"] for m in json.loads(r.stdout)}
    assert members == {
        "@_homeserver:hs.test": "leave",
        "@alice:hs.test": "join",
        "@bob:hs.test": "invite",
    }
    r = run("admin", "create-room", "--owner", "@alice:hs.test", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 1 and "M_INVALID_PARAM" in r.stderr
    r = run("verify", db_url=db_url, tmp=tmp_path)
    assert r.returncode == 0 and "no drift" in r.stdout, r.stdout + r.stderr
