"""Typed keys under which app.py stores the services for the handlers.

Handlers read ``request.app[KEY]``; nothing is global (DESIGN rule 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

CONFIG = web.AppKey["Config"]("config")
ACCOUNTS = web.AppKey["AccountService"]("accounts")
SERVER_KEYS = web.AppKey["ServerKeys"]("server_keys")
ROOM_CREATION = web.AppKey["RoomCreationService"]("room_creation")
MEMBERSHIP = web.AppKey["MembershipService"]("membership")
MESSAGES = web.AppKey["MessageService"]("messages")
TIMELINE = web.AppKey["TimelineService"]("timeline")
DIRECTORY = web.AppKey["DirectoryService"]("directory")
PROFILES = web.AppKey["ProfileService"]("profiles")
ACCOUNT_DATA = web.AppKey["AccountDataService"]("account_data")
ROOM_ADMIN = web.AppKey["RoomAdminService"]("room_admin")
SYNC = web.AppKey["SyncService"]("sync")
EPHEMERAL = web.AppKey["EphemeralService"]("ephemeral")
FILTERS = web.AppKey["EphemeralStore"]("filters")
LIFECYCLE = web.AppKey["RoomLifecycleService"]("lifecycle")
DMS = web.AppKey["DirectMessageService"]("dms")
