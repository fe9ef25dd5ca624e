"""Shared set-up for operator commands that run beside (or without) a server:
connect to the configured database (starting the embedded one if needed) and
build the same services the server uses, without listeners."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from homeserver.api import appkeys
from homeserver.config import Config
from homeserver.core.ids import ServerName
from homeserver.services.accounts import AccountService
from homeserver.services.identity import IdentityMismatch
from homeserver.services.identity import establish as establish_identity
from homeserver.services.projection_rebuild import ProjectionRebuilder
from homeserver.services.registration_tokens import RegistrationTokens
from homeserver.services.room_admin import RoomAdminService
from homeserver.services.server_keys import load_or_create_signing_key
from homeserver.storage.database import Database, SchemaTooNew
from homeserver.storage.embedded import DataDirBusy, DataDirLock, EmbeddedPostgres, Postmaster
from homeserver.storage.events import EventStore
from homeserver.storage.identity import IdentityStore
from homeserver.storage.projections import Projections


@dataclass
class OperatorContext:
    db: Database
    accounts: AccountService
    rebuilder: ProjectionRebuilder
    rooms: RoomAdminService
    app: web.Application
    registration_tokens: RegistrationTokens


@asynccontextmanager
async def operator_context(config: Config) -> AsyncIterator[OperatorContext]:
    """The services over the configured database, under the server name the
    database was created with (``--server-name`` is only needed, and then
    checked, when the database is new). With the embedded database: a
    running server's cluster is used and left running; otherwise this
    command owns the cluster (and the data dir) until it ends."""
    from homeserver.app import create_app

    pg = None
    lock = DataDirLock(config.data_dir)
    url = config.database_url
    if url is None:
        pg = EmbeddedPostgres(config.embedded_pg_dir)
        if lock.held_by_other():
            pg = None  # a server runs on this data dir: share its cluster
            url = await _running_cluster_url(config)
        else:
            try:
                lock.acquire()
            except DataDirBusy as e:
                raise OperatorError(str(e)) from None
            url = await asyncio.get_running_loop().run_in_executor(None, pg.start)
    try:
        db = await Database.connect(url, min_size=1, max_size=4)
        try:
            try:
                await db.apply_schema()
            except SchemaTooNew as e:
                raise OperatorError(str(e)) from None
            config = await _with_stored_name(config, db)
            app = create_app(config, db)
            store = EventStore(db)
            yield OperatorContext(
                db,
                app[appkeys.ACCOUNTS],
                ProjectionRebuilder(db, store, Projections(db, config.server_name)),
                app[appkeys.ROOM_ADMIN],
                app,
                app[appkeys.REGISTRATION_TOKENS],
            )
        finally:
            await db.close()
    finally:
        if pg is not None:
            await asyncio.get_running_loop().run_in_executor(None, pg.stop)
        lock.release()


class OperatorError(RuntimeError):
    """The command cannot run; the message is the one line to print."""


async def _running_cluster_url(config: Config) -> str:
    pm = Postmaster.read(config.embedded_pg_dir)
    if pm is None or not pm.alive():
        raise OperatorError(
            f"a homeserver runs on {config.data_dir} but its database is not up; try again"
        )
    return pm.url()


async def _with_stored_name(config: Config, db: Database) -> Config:
    """``config`` under the database's server name (stored at its first start)."""
    from homeserver.config import DEFAULT_SERVER_NAME

    key_id = f"ed25519:{load_or_create_signing_key(config.signing_key_path).version}"
    try:
        name = await establish_identity(
            IdentityStore(db),
            str(config.server_name),
            key_id,
            name_given=str(config.server_name) != DEFAULT_SERVER_NAME,
            serving=False,
        )
    except IdentityMismatch as e:
        raise OperatorError(str(e)) from None
    if name == str(config.server_name):
        return config
    return dataclasses.replace(config, server_name=ServerName.parse(name))
