"""Devices and account management: the user's own devices, password changes
and deactivation, behind user-interactive authentication.

User-interactive auth has one flow here, ``m.login.password`` (the user's
own password): a request without ``auth`` is answered 401 with the flow and a
session id; one with the right password completes the stage and the request
in the same call, so no session needs to be kept between requests (several
server processes may answer the two calls).

Depends on: AccountService (password checks, token cache), DeviceStore,
MembershipService (a deactivated user leaves every room).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any, Protocol

from homeserver.services.accounts import AccountService, Requester
from homeserver.services.errors import MatrixError
from homeserver.services.ratelimit import RateLimits
from homeserver.storage.devices import Device, DeviceStore
from homeserver.storage.projections import Projections

log = logging.getLogger(__name__)

PASSWORD_FLOW = "m.login.password"


class AuthRequired(Exception):
    """Answer 401 with the user-interactive auth flows (``body``)."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("user-interactive authentication required")
        self.body = body


class Leaver(Protocol):
    """What deactivation needs of membership."""

    async def leave(self, user_id: str, room_id: str, reason: str | None = None) -> None: ...


class DeviceService:
    def __init__(
        self,
        accounts: AccountService,
        store: DeviceStore,
        projections: Projections,
        membership: Leaver,
    ) -> None:
        self._accounts = accounts
        self._store = store
        self._proj = projections
        self._membership = membership
        # The login failure limit guards this password check too (a stolen
        # access token must not become a way to guess the password).
        self.password_attempts: RateLimits | None = None

    # ------------------------------------------------------ interactive auth
    async def authenticate(self, requester: Requester, auth: Any) -> None:
        """Raise ``AuthRequired`` unless ``auth`` completes the password stage
        for ``requester``."""
        session = auth.get("session") if isinstance(auth, Mapping) else None
        if not isinstance(session, str) or not session:
            session = secrets.token_urlsafe(12)
        flows: dict[str, Any] = {
            "flows": [{"stages": [PASSWORD_FLOW]}],
            "params": {},
            "session": session,
            "completed": [],
        }
        if not isinstance(auth, Mapping) or "type" not in auth:
            raise AuthRequired(flows)
        if auth.get("type") != PASSWORD_FLOW:
            raise AuthRequired({**flows, "errcode": "M_UNRECOGNIZED", "error": "Unsupported stage"})
        who = _identifier_user(auth)
        password = auth.get("password")
        if who is not None:
            try:
                claimed = self._accounts.user_id_for(who)
            except Exception:  # a malformed name is a wrong one
                claimed = None
            if claimed != requester.user_id:
                raise MatrixError(403, "M_FORBIDDEN", "You can only authenticate as yourself")
        limits = self.password_attempts
        if limits is not None:
            await limits.login_failures_allow(requester.user_id)
        if not isinstance(password, str) or not await self._accounts.check_password(
            requester.user_id, password
        ):
            if limits is not None:
                await limits.login_failed(requester.user_id)
            raise AuthRequired({**flows, "errcode": "M_FORBIDDEN", "error": "Invalid password"})

    # ---------------------------------------------------------------- devices
    async def list_devices(self, user_id: str) -> list[Device]:
        return await self._store.list_devices(user_id)

    async def get_device(self, user_id: str, device_id: str) -> Device:
        device = await self._store.get_device(user_id, device_id)
        if device is None:
            raise MatrixError(404, "M_NOT_FOUND", "No such device")
        return device

    async def rename_device(self, user_id: str, device_id: str, name: str | None) -> None:
        if not await self._store.rename_device(user_id, device_id, name):
            raise MatrixError(404, "M_NOT_FOUND", "No such device")

    async def delete_devices(self, requester: Requester, device_ids: list[str], auth: Any) -> None:
        await self.authenticate(requester, auth)
        await self._store.delete_devices(requester.user_id, device_ids)
        self._accounts.invalidate_user(requester.user_id)

    # ---------------------------------------------------------------- account
    async def change_password(
        self, requester: Requester, new_password: str, logout_devices: bool, auth: Any
    ) -> None:
        await self.authenticate(requester, auth)
        await self._accounts.set_password(requester.user_id, new_password)
        if logout_devices:
            await self._store.delete_other_devices(requester.user_id, requester.device_id)
            self._accounts.invalidate_user(requester.user_id)

    async def deactivate(self, requester: Requester, auth: Any) -> None:
        """Log out everywhere, leave every room and refuse every invite, and
        never allow a login again (as Synapse, without erasing messages)."""
        await self.authenticate(requester, auth)
        user_id = requester.user_id
        await self._store.deactivate(user_id)
        self._accounts.invalidate_user(user_id)
        rooms = await self._proj.rooms_for_user(user_id, ("join", "invite", "knock"))
        for room_id in rooms:
            try:
                await self._membership.leave(user_id, room_id, "Account deactivated")
            except Exception:  # a room we cannot leave now (a server down)
                log.exception("deactivated %s could not leave %s", user_id, room_id)


def _identifier_user(auth: Mapping[str, Any]) -> str | None:
    ident = auth.get("identifier")
    if isinstance(ident, Mapping):
        if ident.get("type") != "m.id.user" or not isinstance(ident.get("user"), str):
            raise MatrixError(400, "M_INVALID_PARAM", "Only m.id.user identifiers are supported")
        return str(ident["user"])
    user = auth.get("user")
    return user if isinstance(user, str) else None
