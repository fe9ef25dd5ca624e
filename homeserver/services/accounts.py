"""Accounts: registration, password login, devices and access tokens.

Passwords are hashed with Argon2id in a worker thread (the hash is slow on
purpose and must not stall the event loop). Access tokens are random and
stored only as SHA-256 digests.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from homeserver.core.ids import InvalidID, UserID
from homeserver.core.lru import CacheFill, scaled
from homeserver.services.clock import now_ms
from homeserver.storage.accounts import AccountStore, TokenOwner, UserExists


class AccountError(Exception):
    """Registration or login refused; ``code`` is the Matrix errcode."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class LoginResult:
    user_id: str
    access_token: str
    device_id: str


@dataclass(frozen=True, slots=True)
class Requester:
    """Who makes a client request."""

    user_id: UserID
    device_id: str
    is_admin: bool


# The server's own user (rooms an operator creates for others); never an account.
SYSTEM_LOCALPART = "_homeserver"

TOKEN_CACHE_TTL = 60.0
TOKEN_CACHE_SIZE = 20_000


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AccountService:
    def __init__(
        self,
        store: AccountStore,
        server_name: str,
        admins: tuple[str, ...],
        *,
        cache_factor: float = 1.0,
    ) -> None:
        self._store = store
        self._server_name = server_name
        self._admins = frozenset(admins)
        # Moderate cost: a login takes tens of milliseconds, not hundreds.
        self._hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        # Token lookups, dropped for a user as soon as any process changes
        # their tokens or rights (NOTIFY hs_auth, see invalidate_user).
        self._tokens: dict[bytes, tuple[Requester, float]] = {}
        self._tokens_by_user: dict[str, set[bytes]] = {}
        self._max_tokens = scaled(TOKEN_CACHE_SIZE, cache_factor)

    @property
    def server_name(self) -> str:
        return self._server_name

    def user_id_for(self, localpart_or_id: str) -> UserID:
        """A full user id from a localpart or a full id (login identifiers)."""
        try:
            if localpart_or_id.startswith("@"):
                return UserID.parse(localpart_or_id)
            return UserID.create(localpart_or_id.lower(), self._server_name)
        except InvalidID as e:
            raise AccountError("M_INVALID_USERNAME", str(e)) from e

    def check_new_localpart(self, localpart: str) -> UserID:
        if not localpart or not UserID.is_valid_new_localpart(localpart):
            raise AccountError(
                "M_INVALID_USERNAME",
                "User ID can only contain characters a-z, 0-9, or '=_-./+'",
            )
        if localpart == SYSTEM_LOCALPART:
            raise AccountError("M_EXCLUSIVE", "This user ID is reserved for the server")
        try:
            return UserID.create(localpart, self._server_name)
        except InvalidID as e:
            raise AccountError("M_INVALID_USERNAME", str(e)) from e

    async def is_available(self, localpart: str) -> bool:
        user_id = self.check_new_localpart(localpart)
        return not await self._store.user_exists(user_id)

    async def register(
        self, localpart: str | None, password: str | None, *, admin: bool = False
    ) -> UserID:
        if localpart is None:
            localpart = "u" + secrets.token_hex(6)
        user_id = self.check_new_localpart(localpart)
        pw_hash = await self._hash(password) if password else None
        try:
            await self._store.create_user(
                user_id,
                pw_hash,
                is_admin=admin or user_id in self._admins,
                now_ms=now_ms(),
                displayname=localpart,
            )
        except UserExists as e:
            raise AccountError("M_USER_IN_USE", "User ID already taken.") from e
        return user_id

    async def set_password(self, user_id: str, password: str) -> None:
        await self._store.set_password_hash(user_id, await self._hash(password))

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        await self._store.set_admin(user_id, is_admin)
        self.invalidate_user(user_id)

    async def check_password(self, user_id: UserID, password: str) -> bool:
        user = await self._store.get_user(user_id)
        if user is None or user.deactivated or not user.password_hash:
            return False
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                None, self._hasher.verify, user.password_hash, password
            )
        except (VerificationError, InvalidHashError):
            return False

    async def create_session(
        self, user_id: UserID, device_id: str | None, display_name: str | None
    ) -> LoginResult:
        device_id = device_id or secrets.token_urlsafe(8).upper().replace("-", "A").replace(
            "_", "B"
        )
        token = "hs_" + secrets.token_urlsafe(32)
        await self._store.add_device_and_token(
            user_id, device_id, display_name, hash_token(token), now_ms()
        )
        self.invalidate_user(user_id)  # a re-used device id loses its old tokens
        return LoginResult(user_id, token, device_id)

    async def authenticate(self, token: str) -> Requester | None:
        digest = hash_token(token)
        hit = self._tokens.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        owner: TokenOwner | None = await self._store.token_owner(digest)
        if owner is None:
            return None
        requester = Requester(
            UserID(owner.user_id), owner.device_id, owner.is_admin or owner.user_id in self._admins
        )
        if len(self._tokens) > self._max_tokens:
            self._tokens.clear()
            self._tokens_by_user.clear()
        self._tokens[digest] = (requester, now + TOKEN_CACHE_TTL)
        self._tokens_by_user.setdefault(owner.user_id, set()).add(digest)
        return requester

    def caches(self) -> dict[str, CacheFill]:
        n = len(self._tokens)
        return {"access_tokens": CacheFill(n, n, self._max_tokens)}

    async def drop_token_cache(self) -> None:
        """After a gap in cross-process notifications a logout elsewhere may
        have gone unheard: every cached token is checked again."""
        self._tokens.clear()
        self._tokens_by_user.clear()

    def invalidate_user(self, user_id: str) -> None:
        for digest in self._tokens_by_user.pop(user_id, ()):
            self._tokens.pop(digest, None)

    async def logout(self, requester: Requester) -> None:
        await self._store.delete_device(requester.user_id, requester.device_id)
        self.invalidate_user(requester.user_id)

    async def logout_all(self, requester: Requester) -> None:
        await self._store.delete_all_devices(requester.user_id)
        self.invalidate_user(requester.user_id)

    async def exists(self, user_id: str) -> bool:
        return await self._store.user_exists(user_id)

    async def _hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._hasher.hash, password)
