"""A streaming read replica (`DATABASE_READ_URL`): reads go to it while it keeps up.

- **Which reads**: those of `ReadSessionDep` (`Database.read_session()`), on an engine and a pool
  of the replica's own. Sessions (`SessionDep`, `Database.session()`), writes, `init-db` and
  readiness stay on the primary.
- **Keeping up**: a task of each process checks the replica every `CHECK_INTERVAL_SECONDS`, not
  each read. Lag is measured in WAL positions, not by the time of the last replayed commit (which
  grows on an idle primary though the replica has replayed everything): the task samples the
  primary's flushed position (`pg_current_wal_flush_lsn()`) and the replica's replayed one
  (`pg_last_wal_replay_lsn()`); the lag is how long ago the primary first had WAL that the
  replica has not replayed yet (0 when it has replayed all, to within a check). A replica more
  than `DB_READ_MAX_LAG` seconds behind is bypassed. When the primary does not answer, the
  replica's own received position stands in for the primary's.
- **Read your writes**: after a request's session committed, its response carries
  `X-Consistency-Token`, the primary's WAL position after the commit (one more round trip, only
  with a replica: no reply to `COMMIT` carries it). A read that sends it back is served by the
  replica only once the replica has replayed that far (as of its last check), else by the
  primary.
- **Failure**: a statement that the replica cannot answer (refused, not answered within
  `DB_READ_TIMEOUT`, connection lost mid-read, canceled by a recovery conflict) runs again on
  the primary: no failed read. The replica is then left alone and checked again after a
  back-off (0.5 s, doubling up to 5 s); reads return to it as soon as a check succeeds, and its
  pool is renewed, without a restart.
"""

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import event, exc, text
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import DatabaseUnavailableError, is_unavailable

logger = logging.getLogger(__name__)

CONSISTENCY_HEADER: Final = "X-Consistency-Token"
# Often enough that a token is honoured by the replica a fraction of a second after its write;
# rarely enough to cost nothing: 2 one-row queries per check and process.
CHECK_INTERVAL_SECONDS: Final = 0.2
# A replica that does not answer its check within this is down.
CHECK_TIMEOUT_SECONDS: Final = 1.0
BACKOFF_SECONDS: Final = (0.5, 5.0)  # the first, the longest
# Samples of the primary's position that the replica has not replayed yet: at 5 a second, 10
# minutes of them. When full, the newest is dropped: the lag, from the oldest, stays right.
MAX_SAMPLES: Final = 3000

# A token: the primary's insert position, at or past the end of a commit it follows in every
# commit mode (with `synchronous_commit = off`, the written position `pg_current_wal_lsn()` may
# not have reached the commit yet). At worst a little past it: a read then goes to the primary.
WRITE_POSITION: Final = text("SELECT pg_current_wal_insert_lsn()::text")
# The lag: what the primary has flushed, which is all its replicas can have.
PRIMARY_POSITION: Final = text("SELECT pg_current_wal_flush_lsn()::text")
REPLICA_POSITIONS: Final = text(
    "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text"
)
# PostgreSQL's text form of a WAL position (`pg_lsn`): two hexadecimal halves of 32 bits.
_LSN: Final = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
# A statement canceled by a conflict with recovery (a replayed vacuum removed rows it needed).
_RECOVERY_CONFLICT_SQLSTATE: Final = "40001"
# Where `dependencies.get_session` leaves a write's token for `ConsistencyTokenMiddleware`.
WRITE_POSITION_KEY: Final = "consistency_token"
_HEADER_NAME: Final = CONSISTENCY_HEADER.lower().encode()
_COMMITTED: Final = "committed"
_REPLICA: Final = "replica"


def parse_lsn(value: str | None) -> int | None:
    """A WAL position as a number, or None when `value` is not one."""
    match = _LSN.match(value) if value else None
    return (int(match[1], 16) << 32 | int(match[2], 16)) if match else None


class State(StrEnum):
    UNKNOWN = "unknown"  # not checked yet: reads go to the primary
    STREAMING = "streaming"
    LAGGING = "lagging"
    DOWN = "down"
    NOT_A_STANDBY = "not a standby"  # promoted, or not a replica at all: not used


@dataclass(frozen=True)
class ReplicaStatus:
    """What readiness reports of the replica."""

    state: State
    lag_seconds: float | None
    replayed: str | None


