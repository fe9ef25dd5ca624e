"""Backup and restore (issue 19): a round trip after which the restored
server serves the same rooms, messages and keys, and federation with a peer
goes on; damaged backups and non-fresh targets are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from tests.conftest import create_test_database, drop_test_database
from tests.federation.conftest import free_port
from tests.federation.harness import Client, OurServer, eventually, state_map

HS = [sys.executable, "-m", "homeserver.cli"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HS, *args], capture_output=True, text=True, timeout=300)


async def test_backup_restore_round_trip_keeps_federating(pg_url: str, template_url: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="hs-backup-"))
    root.chmod(0o755)
    urls = [await create_test_database(pg_url) for _ in range(2)]
    restored_url = await create_test_database(pg_url, template=None)
    fed, port = free_port(), free_port()
    a = OurServer("a", fed, port, urls[0], root / "a")
    peer = OurServer("peer", free_port(), free_port(), urls[1], root / "peer")
    a2 = OurServer("a2", fed, port, restored_url, root / "a2")
    try:
        a.start()
        peer.start()
        await a.wait_ready()
        await peer.wait_ready()
        async with aiohttp.ClientSession() as s:
            alice = await Client(s, a.base, a.server_name).register("alice")
            bob = await Client(s, peer.base, peer.server_name).register("bob")
            room = await alice.create_room(preset="public_chat", name="kept")
            await bob.join(room, [a.server_name])
            await alice.send(room, "before the backup")
            await eventually(lambda: bob.bodies(room), lambda b: "before the backup" in b)
            before = state_map(await alice.state(room))
            key_before = (root / "a" / "signing.key").read_text()

            out = cli(
                "backup",
                "--data-dir",
                str(a.data_dir),
                "--database-url",
                a.db_url,
                str(root / "bk"),
            )
            assert out.returncode == 0, out.stdout + out.stderr
            manifest = json.loads((root / "bk" / "manifest.json").read_text())
            assert manifest["server_name"] == a.server_name
            assert "keys/signing.key" in manifest["files"]
            a.stop()

            # Refusals: a target that already holds a server, a damaged backup.
            out = cli(
                "restore",
                "--data-dir",
                str(a.data_dir),
                "--database-url",
                restored_url,
                str(root / "bk"),
            )
            assert out.returncode == 1 and "fresh data dir" in out.stderr, out.stderr
            damaged = root / "damaged"
            subprocess.run(["cp", "-r", str(root / "bk"), str(damaged)], check=True)
            (damaged / "keys" / "signing.key").write_text("tampered")
            out = cli(
                "restore",
                "--data-dir",
                str(root / "x"),
                "--database-url",
                restored_url,
                str(damaged),
            )
            assert out.returncode == 1 and "damaged" in out.stderr, out.stderr

            out = cli(
                "restore",
                "--data-dir",
                str(a2.data_dir),
                "--database-url",
                restored_url,
                str(root / "bk"),
            )
            assert out.returncode == 0, out.stdout + out.stderr
            assert (root / "a2" / "signing.key").read_text() == key_before
            a2.start()
            await a2.wait_ready()
            alice2 = Client(s, a2.base, a2.server_name)
            alice2.token = alice.token  # tokens are in the database: still valid
            assert state_map(await alice2.state(room)) == before
            assert "before the backup" in await alice2.bodies(room)
            # Federation goes on both ways with the restored server.
            await bob.send(room, "to the restored server")
            await eventually(lambda: alice2.bodies(room), lambda b: "to the restored server" in b)
            await alice2.send(room, "from the restored server")
            await eventually(lambda: bob.bodies(room), lambda b: "from the restored server" in b)
    finally:
        for srv in (a, peer, a2):
            srv.stop()
        for url in (*urls, restored_url):
            await drop_test_database(pg_url, url)
