"""Liveness and readiness, for load balancers and orchestrators.

Liveness says the process answers (no database involved, so a database
outage does not get healthy processes restarted). Readiness says it can
serve: the database answers within ``READY_TIMEOUT_S`` and holds the schema
this code expects.
"""

from __future__ import annotations

import asyncio
from typing import Any

from homeserver.services.errors import UNAVAILABLE, UNAVAILABLE_RETRY_S, MatrixError
from homeserver.storage.database import SCHEMA_VERSION, Database, is_connection_error

READY_TIMEOUT_S = 2.0


class HealthService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def readiness(self) -> dict[str, Any]:
        try:
            version = await asyncio.wait_for(self._db.schema_version(), READY_TIMEOUT_S)
        except (TimeoutError, OSError) as e:
            raise self._unready(f"the database does not answer ({type(e).__name__})") from e
        except Exception as e:
            if is_connection_error(e):
                raise self._unready("the database is unreachable") from e
            raise
        if version != SCHEMA_VERSION:
            raise self._unready(
                f"the database schema is version {version}, this server needs {SCHEMA_VERSION}"
            )
        return {"status": "ready", "database": "ok", "schema_version": version}

    @staticmethod
    def _unready(why: str) -> MatrixError:
        return MatrixError(503, UNAVAILABLE, why, retry_after_ms=UNAVAILABLE_RETRY_S * 1000)
