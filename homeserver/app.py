"""Builds the object graph once and the aiohttp application around it.

``create_app`` takes an open ``Database`` (so tests hand in a fresh one per
test) and wires storage → services → handlers; ``Server`` adds the process
concerns: embedded PostgreSQL, the schema, the two listeners (client over
HTTP, federation over TLS) and a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from homeserver.api import appkeys, static
from homeserver.api.admin import register as admin_register
from homeserver.api.admin import registration_tokens as admin_registration_tokens
from homeserver.api.admin import reports as admin_reports
from homeserver.api.admin import rooms as admin_rooms
from homeserver.api.client import account, homeserver_ext, rooms, versions
from homeserver.api.client import account_data as account_data_api
from homeserver.api.client import devices as devices_api
from homeserver.api.client import directory as directory_api
from homeserver.api.client import health as health_api
from homeserver.api.client import hierarchy as hierarchy_api
from homeserver.api.client import membership as membership_api
from homeserver.api.client import presence as presence_api
from homeserver.api.client import profile as profile_api
from homeserver.api.client import push as push_api
from homeserver.api.client import refused as refused_api
from homeserver.api.client import relations as relations_api
from homeserver.api.client import reports as reports_api
from homeserver.api.client import room_upgrade as room_upgrade_api
from homeserver.api.client import search as search_api
from homeserver.api.client import sync as sync_api
from homeserver.api.client import thirdparty as thirdparty_api
from homeserver.api.client import timestamps as timestamps_api
from homeserver.api.client import user_directory as user_directory_api
from homeserver.api.cors import cors_middleware
from homeserver.api.errors import error_middleware
from homeserver.api.federation import backfill as fed_backfill
from homeserver.api.federation import events as fed_events
from homeserver.api.federation import invites as fed_invites
from homeserver.api.federation import joins as fed_joins
from homeserver.api.federation import keys
from homeserver.api.federation import leaves as fed_leaves
from homeserver.api.federation import queries as fed_queries
from homeserver.api.federation import transactions as fed_transactions
from homeserver.api.federation.common import FEDERATION, federation_slot_middleware
from homeserver.api.listeners import (
    CONNECTIONS,
    ConnectionLimits,
    ConnectionRegistry,
    GuardedSite,
    Listener,
    listener_middleware,
)
from homeserver.api.metrics import metrics_app, metrics_middleware
from homeserver.config import Config, redact_url
from homeserver.services.account_data import AccountDataService
from homeserver.services.accounts import AccountService
from homeserver.services.devices import DeviceService
from homeserver.services.direct_messages import DirectMessageService
from homeserver.services.directory import DirectoryService
from homeserver.services.ephemeral import EphemeralService
from homeserver.services.errors import log_background_failure
from homeserver.services.event_context import ContextService
from homeserver.services.event_creator import EventCreator
from homeserver.services.federation.service import build_federation
from homeserver.services.health import HealthService
from homeserver.services.hierarchy import HierarchyService
from homeserver.services.identity import IdentityMismatch
from homeserver.services.identity import establish as establish_identity
from homeserver.services.membership import MembershipService
from homeserver.services.memory import MemoryTrimmer
from homeserver.services.messages import MessageService
from homeserver.services.metrics import Metrics, Sources, transactions_of
from homeserver.services.notifier import Notifier
from homeserver.services.persister import Persister
from homeserver.services.presence import PresenceService
from homeserver.services.profile import ProfileService
from homeserver.services.push import PushService
from homeserver.services.ratelimit import RateLimits
from homeserver.services.registration_tokens import RegistrationTokens
from homeserver.services.relations import RelationsService
from homeserver.services.reports import ReportService
from homeserver.services.room_admin import RoomAdminService
from homeserver.services.room_creation import RoomCreationService
from homeserver.services.room_head import HeadPlanner, StateResetAlarm, StateResolver
from homeserver.services.room_lifecycle import RoomLifecycleService
from homeserver.services.room_state import RoomState
from homeserver.services.room_upgrade import RoomUpgradeService
from homeserver.services.search import SearchService
from homeserver.services.serialize import EventSerializer
from homeserver.services.server_keys import (
    ServerKeys,
    ensure_tls_certificate,
    load_old_keys,
    load_or_create_signing_key,
)
from homeserver.services.sync import SyncService
from homeserver.services.timeline import TimelineService, Visibility
from homeserver.services.timestamps import TimestampService
from homeserver.services.user_directory import UserDirectoryService
from homeserver.storage.account_data import AccountDataStore
from homeserver.storage.accounts import AccountStore
from homeserver.storage.database import Database, SchemaTooNew
from homeserver.storage.devices import DeviceStore
from homeserver.storage.embedded import (
    DataDirBusy,
    DataDirLock,
    EmbeddedPostgres,
    EmbeddedPostgresError,
)
from homeserver.storage.ephemeral import EphemeralStore
from homeserver.storage.events import EventStore
from homeserver.storage.federation import FED_CHANNEL
from homeserver.storage.identity import IdentityStore
from homeserver.storage.leases import Lease
from homeserver.storage.lifecycle import LifecycleStore
from homeserver.storage.presence import PresenceStore
from homeserver.storage.projections import Projections
from homeserver.storage.push import PushStore
from homeserver.storage.ratelimits import RateLimitStore
from homeserver.storage.registration_tokens import RegistrationTokenStore
from homeserver.storage.relations import RelationStore
from homeserver.storage.reports import ReportStore
from homeserver.storage.rooms import RoomStore
from homeserver.storage.search import SearchStore
from homeserver.storage.sync_snapshot import SyncSnapshots
from homeserver.storage.user_directory import UserDirectoryStore

log = logging.getLogger(__name__)

# Client bodies: an event is at most 64 KiB, but createRoom with initial_state
# and federation transactions carry several; 1 MiB bounds them all.
MAX_BODY = 1024 * 1024
STALE_RESERVATION_SWEEP_S = 2.0


def create_app(
    config: Config, db: Database, server_keys: ServerKeys | None = None
) -> web.Application:
    """The aiohttp application with every service wired in."""
    app = web.Application(
        middlewares=[
            metrics_middleware,
            cors_middleware,
            error_middleware,
            listener_middleware,
            federation_slot_middleware,
        ],
        client_max_size=MAX_BODY,
    )
    app[CONNECTIONS] = ConnectionRegistry()
    server_keys = server_keys or ServerKeys(
        config.server_name,
        load_or_create_signing_key(config.signing_key_path),
        load_old_keys(config.old_signing_keys_path),
    )
    name = config.server_name
    # storage
    account_store = AccountStore(db)
    factor = config.cache_factor
    event_store = EventStore(db, cache_size=config.event_cache_size, cache_factor=factor)
    projections = Projections(db, name)
    room_store = RoomStore(db)
    account_data_store = AccountDataStore(db, event_store)
    # services
    notifier = Notifier(db.url)
    accounts = AccountService(account_store, name, config.admins, cache_factor=factor)
    resolver = StateResolver(event_store)
    planner = HeadPlanner(event_store, resolver, StateResetAlarm(event_store))
    persister = Persister(event_store, projections, notifier, planner)
    creator = EventCreator(db, event_store, persister, server_keys)
    room_state = RoomState(event_store, projections)
    profiles = ProfileService(account_store, projections)
    profiles.creator = creator
    directory = DirectoryService(room_store, room_state, name)
    membership = MembershipService(creator, room_state, room_store, profiles, name)
    account_data = AccountDataService(account_data_store, projections, notifier)
    membership.invite_hooks.append(account_data.on_invite)
    room_creation = RoomCreationService(creator, membership, directory, profiles, name)
    messages = MessageService(creator, room_state)
    relation_store = RelationStore(db)
    serializer = EventSerializer(
        event_store, projections, relation_store, Visibility(event_store, projections)
    )
    timeline = TimelineService(room_state, serializer, Visibility(event_store, projections))
    relations = RelationsService(
        timeline, event_store, relation_store, Visibility(event_store, projections), serializer
    )
    lifecycle_store = LifecycleStore(db)
    room_admin = RoomAdminService(
        db, creator, room_state, room_store, name, lifecycle_store, room_creation, membership
    )
    membership.owner_exit = room_admin.close_if_owner_bound
    ephemeral_store = EphemeralStore(db, event_store)
    ephemeral = EphemeralService(ephemeral_store, room_state, account_data)
    push = PushService(
        PushStore(db), event_store, projections, serializer, account_data, cache_factor=factor
    )
    sync = SyncService(
        event_store,
        projections,
        ephemeral_store,
        account_data_store,
        room_store,
        serializer,
        Visibility(event_store, projections),
        notifier,
        SyncSnapshots(db),
        push,
        cache_factor=factor,
    )

    app[appkeys.CONFIG] = config
    app[appkeys.RATE_LIMITS] = RateLimits(config.rate_limits, RateLimitStore(db))
    app[appkeys.REGISTRATION_TOKENS] = RegistrationTokens(RegistrationTokenStore(db))
    app[appkeys.SERVER_KEYS] = server_keys
    app[appkeys.ACCOUNTS] = accounts
    app[appkeys.ROOM_CREATION] = room_creation
    app[appkeys.MEMBERSHIP] = membership
    app[appkeys.MESSAGES] = messages
    app[appkeys.TIMELINE] = timeline
    app[relations_api.RELATIONS] = relations
    app[relations_api.CONTEXT] = ContextService(timeline, relations, event_store, serializer)
    app[room_upgrade_api.ROOM_UPGRADE] = RoomUpgradeService(
        creator, room_state, membership, messages, profiles, room_store, name
    )
    app[appkeys.DIRECTORY] = directory
    app[appkeys.PROFILES] = profiles
    app[appkeys.ACCOUNT_DATA] = account_data
    app[appkeys.ROOM_ADMIN] = room_admin
    lifecycle = RoomLifecycleService(
        db,
        lifecycle_store,
        creator,
        membership,
        room_state,
        room_store,
        config.rooms.transient_purge_after_ms,
    )
    dms = DirectMessageService(
        db,
        lifecycle_store,
        room_creation,
        membership,
        messages,
        room_state,
        account_data,
        profiles,
        name,
    )
    app[appkeys.LIFECYCLE] = lifecycle
    app[appkeys.DMS] = dms
    app[appkeys.DEVICES] = DeviceService(accounts, DeviceStore(db), projections, membership)
    presence = PresenceService(PresenceStore(db, event_store), notifier, name)
    presence.exists = accounts.exists
    sync.presence = presence.events_since
    app[appkeys.PRESENCE] = presence
    app[appkeys.HEALTH] = HealthService(db)
    hierarchy = HierarchyService(projections, room_state, event_store)
    app[appkeys.HIERARCHY] = hierarchy
    app[appkeys.TIMESTAMPS] = TimestampService(event_store, room_state)
    app[appkeys.REPORTS] = ReportService(ReportStore(db), timeline, room_state)
    app[appkeys.DEVICES].password_attempts = app[appkeys.RATE_LIMITS]
    app[appkeys.USER_DIRECTORY] = UserDirectoryService(UserDirectoryStore(db))
    app[appkeys.SEARCH] = SearchService(
        SearchStore(db),
        event_store,
        projections,
        Visibility(event_store, projections),
        serializer,
        profiles,
    )
    app[appkeys.SYNC] = sync
    app[appkeys.EPHEMERAL] = ephemeral
    app[appkeys.FILTERS] = ephemeral_store
    app[appkeys.PUSH] = push
    federation = build_federation(
        config,
        db,
        server_keys,
        event_store,
        projections,
        persister,
        ephemeral_store,
        directory,
        profiles,
    )
    membership.remote = federation.remote
    directory.remote = federation.remote
    ephemeral.on_local_edu.append(federation.edus.local_change)
    timeline.backfill = federation.backfiller.backfill
    hierarchy.remote = federation.remote.hierarchy
    presence.send_edu = federation.sender.send_edu
    persister.server_name = str(name)
    app[appkeys.METRICS] = Metrics(
        Sources(
            persisted=lambda: persister.persisted,
            resolutions=lambda: (resolver.resolutions, resolver.resolution_seconds),
            alarms=lambda: planner.alarm.count,
            waiters=notifier.waiter_count,
            wakeups=lambda: notifier.wakeups,
            transactions=transactions_of(
                lambda: federation.ingest.transactions_in,
                lambda: federation.sender.sent.values(),
                lambda: federation.sender.failed.values(),
            ),
            pool=lambda: (db.pool.get_size(), db.pool.get_idle_size(), db.pool.get_max_size()),
            queues=federation.sender.queue_summary,
            caches=lambda: {
                **event_store.caches(),
                **push.caches(),
                **sync.caches(),
                **accounts.caches(),
            },
        )
    )
    federation.edus.on_presence = presence.receive_edu
    app[FEDERATION] = federation
    notifier.subscribe(FED_CHANNEL, federation.sender.wake)

    # Singleton duties go to whichever process holds their lease (several
    # processes may share the database); the others stand by.
    federation.sender.active = False
    lifecycle.active = False
    leases = [
        Lease(
            db.url,
            "federation-sender",
            lambda: federation.sender.set_active(True),
            lambda: federation.sender.set_active(False),
        ),
        Lease(
            db.url,
            "room-lifecycle",
            lambda: setattr(lifecycle, "active", True),
            lambda: setattr(lifecycle, "active", False),
        ),
    ]
    app[appkeys.LEASES] = leases

    async def background(app: web.Application) -> AsyncIterator[None]:
        await notifier.start()
        await event_store.clear_stale_inflight()
        stop = asyncio.Event()
        lifecycle_task = asyncio.create_task(lifecycle.run(stop))
        sweeper = asyncio.create_task(sweep_stale_reservations(stop))
        trimmer = asyncio.create_task(MemoryTrimmer().run(stop))
        await federation.start()
        lease_tasks = [asyncio.create_task(lease.run(stop)) for lease in leases]
        yield
        stop.set()
        await asyncio.gather(lifecycle_task, sweeper, trimmer, *lease_tasks)
        await federation.stop(config.shutdown_grace_s)
        await notifier.stop()

    async def shutting_down(app: web.Application) -> None:
        notifier.close_waiters()

    async def resync_stream() -> None:
        # Writers that died with the connection left their reservations.
        await event_store.clear_stale_inflight()
        notifier.local_notify(await event_store.current_position(), None)

    async def sweep_stale_reservations(stop: asyncio.Event) -> None:
        """A writer whose session died (its process killed -9, its
        connection cut) leaves its stream reservation behind, and no reader
        in any process gets past it: such reservations are dropped every
        few seconds, and the readers woken."""
        while not stop.is_set():
            try:
                if await event_store.clear_stale_inflight():
                    log.warning("dropped stream reservations of dead writers")
                    notifier.local_notify(await event_store.current_position(), None)
            except Exception as e:
                log_background_failure(log, "sweeping stale stream reservations failed", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STALE_RESERVATION_SWEEP_S)

    admin_register.install(app)
    notifier.add_auth_listener(accounts.invalidate_user)
    # After the LISTEN connection was lost (DESIGN rule 16): what others
    # announced meanwhile is unknown, so assume everything changed.
    notifier.add_gap_listener(db.expire_connections)
    notifier.add_gap_listener(accounts.drop_token_cache)
    notifier.add_gap_listener(resync_stream)
    notifier.add_gap_listener(federation.sender.sweep_now)
    app.cleanup_ctx.append(background)
    app.on_shutdown.append(shutting_down)
    for module in (
        versions,
        account,
        keys,
        fed_transactions,
        fed_events,
        fed_backfill,
        fed_queries,
        fed_joins,
        fed_leaves,
        fed_invites,
        rooms,
        relations_api,
        room_upgrade_api,
        membership_api,
        directory_api,
        profile_api,
        account_data_api,
        devices_api,
        search_api,
        user_directory_api,
        reports_api,
        timestamps_api,
        hierarchy_api,
        presence_api,
        thirdparty_api,
        refused_api,
        health_api,
        admin_reports,
        homeserver_ext,
        admin_rooms,
        admin_register,
        admin_registration_tokens,
        sync_api,
        push_api,
        static,
    ):
        app.router.add_routes(module.routes)
    return app


class StartupError(RuntimeError):
    """The server cannot start; the message is the one line the operator sees."""


class Server:
    """One server process: its data dir, database, listeners, an orderly stop.

    It owns the embedded PostgreSQL (DESIGN rule 16): started or adopted at
    start, supervised while serving, stopped at every exit (also when a
    signal arrives during start-up or start-up fails). SIGTERM/SIGINT stop
    it gracefully: the listeners close, parked long-polls are answered,
    in-flight requests get ``shutdown.grace_seconds`` to finish, then the
    background tasks and the federation sender stop (its transaction on the
    wire is let finish), then the database.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = DataDirLock(config.data_dir)
        self._pg: EmbeddedPostgres | None = None
        self._db: Database | None = None
        self._runner: web.AppRunner | None = None
        self._metrics_runner: web.AppRunner | None = None
        self._supervisor: asyncio.Task[bool] | None = None

    async def start(self) -> None:
        cfg = self.config
        try:
            self._lock.acquire()
        except DataDirBusy as e:
            raise StartupError(str(e)) from None
        url = cfg.database_url
        if url is None:
            self._pg = EmbeddedPostgres(cfg.embedded_pg_dir)
            try:
                url = await asyncio.get_running_loop().run_in_executor(None, self._pg.start)
            except EmbeddedPostgresError as e:
                raise StartupError(str(e)) from None
        log.info("database: %s", redact_url(url))
        self._db = await Database.connect(url)
        try:
            await self._db.apply_schema()
        except SchemaTooNew as e:
            raise StartupError(str(e)) from None
        server_keys = ServerKeys(
            cfg.server_name,
            load_or_create_signing_key(cfg.signing_key_path),
            load_old_keys(cfg.old_signing_keys_path),
        )
        try:
            await establish_identity(
                IdentityStore(self._db), str(cfg.server_name), server_keys.key_id
            )
        except IdentityMismatch as e:
            raise StartupError(str(e)) from None
        ensure_tls_certificate(cfg.certificate_path, cfg.private_key_path, cfg.server_name.host)
        app = create_app(cfg, self._db, server_keys)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=cfg.shutdown_grace_s
        )
        await self._runner.setup()
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cfg.certificate_path, cfg.private_key_path)
        lc, bind = cfg.listen, cfg.listen.bind
        limits = ConnectionLimits(
            lc.header_timeout, lc.idle_timeout, lc.max_connections_per_address
        )
        for what, port, ctx, resources in (
            ("client", lc.client_port, None, lc.client_resources),
            ("federation", lc.federation_port, ssl_ctx, lc.federation_resources),
        ):
            listener = Listener(what, resources, limits, app[CONNECTIONS])
            try:
                await GuardedSite(self._runner, bind, port, listener, ssl_context=ctx).start()
            except OSError as e:
                raise StartupError(
                    f"cannot listen on {bind}:{port} ({what} port): {e.strerror or e}"
                ) from None
        if cfg.listen.metrics_port:
            await self._start_metrics(app[appkeys.METRICS])
        if self._pg is not None:
            self._supervisor = asyncio.create_task(self._pg.supervise())
        log.info(
            "homeserver %s: client http://%s:%d, federation https://%s:%d",
            cfg.server_name,
            bind,
            cfg.listen.client_port,
            bind,
            cfg.listen.federation_port,
        )

    async def _start_metrics(self, metrics: Metrics) -> None:
        """The metrics listener: its own port, loopback unless configured."""
        cfg = self.config
        self._metrics_runner = web.AppRunner(metrics_app(metrics), access_log=None)
        await self._metrics_runner.setup()
        bind, port = cfg.listen.metrics_bind, cfg.listen.metrics_port
        try:
            await web.TCPSite(self._metrics_runner, bind, port).start()
        except OSError as e:
            raise StartupError(
                f"cannot listen on {bind}:{port} (metrics port): {e.strerror or e}"
            ) from None
        log.info("metrics on http://%s:%d/metrics", bind, port)

    async def stop(self) -> None:
        """Stop everything that was started, in order; safe after a partial start."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        try:
            if self._metrics_runner is not None:
                await self._metrics_runner.cleanup()
            if self._runner is not None:
                await self._runner.cleanup()
            if self._db is not None:
                try:
                    await asyncio.wait_for(self._db.close(), 10.0)
                except TimeoutError:
                    log.warning("database connections still busy at stop: closing them")
                    self._db.pool.terminate()
        finally:
            if self._pg is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._pg.stop)
            self._lock.release()

    async def run_forever(self) -> int:
        """Serve until SIGTERM/SIGINT (exit status 0) or until the embedded
        PostgreSQL cannot be brought back (1). A signal during start-up
        stops it there."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        signalled = asyncio.create_task(stopping.wait())
        try:
            starting = asyncio.create_task(self.start())
            await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stop requested during start-up")
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return 0
            starting.result()
            watched: set[asyncio.Task[Any]] = {signalled}
            if self._supervisor is not None:
                watched.add(self._supervisor)
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if signalled.done():
                log.info("stopping")
                return 0
            log.error("stopping: the embedded database is gone")
            return 1
        finally:
            signalled.cancel()
            await self.stop()
            log.info("stopped")
