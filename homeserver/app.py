"""Builds the object graph once and the aiohttp application around it.

``create_app`` takes an open ``Database`` (so tests hand in a fresh one per
test) and wires storage → services → handlers; ``Server`` adds the process
concerns: embedded PostgreSQL, the schema, the two listeners (client over
HTTP, federation over TLS) and a clean stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import AsyncIterator

from aiohttp import web

from homeserver.api import appkeys
from homeserver.api.client import account, versions
from homeserver.api.cors import cors_middleware
from homeserver.api.errors import error_middleware
from homeserver.api.federation import keys
from homeserver.config import Config, redact_url
from homeserver.services.accounts import AccountService
from homeserver.services.server_keys import (
    ServerKeys,
    ensure_tls_certificate,
    load_or_create_signing_key,
)
from homeserver.storage.accounts import AccountStore
from homeserver.storage.database import Database
from homeserver.storage.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

# Client bodies: an event is at most 64 KiB, but createRoom with initial_state
# and federation transactions carry several; 1 MiB bounds them all.
MAX_BODY = 1024 * 1024


def create_app(config: Config, db: Database, server_keys: ServerKeys | None = None) -> web.Application:
    app = web.Application(
        middlewares=[cors_middleware, error_middleware], client_max_size=MAX_BODY
    )
    server_keys = server_keys or ServerKeys(
        config.server_name, load_or_create_signing_key(config.signing_key_path)
    )
    accounts = AccountService(AccountStore(db), config.server_name, config.admins)

    app[appkeys.CONFIG] = config
    app[appkeys.SERVER_KEYS] = server_keys
    app[appkeys.ACCOUNTS] = accounts

    for module in (versions, account, keys):
        app.router.add_routes(module.routes)
    return app


class Server:
    """One server process: database, listeners, and an orderly stop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._pg: EmbeddedPostgres | None = None
        self._db: Database | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        cfg = self.config
        url = cfg.database_url
        if url is None:
            self._pg = EmbeddedPostgres(cfg.embedded_pg_dir)
            url = await asyncio.get_running_loop().run_in_executor(None, self._pg.start)
        log.info("database: %s", redact_url(url))
        self._db = await Database.connect(url)
        await self._db.apply_schema()
        ensure_tls_certificate(cfg.certificate_path, cfg.private_key_path, cfg.server_name.host)
        app = create_app(cfg, self._db)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cfg.certificate_path, cfg.private_key_path)
        bind = cfg.listen.bind
        await web.TCPSite(self._runner, bind, cfg.listen.client_port).start()
        await web.TCPSite(
            self._runner, bind, cfg.listen.federation_port, ssl_context=ssl_ctx
        ).start()
        log.info(
            "homeserver %s: client http://%s:%d, federation https://%s:%d",
            cfg.server_name, bind, cfg.listen.client_port, bind, cfg.listen.federation_port,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._db is not None:
            await self._db.close()
        if self._pg is not None:
            self._pg.stop()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        try:
            await self.start()
            await stopping.wait()
            log.info("stopping")
        finally:
            await self.stop()


async def lifetime(server: Server) -> AsyncIterator[None]:
    await server.start()
    yield
    await server.stop()
