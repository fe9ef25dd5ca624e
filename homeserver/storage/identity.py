"""The database's identity: the server name (and signing key id) it was
created with, stored at the first start (table ``server_identity``).

Every id in the database carries the server name, so a database cannot
change hands: a server configured with another name is refused, and
operator commands take the name from here rather than from flags.
"""

from __future__ import annotations

from dataclasses import dataclass

from homeserver.storage.database import Database


@dataclass(frozen=True, slots=True)
class StoredIdentity:
    server_name: str
    signing_key_id: str
    created_ts: int


class IdentityStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self) -> StoredIdentity | None:
        row = await self._db.fetchrow(
            "SELECT server_name, signing_key_id, created_ts FROM server_identity"
        )
        if row is None:
            return None
        return StoredIdentity(row["server_name"], row["signing_key_id"], row["created_ts"])

    async def claim(self, server_name: str, signing_key_id: str, now_ms: int) -> StoredIdentity:
        """Store the identity unless one is there (the first start wins, even
        when several processes start at once); return the stored one."""
        await self._db.execute(
            "INSERT INTO server_identity (server_name, signing_key_id, created_ts) "
            "VALUES ($1, $2, $3) ON CONFLICT (only_row) DO NOTHING",
            server_name,
            signing_key_id,
            now_ms,
        )
        stored = await self.get()
        assert stored is not None
        return stored

    async def set_signing_key_id(self, signing_key_id: str) -> None:
        await self._db.execute("UPDATE server_identity SET signing_key_id = $1", signing_key_id)