class Replica:
    """The replica's engine, and what this process knows of it; `start()` watches it."""

    def __init__(self, engine: AsyncEngine, primary: AsyncEngine, max_lag: float) -> None:
        """`engine`: the replica's, with a pool of its own; `primary`: the primary's engine in
        autocommit mode (the fallback of reads, and where tokens come from)."""
        self.engine = engine
        # Its checks, one statement each: no BEGIN and ROLLBACK around them.
        self._checks = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.primary = primary
        self.max_lag = max_lag
        self.state = State.UNKNOWN
        self.lag: float | None = None
        self.replayed = 0
        self._replayed_text: str | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._backoff = BACKOFF_SECONDS[0]
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Watch the replica from a task of this process, once (the first read starts it, so
        that commands that never read, such as `init-db`, never touch the replica)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="read replica watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.engine.dispose()

    def serves(self, token: str | None) -> bool:
        """Whether a read with this consistency token (or none) may go to the replica."""
        if self.state is not State.STREAMING:
            return False
        if token is None:
            return True
        # A token that is not a position cannot be honoured: the primary is always fresh enough.
        position = parse_lsn(token)
        return position is not None and position <= self.replayed

    def status(self) -> ReplicaStatus:
        lag = None if self.lag is None else round(self.lag, 3)
        return ReplicaStatus(self.state, lag, self._replayed_text)

    async def wal_position(self) -> str | None:
        """The primary's WAL position now (after a commit: at or past it), as a token."""
        try:
            async with self.primary.connect() as connection:
                position: str = (await connection.execute(WRITE_POSITION)).scalar_one()
        except (exc.DBAPIError, exc.TimeoutError, DatabaseUnavailableError, OSError) as error:
            # The write is committed: a 503 would make its client retry it. It goes without a
            # token, as writes do without a replica.
            logger.warning("no consistency token: the primary's WAL position is unknown: %r", error)
            return None
        return position

    def failed(self, error: BaseException, *, check: bool = False) -> None:
        """The replica could not answer (a read, or a `check`): leave it alone for a back-off,
        twice as long after each check that fails while it is down. The reads that were in
        flight as it went down fail too: they change nothing."""
        if self.state is State.DOWN:
            if not check:
                return
            self._backoff = min(self._backoff * 2, BACKOFF_SECONDS[1])
        else:
            self._backoff = BACKOFF_SECONDS[0]
            # One line, no traceback: the state, not a bug. The watch says when it is back.
            logger.warning(
                "read replica unavailable, reads go to the primary (retried in %.1f s): %s",
                self._backoff,
                _first_line(error),
            )
        self.state = State.DOWN
        self._retry_at = time.monotonic() + self._backoff

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(max(CHECK_INTERVAL_SECONDS, self._retry_at - time.monotonic()))
            try:
                await self.check()
            # Whatever it is, the watch goes on: if it ended, the replica would never be used
            # again. What failed is logged in one line by `failed`.
            except Exception as error:
                self.failed(error, check=True)

    async def check(self) -> None:
        """Measure the replica's position against the primary's, and update the state."""
        if self.state is State.DOWN:
            # Connections from before the outage are dead: start the pool afresh.
            await self.engine.dispose()
        primary = await self._primary_position()
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), self._checks.connect() as connection:
            in_recovery, received, replayed = (await connection.execute(REPLICA_POSITIONS)).one()
        self._observe(
            time.monotonic(),
            primary if primary is not None else parse_lsn(received),
            parse_lsn(replayed) if in_recovery else None,
        )
        self._replayed_text = replayed

    async def _primary_position(self) -> int | None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), self.primary.connect() as connection:
                return parse_lsn((await connection.execute(PRIMARY_POSITION)).scalar_one())
        except (exc.DBAPIError, exc.TimeoutError, DatabaseUnavailableError, OSError):
            return None  # its outage is the primary's sessions' business

    def _observe(self, now: float, head: int | None, replayed: int | None) -> None:
        """Update the lag from the primary's position `head` (sampled first) and the replica's."""
        if replayed is None:
            if self.state is not State.NOT_A_STANDBY:
                logger.warning("the read replica is not in recovery: reads go to the primary")
            self.state, self.lag = State.NOT_A_STANDBY, None
            return
        if head is not None and (not self._samples or head > self._samples[-1][1]):
            if len(self._samples) >= MAX_SAMPLES:
                self._samples.pop()
            self._samples.append((now, head))
        while self._samples and self._samples[0][1] <= replayed:
            self._samples.popleft()
        self.lag = now - self._samples[0][0] if self._samples else 0.0
        self.replayed = replayed
        state = State.STREAMING if self.lag <= self.max_lag else State.LAGGING
        if self.state is State.DOWN:
            logger.warning("read replica back: reads go to it again")
        elif state is not self.state and self.state is not State.UNKNOWN:
            logger.warning("read replica %s (%.1f s behind)", state, self.lag)
        self.state = state


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def time_out_statements(engine: AsyncEngine, seconds: float) -> None:
    """Make a statement of `engine` (the replica's) that its driver gave up on after `seconds`
    (asyncpg's `command_timeout`) raise `DatabaseUnavailableError`, and drop the connections of
    its pool rather than close them.

    asyncpg raises a bare `TimeoutError`, which SQLAlchemy passes on as it is. A polite close (of
    a connection that timed out, an overflow connection given back, a pool disposed of) waits
    for the server, and for asyncpg's cancel of the statement, sent on a new connection: a server
    that stopped answering answers neither. Measured: such a close failed after `seconds`, with a
    traceback in the log; asyncpg before 0.32 waits for ever (its issue 1356).
    """

    @event.listens_for(engine.sync_engine, "handle_error")
    def _unavailable(context: ExceptionContext) -> Exception | None:
        if isinstance(context.original_exception, TimeoutError):
            return DatabaseUnavailableError(f"no answer within {seconds:g} s (DB_READ_TIMEOUT)")
        return None

    @event.listens_for(engine.sync_engine.pool, "close")
    def _drop(dbapi_connection: Any, _entry: ConnectionPoolEntry) -> None:
        # Before the pool closes it, which then finds it closed.
        dbapi_connection.driver_connection.terminate()


