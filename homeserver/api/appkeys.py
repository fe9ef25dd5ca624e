"""Typed keys under which app.py stores the services for the handlers.

Handlers read ``request.app[KEY]``; nothing is global (DESIGN rule 2).
"""

from __future__ import annotations

from aiohttp import web

from homeserver.config import Config
from homeserver.services.account_data import AccountDataService
from homeserver.services.accounts import AccountService
from homeserver.services.devices import DeviceService
from homeserver.services.direct_messages import DirectMessageService
from homeserver.services.directory import DirectoryService
from homeserver.services.ephemeral import EphemeralService
from homeserver.services.health import HealthService
from homeserver.services.hierarchy import HierarchyService
from homeserver.services.membership import MembershipService
from homeserver.services.messages import MessageService
from homeserver.services.metrics import Metrics
from homeserver.services.presence import PresenceService
from homeserver.services.profile import ProfileService
from homeserver.services.push import PushService
from homeserver.services.ratelimit import RateLimits
from homeserver.services.registration_tokens import RegistrationTokens
from homeserver.services.reports import ReportService
from homeserver.services.room_admin import RoomAdminService
from homeserver.services.room_creation import RoomCreationService
from homeserver.services.room_lifecycle import RoomLifecycleService
from homeserver.services.search import SearchService
from homeserver.services.server_keys import ServerKeys
from homeserver.services.sync import SyncService
from homeserver.services.timeline import TimelineService
from homeserver.services.timestamps import TimestampService
from homeserver.services.user_directory import UserDirectoryService
from homeserver.storage.ephemeral import EphemeralStore
from homeserver.storage.leases import Lease

CONFIG = web.AppKey("config", Config)
ACCOUNTS = web.AppKey("accounts", AccountService)
SERVER_KEYS = web.AppKey("server_keys", ServerKeys)
ROOM_CREATION = web.AppKey("room_creation", RoomCreationService)
MEMBERSHIP = web.AppKey("membership", MembershipService)
MESSAGES = web.AppKey("messages", MessageService)
TIMELINE = web.AppKey("timeline", TimelineService)
DIRECTORY = web.AppKey("directory", DirectoryService)
PROFILES = web.AppKey("profiles", ProfileService)
ACCOUNT_DATA = web.AppKey("account_data", AccountDataService)
ROOM_ADMIN = web.AppKey("room_admin", RoomAdminService)
SYNC = web.AppKey("sync", SyncService)
EPHEMERAL = web.AppKey("ephemeral", EphemeralService)
FILTERS = web.AppKey("filters", EphemeralStore)
LIFECYCLE = web.AppKey("lifecycle", RoomLifecycleService)
DMS = web.AppKey("dms", DirectMessageService)
DEVICES = web.AppKey("devices", DeviceService)
SEARCH = web.AppKey("search", SearchService)
USER_DIRECTORY = web.AppKey("user_directory", UserDirectoryService)
REPORTS = web.AppKey("reports", ReportService)
TIMESTAMPS = web.AppKey("timestamps", TimestampService)
HIERARCHY = web.AppKey("hierarchy", HierarchyService)
PRESENCE = web.AppKey("presence", PresenceService)
HEALTH = web.AppKey("health", HealthService)
METRICS = web.AppKey("metrics", Metrics)
PUSH = web.AppKey("push", PushService)
LEASES = web.AppKey("leases", list[Lease])
RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
REGISTRATION_TOKENS = web.AppKey("registration_tokens", RegistrationTokens)
