"""Test harness: real PostgreSQL, a fresh database per test, the real app.

``HOMESERVER_TEST_DATABASE_URL`` (a server URL with rights to create
databases) is used when set; otherwise one embedded PostgreSQL is started for
the whole run. Each test gets its own database, cloned cheaply from a template
that already holds the schema.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from homeserver.config import Config
from homeserver.storage.database import Database
from tests.helpers import MatrixClient, make_config

TEMPLATE = "hs_test_template"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database."""
    url = os.environ.get("HOMESERVER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from homeserver.storage.embedded import EmbeddedPostgres

    # A run stopped with SIGTERM (CI timeouts) still tears fixtures down, so
    # the embedded PostgreSQL does not outlive it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="hs-test-pg-"))
    os.chmod(tmp, 0o755)
    pg = EmbeddedPostgres(tmp / "pgdata")
    url = pg.start()
    # Test data is disposable: skip fsync for speed. The server itself never does.
    pg.psql(
        "ALTER SYSTEM SET fsync = off; ALTER SYSTEM SET synchronous_commit = off;"
        "ALTER SYSTEM SET full_page_writes = off; SELECT pg_reload_conf();"
    )
    try:
        yield url
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def template_url(pg_url: str) -> str:
    async def make() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        db = await Database.connect(_with_database(pg_url, TEMPLATE), min_size=1, max_size=1)
        try:
            await db.apply_schema()
        finally:
            await db.close()

    asyncio.run(make())
    return _with_database(pg_url, TEMPLATE)


async def create_test_database(pg_url: str, template: str | None = TEMPLATE) -> str:
    """A new database holding the schema (``template`` None: an empty one);
    returns its URL."""
    name = "hs_test_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(pg_url)
    try:
        copy = f" TEMPLATE {template}" if template else ""
        await conn.execute(f"CREATE DATABASE {name}{copy}")
    finally:
        await conn.close()
    return _with_database(pg_url, name)


async def drop_test_database(pg_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


@pytest.fixture
async def db_url(pg_url: str, template_url: str) -> AsyncIterator[str]:
    url = await create_test_database(pg_url)
    yield url
    await drop_test_database(pg_url, url)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(db_url, min_size=1, max_size=10)
    yield database
    await database.close()


@pytest.fixture
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """The test server's config; ``@pytest.mark.config({"dotted.key": value})``
    on a test or module sets more keys explicitly."""
    overrides: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("config"))):
        overrides.update(marker.args[0])
    return make_config(tmp_path, **overrides)


@pytest.fixture
async def app(config: Config, db: Database):  # type: ignore[no-untyped-def]
    from homeserver.app import create_app

    return create_app(config, db)


@pytest.fixture
async def client(aiohttp_client, app) -> MatrixClient:  # type: ignore[no-untyped-def]
    return MatrixClient(await aiohttp_client(app))
