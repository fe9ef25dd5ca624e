"""The one error type: ``MatrixError(status, errcode, message, **extra)``.

It lives here, free of aiohttp, so services can raise it (DESIGN rule 1);
``api/errors.py`` re-exports it and its middleware renders it.
"""

from __future__ import annotations

import logging
from typing import Any


class MatrixError(Exception):
    """An error with a Matrix errcode; ``extra`` keys are merged into the body."""

    def __init__(self, status: int, errcode: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"errcode": self.errcode, "error": self.message, **self.extra}


def forbidden(message: str) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", message)


def not_found(message: str) -> MatrixError:
    return MatrixError(404, "M_NOT_FOUND", message)


def bad_state(message: str) -> MatrixError:
    return MatrixError(403, "M_BAD_STATE", message)


def bad_json(message: str) -> MatrixError:
    return MatrixError(400, "M_BAD_JSON", message)


def invalid_param(message: str) -> MatrixError:
    return MatrixError(400, "M_INVALID_PARAM", message)


def missing_param(message: str) -> MatrixError:
    return MatrixError(400, "M_MISSING_PARAM", message)


# While PostgreSQL is unreachable every request fails the same way; clients
# are told to come back (503 + Retry-After) rather than shown a 500. The
# spec has no errcode for it, so a namespaced one (documented in
# docs/operations.md); clients treat any 503 as retryable.
UNAVAILABLE = "IO.HOMESERVER.UNAVAILABLE"
UNAVAILABLE_RETRY_S = 2


def unavailable_for(exc: BaseException) -> MatrixError | None:
    """The 503 for an exception meaning the database is unreachable, else None."""
    from homeserver.storage.database import is_connection_error

    if not is_connection_error(exc):
        return None
    return MatrixError(
        503,
        UNAVAILABLE,
        "The database is unreachable; try again shortly",
        retry_after_ms=UNAVAILABLE_RETRY_S * 1000,
    )


def log_background_failure(log: logging.Logger, what: str, exc: BaseException) -> None:
    """A background pass failed: while the database is unreachable that is
    expected and retried, so one line; anything else with its traceback."""
    if unavailable_for(exc) is not None:
        log.warning("%s: database unreachable (%s); will retry", what, exc)
    else:
        log.error("%s", what, exc_info=exc)
