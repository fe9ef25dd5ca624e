"""Registration tokens (table: registration_tokens).

A token is usable while ``pending + completed < uses_allowed`` (NULL:
unlimited) and before ``expiry_time`` (ms, NULL: never). ``reserve`` takes a
use atomically, so N concurrent registrations cannot spend a one-use token N
times; ``complete`` or ``release`` ends the reservation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from homeserver.storage.database import Database

_COLUMNS = "token, uses_allowed, pending, completed, expiry_time"
_VALID = (
    "(uses_allowed IS NULL OR pending + completed < uses_allowed) "
    "AND (expiry_time IS NULL OR expiry_time > $1)"
)


@dataclass(frozen=True, slots=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None

    def to_json(self) -> dict[str, Any]:
        """The registration token object of Synapse's admin API."""
        return {
            "token": self.token,
            "uses_allowed": self.uses_allowed,
            "pending": self.pending,
            "completed": self.completed,
            "expiry_time": self.expiry_time,
        }


class TokenExists(Exception):
    """A token with this text is already there."""


def _token(row: asyncpg.Record | None) -> RegistrationToken | None:
    return RegistrationToken(**dict(row)) if row else None


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self, token: str, uses_allowed: int | None, expiry_time: int | None, now_ms: int
    ) -> RegistrationToken:
        try:
            row = await self._db.fetchrow(
                "INSERT INTO registration_tokens (token, uses_allowed, expiry_time, created_ts) "
                f"VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}",
                token,
                uses_allowed,
                expiry_time,
                now_ms,
            )
        except asyncpg.UniqueViolationError as e:
            raise TokenExists(token) from e
        assert row is not None
        return RegistrationToken(**dict(row))

    async def get(self, token: str) -> RegistrationToken | None:
        return _token(
            await self._db.fetchrow(
                f"SELECT {_COLUMNS} FROM registration_tokens WHERE token = $1", token
            )
        )

    async def list(self, valid: bool | None, now_ms: int) -> list[RegistrationToken]:
        where = "" if valid is None else f"WHERE {'' if valid else 'NOT '}({_VALID})"
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM registration_tokens {where} ORDER BY created_ts, token",
            *([now_ms] if valid is not None else []),
        )
        return [RegistrationToken(**dict(r)) for r in rows]

    async def update(self, token: str, changes: dict[str, int | None]) -> RegistrationToken | None:
        """Set ``uses_allowed`` and/or ``expiry_time`` (the keys given)."""
        sets = [f"{column} = ${i}" for i, column in enumerate(changes, start=2)]
        assert set(changes) <= {"uses_allowed", "expiry_time"}
        if not sets:
            return await self.get(token)
        return _token(
            await self._db.fetchrow(
                f"UPDATE registration_tokens SET {', '.join(sets)} WHERE token = $1 "
                f"RETURNING {_COLUMNS}",
                token,
                *changes.values(),
            )
        )

    async def delete(self, token: str) -> bool:
        status = await self._db.execute("DELETE FROM registration_tokens WHERE token = $1", token)
        return status.endswith(" 1")

    async def is_valid(self, token: str, now_ms: int) -> bool:
        return bool(
            await self._db.fetchval(
                f"SELECT 1 FROM registration_tokens WHERE token = $2 AND {_VALID}", now_ms, token
            )
        )

    async def reserve(self, token: str, now_ms: int) -> bool:
        """Take one use (pending + 1) if the token is valid now."""
        status = await self._db.execute(
            f"UPDATE registration_tokens SET pending = pending + 1 WHERE token = $2 AND {_VALID}",
            now_ms,
            token,
        )
        return status.endswith(" 1")

    async def finish(self, token: str, *, completed: bool) -> None:
        """End a reservation: a completed registration, or given back."""
        await self._db.execute(
            "UPDATE registration_tokens SET pending = greatest(pending - 1, 0), "
            "completed = completed + $2 WHERE token = $1",
            token,
            1 if completed else 0,
        )
