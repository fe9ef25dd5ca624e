"""Devices and account lifecycle: listing, renaming, deleting devices,
deactivating an account.

Tables owned (with ``storage/accounts.py``): devices, access_tokens, users.
Every change that ends tokens notifies ``AUTH_CHANNEL`` in its transaction, so
every process drops its cached token lookups of that user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from homeserver.storage.accounts import AUTH_CHANNEL
from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class Device:
    user_id: str
    device_id: str
    display_name: str | None
    last_seen_ts: int | None


class DeviceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_devices(self, user_id: str) -> list[Device]:
        rows = await self._db.fetch(
            "SELECT user_id, device_id, display_name, last_seen_ts FROM devices "
            "WHERE user_id = $1 ORDER BY created_ts, device_id",
            user_id,
        )
        return [Device(*r) for r in rows]

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        row = await self._db.fetchrow(
            "SELECT user_id, device_id, display_name, last_seen_ts FROM devices "
            "WHERE user_id = $1 AND device_id = $2",
            user_id,
            device_id,
        )
        return Device(*row) if row else None

    async def rename_device(self, user_id: str, device_id: str, name: str | None) -> bool:
        done = await self._db.execute(
            "UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2",
            user_id,
            device_id,
            name,
        )
        return str(done).endswith(" 1")

    async def delete_devices(self, user_id: str, device_ids: Sequence[str]) -> None:
        """The devices and their tokens (unknown ids are no error: the
        spec's delete_devices is idempotent)."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, user_id)
            await conn.execute(
                "DELETE FROM access_tokens WHERE user_id = $1 AND device_id = ANY($2::text[])",
                user_id,
                list(device_ids),
            )
            await conn.execute(
                "DELETE FROM devices WHERE user_id = $1 AND device_id = ANY($2::text[])",
                user_id,
                list(device_ids),
            )

    async def delete_other_devices(self, user_id: str, keep: str | None) -> None:
        """Every device but ``keep`` (after a password change)."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, user_id)
            await conn.execute(
                "DELETE FROM access_tokens WHERE user_id = $1 AND device_id IS DISTINCT FROM $2",
                user_id,
                keep,
            )
            await conn.execute(
                "DELETE FROM devices WHERE user_id = $1 AND device_id IS DISTINCT FROM $2",
                user_id,
                keep,
            )

    async def deactivate(self, user_id: str) -> None:
        """No more logins or tokens; the user id is never handed out again
        (the row stays)."""
        async with self._db.transaction() as conn:
            await conn.execute("SELECT pg_notify($1, $2)", AUTH_CHANNEL, user_id)
            await conn.execute(
                "UPDATE users SET deactivated = true, password_hash = NULL WHERE user_id = $1",
                user_id,
            )
            await conn.execute("DELETE FROM access_tokens WHERE user_id = $1", user_id)
            await conn.execute("DELETE FROM devices WHERE user_id = $1", user_id)
