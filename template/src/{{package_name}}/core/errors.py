"""Error responses: a database outage or an exhausted pool becomes `503` with `Retry-After`; a
database that lacks the app's tables a `500` whose log line says so; a constraint that a write
violates, told apart by its SQLSTATE, a `409`; an invalid request a `422` that can always be
encoded."""

import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, Final

import asyncpg
from fastapi import FastAPI, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc
from starlette.exceptions import HTTPException

from .metrics import POOL_TIMEOUTS
from .telemetry import cause_of_answer

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
# SQLite's primary result codes for a database that is busy, locked or cannot be opened.
UNAVAILABLE_SQLITE_CODES: Final = frozenset(
    {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN}
)
# A table or a column that the models have and the database lacks: PostgreSQL's undefined
# table (42P01) and column (42703); SQLite tells them apart only in its message.
MISSING_TABLE_SQLSTATE: Final = "42P01"
MISSING_COLUMN_SQLSTATE: Final = "42703"
SQLITE_MISSING_TABLE: Final = re.compile(r"^no such table: ")
SQLITE_MISSING_COLUMN: Final = re.compile(r"^no such column: |^table \S+ has no column named ")
INIT_DB: Final = f"python -m {__name__.partition('.')[0]} init-db"


class Violation(StrEnum):
    """The constraint that a write violated."""

    UNIQUE = "unique"
    FOREIGN_KEY = "foreign key"
    NOT_NULL = "not null"
    CHECK = "check"


# PostgreSQL's SQLSTATEs of class 23 (integrity constraint violation), and SQLite's extended
# result codes of SQLITE_CONSTRAINT: the same four constraints, under two numberings.
VIOLATIONS_BY_SQLSTATE: Final = {
    "23505": Violation.UNIQUE,
    "23503": Violation.FOREIGN_KEY,
    "23502": Violation.NOT_NULL,
    "23514": Violation.CHECK,
}
VIOLATIONS_BY_SQLITE_CODE: Final = {
    sqlite3.SQLITE_CONSTRAINT_UNIQUE: Violation.UNIQUE,
    sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY: Violation.UNIQUE,
    sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY: Violation.FOREIGN_KEY,
    sqlite3.SQLITE_CONSTRAINT_NOTNULL: Violation.NOT_NULL,
    sqlite3.SQLITE_CONSTRAINT_CHECK: Violation.CHECK,
}


class ErrorMessage(BaseModel):
    """The body of every error but `422`: `{"detail": "..."}`, as FastAPI's `HTTPException`."""

    detail: str


# The answer of `BodyLimitMiddleware` to a body over the limit, which any request may send:
# documented on every route (the app's `responses`).
REQUEST_TOO_LARGE: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_413_CONTENT_TOO_LARGE: {
        "model": ErrorMessage,
        "description": "The body is over `MAX_REQUEST_BODY_BYTES`: refused before it is read",
    },
}


class DatabaseUnavailableError(Exception):
    """The database could not be reached: a connection was refused or timed out, or the read
    replica did not answer a statement in time."""


