"""FastAPI dependencies: the database, and a request's sessions."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from .core.database import Database
from .core.replica import CONSISTENCY_HEADER, WRITE_POSITION_KEY


async def get_database(request: Request) -> Database:
    """The app's database: what the tests replace, and everything below follows."""
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_session(database: DatabaseDep, request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session, closed when the endpoint returns or fails."""
    async with database.session() as session:
        yield session
    # With a read replica, a write's response tells where to read it (core/replica.py).
    if token := await database.consistency_token(session):
        setattr(request.state, WRITE_POSITION_KEY, token)


async def get_read_session(database: DatabaseDep, request: Request) -> AsyncIterator[AsyncSession]:
    """The request's session for reads that need no transaction (see `Database.read_session`):
    on the read replica, if any, once it has the write of the request's consistency token."""
    async with database.read_session(request.headers.get(CONSISTENCY_HEADER)) as session:
        yield session


# `scope="function"`: the session is closed, its connection back in the pool, before the
# response is sent, so a failure to close it is still answered properly; and a background task
# that was handed it finds it closed, rather than open a connection that nobody returns.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]
