"""Error responses: database outages and pool exhaustion become `503` with `Retry-After`, and
invalid requests a `422` that can always be encoded."""

import json
import logging
from collections.abc import Iterator
from typing import Any, Final

import asyncpg
from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS: Final = 5

DATABASE_UNAVAILABLE: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "description": "The database cannot be reached or has no free connection: retry later",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


# SQLSTATE classes of a server that cannot take work: connection exceptions (08), insufficient
# resources such as too many connections (53), shutdown or start-up in progress (57P).
UNAVAILABLE_SQLSTATES: Final = ("08", "53", "57P")


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means that the database is out of reach (rather than a bug or bad data)."""
    return any(_means_unavailable(cause) for cause in _causes(error))


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it: SQLAlchemy's error wraps the driver's, which may wrap more."""
    cause: BaseException | None = error
    while cause is not None:
        yield cause
        cause = cause.__cause__


def _means_unavailable(error: BaseException) -> bool:
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, exc.OperationalError | exc.InterfaceError
        )
    # Pool exhausted, connection refused or reset, connect timed out, connection lost mid-query.
    if isinstance(
        error, exc.TimeoutError | OSError | TimeoutError | asyncpg.ConnectionDoesNotExistError
    ):
        return True
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATES)


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    if not is_unavailable(error):
        raise error
    logger.warning("%s %s: database unavailable: %r", request.method, request.url.path, error)
    return JSONResponse(
        {"detail": "The database is unavailable; retry later"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped, so that any Python string can be sent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


async def invalid_request(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422, safe to send even when it echoes input that UTF-8 cannot encode."""
    if not isinstance(error, RequestValidationError):
        raise error
    return AsciiJSONResponse(
        {"detail": jsonable_encoder(error.errors())},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def undecodable_body(request: Request, error: Exception) -> Response:
    """The `422` of malformed JSON for a body that is not UTF-8 or nests too deep to decode,
    which FastAPI answers with an undocumented `400`; other HTTP errors as FastAPI answers them."""
    if not isinstance(error, HTTPException):
        raise error
    cause = error.__cause__
    if not isinstance(cause, UnicodeDecodeError | RecursionError):
        return await http_exception_handler(request, error)
    decode_error = {"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error"}
    detail = decode_error | {"input": {}, "ctx": {"error": str(cause)}}
    return await invalid_request(request, RequestValidationError([detail]))


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, undecodable_body)
    for error in (exc.DBAPIError, exc.TimeoutError, OSError, TimeoutError):
        app.add_exception_handler(error, database_unavailable)