class MisreadRowsError(Exception):
    """Rows of a statement prepared before a schema change, which asyncpg could not decode, of
    a statement that is not run again (not a `SELECT`, see `schema_changes.py`): the app
    answers 503, to be retried."""


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means that the database is out of reach (rather than a bug or bad data)."""
    return any(_means_unavailable(cause) for cause in causes(error))


def causes(error: BaseException | None) -> Iterator[BaseException]:
    """`error`, then what caused it: SQLAlchemy's error wraps the driver's, which may wrap more."""
    cause: BaseException | None = error
    while cause is not None:
        yield cause
        cause = cause.__cause__


def _means_unavailable(error: BaseException) -> bool:
    # Refused or timed out at connect (see `database.py`), the pool has no free connection, or
    # rows of a statement prepared before a schema change (`schema_changes.py`).
    if isinstance(error, DatabaseUnavailableError | exc.TimeoutError | MisreadRowsError):
        return True
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or any(
            _driver_means_unavailable(cause) for cause in causes(error.orig)
        )
    return False


def _driver_means_unavailable(error: BaseException) -> bool:
    """What the driver raised, inside a SQLAlchemy error: a connection lost mid-statement, or the
    server's (or SQLite's) word that it cannot take work."""
    if isinstance(error, OSError | asyncpg.ConnectionDoesNotExistError):
        return True
    # A statement prepared before a migration changed its types, inside a transaction, which
    # it aborted (`schema_changes.py`): the process prepares it again, so a retry succeeds.
    if isinstance(error, asyncpg.InvalidCachedStatementError):
        return True
    if isinstance(error, sqlite3.Error):
        return error.sqlite_errorcode & 0xFF in UNAVAILABLE_SQLITE_CODES
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATES)


def violation(error: exc.IntegrityError) -> Violation | None:
    """The constraint that `error` reports: from PostgreSQL's SQLSTATE or SQLite's extended
    result code, never from a message."""
    for cause in causes(error.orig):
        if isinstance(cause, sqlite3.Error):
            return VIOLATIONS_BY_SQLITE_CODE.get(cause.sqlite_errorcode)
        if isinstance(sqlstate := getattr(cause, "sqlstate", None), str):
            return VIOLATIONS_BY_SQLSTATE.get(sqlstate)
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def schema_mismatch(error: exc.DBAPIError) -> str | None:
    """What is wrong when `error` says that a table or a column of the models is missing."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    message = str(error.orig).splitlines()[0]
    if sqlstate == MISSING_TABLE_SQLSTATE or SQLITE_MISSING_TABLE.match(message):
        return (
            f"the database lacks a table of the app ({message}): run `{INIT_DB}`, or write"
            " the migration that creates it (`alembic revision --autogenerate`)"
        )
    if sqlstate == MISSING_COLUMN_SQLSTATE or SQLITE_MISSING_COLUMN.match(message):
        return (
            f"the database's tables lack a column of the models ({message}): run `{INIT_DB}`,"
            " or write the migration that adds it (`alembic revision --autogenerate`)"
        )
    return None


async def database_error(request: Request, error: Exception) -> JSONResponse:
    """`503` for an outage; `500`, logged with the reason, for a database the app cannot use."""
    if is_unavailable(error):
        # Logged once, by the request's access line, with this cause (`core/telemetry.py`).
        if pool_timed_out := any(isinstance(cause, exc.TimeoutError) for cause in causes(error)):
            POOL_TIMEOUTS.inc()
        what = "no free connection in the pool" if pool_timed_out else "database unavailable"
        cause_of_answer(request.scope, f"{what}: {_first_line(error)}")
        return JSONResponse(
            {"detail": "The database is unavailable; retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(error, exc.DBAPIError) and (reason := schema_mismatch(error)):
        logger.error("%s %s: %s", request.method, request.url.path, reason)
        return JSONResponse(
            {"detail": "Internal Server Error"},
            status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    raise error


async def conflict(request: Request, error: Exception) -> JSONResponse:
    """`409` for a write that a unique constraint refused, which no route answered itself (the
    transaction was rolled back: nothing was written); any other violation is a bug, a `500`."""
    if not isinstance(error, exc.IntegrityError) or violation(error) is not Violation.UNIQUE:
        return await database_error(request, error)
    cause_of_answer(request.scope, f"unique violation: {_first_line(error.orig or error)}")
    return JSONResponse(
        {"detail": "The change conflicts with a stored record"},
        status_code=status.HTTP_409_CONFLICT,
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
    for error in (exc.DBAPIError, exc.TimeoutError, DatabaseUnavailableError, MisreadRowsError):
        app.add_exception_handler(error, database_error)
    app.add_exception_handler(exc.IntegrityError, conflict)
