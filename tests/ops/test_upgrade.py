"""Upgrading a database made by the first release (v0.1.0, commit f8d680a):
the old server's own code writes accounts, rooms and messages; today's
server upgrades the database (schema.sql, then the numbered migrations) and
serves everything; ``homeserver verify`` finds no drift; and an older server
is refused a database newer than itself."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from homeserver.storage.database import SCHEMA_VERSION, Database, SchemaTooNew
from tests.conftest import create_test_database, drop_test_database
from tests.faults.procs import CS, Http, Proc, run_cli

ROOT = Path(__file__).resolve().parents[2]
V0_1_0 = "f8d680a"  # tagged v0.1.0


def old_release(into: Path) -> Path:
    """The v0.1.0 package and schema, from the repository's history."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{V0_1_0}^{{commit}}"], capture_output=True
    )
    if found.returncode != 0:
        pytest.skip("v0.1.0 is not in this clone's history (a shallow clone)")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", V0_1_0, "homeserver", "schema.sql"],
        capture_output=True,
        check=True,
    )
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


async def test_upgrade_from_v0_1_0(pg_url: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="hs-upgrade-"))
    root.chmod(0o755)
    old = old_release(root / "v0.1.0")
    url = await create_test_database(pg_url, template=None)
    data = root / "data"
    try:
        # 1. The first release writes.
        first = Proc(data, server_name="upgrade.test", database_url=url, cwd=old)
        await first.start()
        async with aiohttp.ClientSession() as s:
            http = Http(s)
            r = await http.call("GET", f"{first.base}/health")
            assert r.status == 404  # (the old code: no health endpoint yet)
            alice, ta = await http.register(first.base, "alice")
            bob, tb = await http.register(first.base, "bob")
            room = (
                await http.ok(
                    "POST",
                    f"{first.base}{CS}/createRoom",
                    ta,
                    {"preset": "public_chat", "name": "old"},
                )
            )["room_id"]
            await http.ok("POST", f"{first.base}{CS}/join/{room}", tb, {})
            for i in range(5):
                await http.ok(
                    "PUT",
                    f"{first.base}{CS}/rooms/{room}/send/m.room.message/t{i}",
                    ta,
                    {"msgtype": "m.text", "body": f"old {i}"},
                )
        first.stop()
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT max(version) FROM schema_version") == 1
        finally:
            await conn.close()

        # 2. Today's server upgrades the database and serves what was there.
        now = Proc(data, server_name="upgrade.test", database_url=url)
        await now.start()
        async with aiohttp.ClientSession() as s:
            http = Http(s)
            ready = await http.ok("GET", f"{now.base}/health/ready")
            assert ready["schema_version"] == SCHEMA_VERSION
            login = await http.ok(
                "POST",
                f"{now.base}{CS}/login",
                None,
                {"type": "m.login.password", "user": "alice", "password": "pw"},
            )
            token = login["access_token"]
            msgs = await http.ok(
                "GET", f"{now.base}{CS}/rooms/{room}/messages?dir=b&limit=20", token
            )
            bodies = [
                e["content"].get("body") for e in msgs["chunk"] if e["type"] == "m.room.message"
            ]
            assert bodies == [f"old {i}" for i in reversed(range(5))]
            await http.ok(
                "PUT",
                f"{now.base}{CS}/rooms/{room}/send/m.room.message/new",
                token,
                {"body": "new"},
            )
            joined = await http.ok("GET", f"{now.base}{CS}/rooms/{room}/joined_members", tb)
            assert set(joined["joined"]) == {alice, bob}
        now.stop()
        versions = await _versions(url)
        assert versions == sorted({1, *range(2, SCHEMA_VERSION + 1)}), versions

        # 3. Nothing drifted.
        out = run_cli("verify", "--data-dir", str(data), "--database-url", url)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "no drift" in out.stdout and "state reset alarms: 0" in out.stdout, out.stdout

        # 4. A database newer than the code is refused.
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO schema_version VALUES ($1, 0)", SCHEMA_VERSION + 1)
        finally:
            await conn.close()
        db = await Database.connect(url, min_size=1, max_size=1)
        try:
            with pytest.raises(SchemaTooNew):
                await db.apply_schema()
        finally:
            await db.close()
    finally:
        await drop_test_database(pg_url, url)


async def _versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY 1")]
    finally:
        await conn.close()
