"""Typed keys under which app.py stores the services for the handlers.

Handlers read ``request.app[KEY]``; nothing is global (DESIGN rule 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from homeserver.config import Config
    from homeserver.services.accounts import AccountService
    from homeserver.services.server_keys import ServerKeys

CONFIG = web.AppKey["Config"]("config")
ACCOUNTS = web.AppKey["AccountService"]("accounts")
SERVER_KEYS = web.AppKey["ServerKeys"]("server_keys")
