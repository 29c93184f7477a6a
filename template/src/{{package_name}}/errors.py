"""Database outages and pool exhaustion become `503 Service Unavailable` with `Retry-After`."""

import logging
from typing import Any, Final

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import exc

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS: Final = 5

DATABASE_UNAVAILABLE: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "description": "The database cannot be reached or has no free connection: retry later",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def is_unavailable(error: Exception) -> bool:
    """Whether `error` means that the database is out of reach (rather than a bug or bad data)."""
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        )
    # Pool exhausted (`sqlalchemy.exc.TimeoutError`), connection refused or reset (`OSError`),
    # or connect timed out (`TimeoutError`).
    return isinstance(error, exc.TimeoutError | OSError | TimeoutError)


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    if not is_unavailable(error):
        raise error
    logger.warning("%s %s: database unavailable: %r", request.method, request.url.path, error)
    return JSONResponse(
        {"detail": "The database is unavailable; retry later"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def add_error_handlers(app: FastAPI) -> None:
    for error in (exc.DBAPIError, exc.TimeoutError, OSError, TimeoutError):
        app.add_exception_handler(error, database_unavailable)
