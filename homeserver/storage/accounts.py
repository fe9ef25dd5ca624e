"""Users, profiles, devices and access tokens (tables: users, profiles,
devices, access_tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from homeserver.storage.database import Database

# NOTIFY channel naming a user whose tokens or rights changed.
AUTH_CHANNEL = "hs_auth"


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: str
    password_hash: str | None
    is_admin: bool
    deactivated: bool
    created_ts: int


@dataclass(frozen=True, slots=True)
class TokenOwner:
    user_id: str
    device_id: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class Profile:
    displayname: str | None
    avatar_url: str | None


class UserExists(Exception):
    """The user id is already registered."""


class AccountStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_user(
        self,
        user_id: str,
        password_hash: str | None,
        *,
        is_admin: bool,
        now_ms: int,
        displayname: str | None,
    ) -> None:
        try:
            async with self._db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO users (user_id, password_hash, is_admin, created_ts) "
                    "VALUES ($1, $2, $3, $4)",
                    user_id,
                    password_hash,
                    is_admin,
                    now_ms,
                )
                await conn.execute(
                    "INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)",
                    user_id,
                    displayname,
                )
        except asyncpg.UniqueViolationError as e:
            raise UserExists(user_id) from e

    async def get_user(self, user_id: str) -> UserRecord | None:
        row = await self._db.fetchrow(
            "SELECT user_id, password_hash, is_admin, deactivated, created_ts "
            "FROM users WHERE user_id = $1",
            user_id,
        )
        return UserRecord(**dict(row)) if row else None

    async def user_exists(self, user_id: str) -> bool:
        return bool(await self._db.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id))

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        await self._db.execute(
            "UPDATE users SET is_admin = $2 WHERE user_id = $1", user_id, is_admin
        )

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self._db.execute(
            "UPDATE users SET password_hash = $2 WHERE user_id = $1", user_id, password_hash
        )

    async def add_device_and_token(
        self,
        user_id: str,
        device_id: str,
        display_name: str | None,
        token_hash: bytes,
        now_ms: int,
    ) -> None:
        """A login: the device (kept if it exists) and a fresh token for it.
        Logging in again with the same device id replaces its old tokens."""
        async with self._db.transaction() as conn:
            # Cached token lookups of this user are dropped in every process.
            await conn.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, user_id)
            await conn.execute(
                "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts) "
                "VALUES ($1, $2, $3, $4, $4) ON CONFLICT (user_id, device_id) DO UPDATE "
                "SET last_seen_ts = EXCLUDED.last_seen_ts, "
                "display_name = COALESCE(EXCLUDED.display_name, devices.display_name)",
                user_id,
                device_id,
                display_name,
                now_ms,
            )
            await conn.execute(
                "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
                user_id,
                device_id,
            )
            await conn.execute(
                "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) "
                "VALUES ($1, $2, $3, $4)",
                token_hash,
                user_id,
                device_id,
                now_ms,
            )

    async def token_owner(self, token_hash: bytes) -> TokenOwner | None:
        row = await self._db.fetchrow(
            "SELECT t.user_id, t.device_id, u.is_admin FROM access_tokens t "
            "JOIN users u USING (user_id) WHERE t.token_hash = $1 AND NOT u.deactivated",
            token_hash,
        )
        return TokenOwner(row["user_id"], row["device_id"], row["is_admin"]) if row else None

    async def delete_device(self, user_id: str, device_id: str) -> None:
        async with self._db.transaction() as conn:
            # Cached token lookups of this user are dropped in every process.
            await conn.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, user_id)
            await conn.execute(
                "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2",
                user_id,
                device_id,
            )
            await conn.execute(
                "DELETE FROM devices WHERE user_id = $1 AND device_id = $2", user_id, device_id
            )

    async def delete_all_devices(self, user_id: str) -> None:
        async with self._db.transaction() as conn:
            # Cached token lookups of this user are dropped in every process.
            await conn.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, user_id)
            await conn.execute("DELETE FROM access_tokens WHERE user_id = $1", user_id)
            await conn.execute("DELETE FROM devices WHERE user_id = $1", user_id)

    async def get_profile(self, user_id: str) -> Profile | None:
        row = await self._db.fetchrow(
            "SELECT displayname, avatar_url FROM profiles WHERE user_id = $1", user_id
        )
        return Profile(row["displayname"], row["avatar_url"]) if row else None

    async def get_profiles(self, user_ids: Sequence[str]) -> dict[str, Profile]:
        """The profiles of those of ``user_ids`` that exist, in one query."""
        rows = await self._db.fetch(
            "SELECT user_id, displayname, avatar_url FROM profiles WHERE user_id = ANY($1)",
            list(user_ids),
        )
        return {r["user_id"]: Profile(r["displayname"], r["avatar_url"]) for r in rows}

    async def set_profile_field(self, user_id: str, field: str, value: str | None) -> None:
        assert field in ("displayname", "avatar_url")
        await self._db.execute(
            f"UPDATE profiles SET {field} = $2 WHERE user_id = $1", user_id, value
        )
