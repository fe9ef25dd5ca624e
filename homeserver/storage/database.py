"""The asyncpg pool and the schema: the one gateway to PostgreSQL.

``schema.sql`` (at the repository top, shipped inside the package as well) is
the whole current schema. Under an advisory lock (several processes may start
at once against one database): a new database gets it and is recorded at
``SCHEMA_VERSION``; an existing one gets it again (it is idempotent: new
tables, indexes, functions), then every numbered migration above its
recorded version (``migrations/NNNN_name.sql``, in order, one transaction
each, each recorded in ``schema_version``). A database newer than this code
is refused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def migrations() -> list[tuple[int, str, str]]:
    """(number, file name, SQL) of every migration, in order."""
    out = []
    for f in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        out.append((int(f.name[:4]), f.name, f.read_text()))
    return out


# The schema version of this code: 1 is the first release's (v0.1.0).
SCHEMA_VERSION = max([1, *(n for n, _, _ in migrations())])


class SchemaTooNew(RuntimeError):
    """The database was upgraded by a newer release than this one."""


_SCHEMA_LOCK = 0x6873_0001  # advisory lock key: "hs" + 1


def schema_sql() -> str:
    """The schema text: the repository's ``schema.sql`` when running from a
    checkout, else the copy packaged with ``homeserver``."""
    top = Path(__file__).resolve().parents[2] / "schema.sql"
    if top.is_file():
        return top.read_text()
    return resources.files("homeserver").joinpath("schema.sql").read_text()


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Plan each prepared statement once. By default PostgreSQL re-plans a
    # statement's first five executions on every connection, and planning
    # the multi-part reads (/sync's snapshot) costs more than running them;
    # our statements are key and range lookups whose best plan does not
    # depend on the parameter values.
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


CONNECT_TIMEOUT_S = 5.0  # a database that does not answer is down: fail fast


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means "PostgreSQL is unreachable right now" (refused,
    socket gone, restarting, connection dropped mid-query, connect timeout)
    rather than a bad query: the request may succeed when retried later."""
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.CannotConnectNowError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | asyncpg.ConnectionDoesNotExistError,
    ):
        return True
    if isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc):
        return True  # a query on a connection whose loss asyncpg is processing
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "connection is closed" in text or "connection was closed" in text
    # Refused, timed out, or a Unix socket that is gone while PostgreSQL
    # restarts: OS errors, counted only when raised inside asyncpg (an
    # outbound federation request fails with the same types).
    return isinstance(exc, OSError | TimeoutError) and _raised_in_asyncpg(exc)


def _raised_in_asyncpg(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if _ASYNCPG_DIR in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


_ASYNCPG_DIR = str(Path(asyncpg.__file__).parent)


class HsConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection whose release costs no round trip.

    asyncpg resets every connection it takes back into the pool with
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` — one more
    round trip per pooled query, doubling the cost of the short queries
    /sync and sends are made of. Our pooled connections never LISTEN (the
    notifier has its own connection), never change session settings and use
    cursors only inside transactions; the one session state they can carry
    is a room's advisory lock, which writers release themselves. So the reset
    is skipped unless a session lock was taken and maybe not released (a
    cancelled writer), in which case all are dropped before reuse.
    """

    __slots__ = ("_hs_session_locks",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hs_session_locks = 0

    def note_session_lock(self, delta: int) -> None:
        """+1 after taking a session advisory lock, -1 after releasing it."""
        self._hs_session_locks += delta

    def get_reset_query(self) -> str:
        if self._hs_session_locks > 0:
            self._hs_session_locks = 0
            return "SELECT pg_advisory_unlock_all()"
        return ""


class Database:
    """Owns the pool. Storage classes receive it and run their SQL through it."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 20) -> Database:
        pool = await asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            connection_class=HsConnection,
            timeout=CONNECT_TIMEOUT_S,
        )
        assert pool is not None
        return cls(pool, url)

    async def close(self) -> None:
        await self.pool.close()

    async def expire_connections(self) -> None:
        """Replace every pooled connection at its next use: after the
        database restarted, idle ones are dead and would fail one query each."""
        await self.pool.expire_connections()

    async def apply_schema(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _SCHEMA_LOCK)
            try:
                await self._apply_schema(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _SCHEMA_LOCK)

    async def _apply_schema(self, conn: asyncpg.Connection) -> None:
        current = None
        if await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
            current = await conn.fetchval("SELECT max(version) FROM schema_version")
        if current is not None and current > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database's schema is version {current}, newer than this server's "
                f"({SCHEMA_VERSION}): run the release that upgraded it, or a newer one"
            )
        async with conn.transaction():
            await conn.execute(schema_sql())
        if current is None:  # a new database: schema.sql is the whole schema
            for version in [1, *(n for n, _, _ in migrations())]:
                await _record_version(conn, version)
            return
        for number, name, sql in migrations():
            if number <= current:
                continue
            log.info("applying schema migration %s", name)
            async with conn.transaction():
                await conn.execute(sql)
                await _record_version(conn, number)
        await _record_version(conn, SCHEMA_VERSION)

    async def schema_version(self) -> int:
        v = await self.pool.fetchval("SELECT max(version) FROM schema_version")
        return int(v or 0)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self.pool.fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.pool.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> str:
        return str(await self.pool.execute(sql, *args))


async def _record_version(conn: asyncpg.Connection, version: int) -> None:
    await conn.execute(
        "INSERT INTO schema_version (version, applied_ts) VALUES ($1, "
        "(extract(epoch from clock_timestamp()) * 1000)::bigint) "
        "ON CONFLICT (version) DO NOTHING",
        version,
    )
