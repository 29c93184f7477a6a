"""Statements prepared before a schema change: prepared again, and a read that met one run again.

asyncpg and SQLAlchemy keep each statement prepared on its connection, with the types of its
result, so that a read of one statement costs one round trip. When a migration then changes a
column's type under the running app (`ALTER TABLE ... ALTER COLUMN ... TYPE`), a kept statement
meets the change in one of two ways:

- **refused**: the server connection prepared it before the change, and PostgreSQL refuses to run
  it ("cached plan must not change result type", asyncpg's `InvalidCachedStatementError`). The
  statement did not run.
- **misread**, through PgBouncer with prepared statements only (`pgbouncer-prepared`): the server
  connection had not prepared it, so PgBouncer prepares it there from its text, after the change,
  without asking for its result types; the rows come in the new types and asyncpg decodes them
  as the old ones. When the sizes differ (`integer` to `bigint`, `bigint` to `numeric`) decoding
  fails (`BufferError`); when they agree (`bigint` to `double precision`) the values are wrong
  and nothing can tell (the rendered README says what a deployment does about it).

On either, the engine gets a new mark, a comment in front of every statement's text: from then
on every statement of the process, on every pooled connection, is a new text, which asyncpg,
SQLAlchemy and PgBouncer prepare afresh (through PgBouncer only a new text helps: it keeps one
server-side statement per text on each server connection, so that preparing the same text again
gets the refused statement back, on every attempt; measured with 1.24.1: 30 of 30 reads failed).
The statement that met the change runs once more, with the new mark, when that runs nothing
twice: a refused one outside a transaction (the reads, in autocommit mode), a misread `SELECT`.
Otherwise the error stands: inside a transaction a refusal has aborted it, and that request
fails (503, to be retried) while the process's next statements are new texts.
"""

import re
import secrets
from typing import Any, Final

import asyncpg
from sqlalchemy import Select, event
from sqlalchemy.engine import Connection, ExecutionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from .errors import MisreadRowsError, causes

# A comment, so that the server runs the same statement. In front, where no `--` comment of the
# statement's own can swallow it. pg_stat_statements counts the texts as one (its query id
# ignores comments).
MARK: Final = re.compile(r"^/\* plan [0-9a-f]{8} \*/ ")


class StatementMark:
    """The prefix of every statement of an engine: changed when a statement's plan is stale."""

    def __init__(self) -> None:
        self.current = ""

    def renew(self, stale_statement: str) -> None:
        """A new mark, unless another statement that met the change already made one."""
        if _mark_of(stale_statement) == self.current:
            self.current = f"/* plan {secrets.token_hex(4)} */ "

    def marked(self, statement: str) -> str:
        """`statement`, without any mark it has, behind the current one."""
        return self.current + MARK.sub("", statement, count=1)


def _mark_of(statement: str) -> str:
    found = MARK.match(statement)
    return found.group() if found else ""


def refused(error: BaseException) -> bool:
    """Whether `error` (SQLAlchemy's, or the driver's) is PostgreSQL's refusal to run a statement
    prepared before a change of the types it returns."""
    return any(isinstance(cause, asyncpg.InvalidCachedStatementError) for cause in causes(error))


def misread(error: BaseException) -> bool:
    """Whether `error` is asyncpg's failure to decode rows with the types that it was told."""
    return isinstance(error, BufferError)


def survive_schema_changes(engine: AsyncEngine) -> None:
    """Give `engine`'s statements a mark that a schema change renews, and run once more a
    statement that met the change, where that runs nothing twice (see the module's docstring)."""
    mark = StatementMark()

    @event.listens_for(engine.sync_engine, "before_cursor_execute", retval=True)
    def _mark(
        _connection: Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: ExecutionContext | None,
        _executemany: bool,
    ) -> tuple[str, Any]:
        return mark.current + statement, parameters

    @event.listens_for(engine.sync_engine, "do_execute")
    def _execute(cursor: Any, statement: str, parameters: Any, context: ExecutionContext) -> bool:
        try:
            cursor.execute(statement, parameters)
        except Exception as error:
            if refused(error):
                mark.renew(statement)
                driver = context.root_connection.connection.driver_connection
                if driver is None or driver.is_in_transaction():
                    raise
            elif misread(error):
                mark.renew(statement)
                if not isinstance(getattr(context.compiled, "statement", None), Select):
                    raise MisreadRowsError(str(error)) from error
            else:
                raise
            cursor.execute(mark.marked(statement), parameters)
        return True