def is_replica_failure(error: BaseException) -> bool:
    """Whether the replica could not answer a statement that the primary can."""
    return is_unavailable(error) or (
        isinstance(error, exc.DBAPIError)
        and getattr(error.orig, "sqlstate", None) == _RECOVERY_CONFLICT_SQLSTATE
    )


class FailoverSession(Session):
    """A session on the replica: a statement that the replica cannot answer runs on the primary,
    and so does the rest of the session. For reads without a transaction only, where each
    statement stands on its own."""

    # Every statement of a session goes through this method (`execute`, `scalar`, `get`, lazy
    # loads); `execute` alone would miss `scalar` and `scalars`.
    def _execute_internal(self, *args: Any, **kwargs: Any) -> Any:
        replica: Replica | None = self.info.get(_REPLICA)
        if replica is None:
            return super()._execute_internal(*args, **kwargs)
        try:
            return super()._execute_internal(*args, **kwargs)
        except (exc.DBAPIError, exc.TimeoutError, DatabaseUnavailableError) as error:
            if not is_replica_failure(error):
                raise
            # A full replica pool, or one statement canceled by replay: the replica is fine.
            if not isinstance(error, exc.TimeoutError) and not _is_recovery_conflict(error):
                replica.failed(error)
        # Let go of the replica's connection (dead, or its statement canceled): the rest of
        # this session reads from the primary.
        self.rollback()
        del self.info[_REPLICA]
        self.bind = replica.primary.sync_engine
        return super()._execute_internal(*args, **kwargs)


def _is_recovery_conflict(error: BaseException) -> bool:
    return getattr(getattr(error, "orig", None), "sqlstate", None) == _RECOVERY_CONFLICT_SQLSTATE


def on_replica(replica: Replica) -> dict[str, Any]:
    """The `info` of a `FailoverSession` on `replica`."""
    return {_REPLICA: replica}


class CommitTrackingSession(Session):
    """A session that remembers having committed: a write's response then carries its token."""


@event.listens_for(CommitTrackingSession, "after_commit")
def _remember_commit(session: Session) -> None:
    session.info[_COMMITTED] = True


def committed(session: Session) -> bool:
    return bool(session.info.get(_COMMITTED))


class ConsistencyTokenMiddleware:
    """Adds `X-Consistency-Token` to a response whose request committed a write (with a replica).

    The session's dependency closes it, and takes the token, after the route has returned, when
    FastAPI has already built the response: it leaves the token in the request's state, and this
    adds it as the response starts.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start" and (
                token := scope.get("state", {}).get(WRITE_POSITION_KEY)
            ):
                headers = [*message.get("headers", []), (_HEADER_NAME, token.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_token)
