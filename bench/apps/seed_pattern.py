"""The common pattern that the template aims to beat by two times: what tutorials teach.

A `DatabaseSessionManager` owning the engine (a pool of 100) and an `async_scoped_session` keyed
on the current task; a dependency that sets `search_path` on every request before yielding the
session and removes it afterwards; ORM objects end to end, with a `refresh` after each insert.
Each of these costs a round trip or Python work per request, which is what the benchmark shows.

Kept as tutorials have it, flaw included: `SET search_path` is transactional, so a session that
rolls back (every GET, when it is removed) leaves its connection on the server's default path, and
the `refresh` after a commit may run on such a connection: "relation cities does not exist", a
500. It shows as non-2xx answers in the first second or so of POST load, until every pooled
connection has committed a `SET` once. The template applies its schema in the engine instead.
Environment: `BENCH_DATABASE_URL` (a `postgresql+asyncpg://` URL), `BENCH_SCHEMA`.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from cities import City, CityCreate, CityRead
from fastapi import Depends, FastAPI, HTTPException, Query, status
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)


class DatabaseSessionManager:
    """Owns the engine and a session registry keyed on the asyncio task (one per request)."""

    def __init__(self, url: str, schema: str) -> None:
        self.engine = create_async_engine(url, pool_size=100, max_overflow=0)
        self.scoped_session = async_scoped_session(
            async_sessionmaker(self.engine, expire_on_commit=False),
            scopefunc=asyncio.current_task,
        )
        # The schema is quoted by the dialect: it is an identifier, not a bindable value.
        quoted_schema = self.engine.dialect.identifier_preparer.quote_identifier(schema)
        self.set_search_path = text("SET search_path TO " + quoted_schema)

    async def close(self) -> None:
        await self.engine.dispose()


sessionmanager = DatabaseSessionManager(
    os.environ["BENCH_DATABASE_URL"], os.environ["BENCH_SCHEMA"]
)


async def get_session() -> AsyncIterator[AsyncSession]:
    session = sessionmanager.scoped_session()
    try:
        await session.execute(sessionmanager.set_search_path)
        yield session
    finally:
        await sessionmanager.scoped_session.remove()


SessionDep = Annotated[AsyncSession, Depends(get_session)]


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await sessionmanager.close()


app = FastAPI(lifespan=lifespan)


@app.post("/cities", status_code=status.HTTP_201_CREATED, response_model=CityRead)
async def create_city(city_in: CityCreate, session: SessionDep) -> City:
    city = City(name=city_in.name, population=city_in.population)
    session.add(city)
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "Name taken") from error
    await session.refresh(city)
    return city


@app.get("/cities/biggest", response_model=list[CityRead])
async def biggest_cities(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> Sequence[City]:
    cities = await session.scalars(
        select(City).order_by(City.population.desc(), City.id).limit(limit)
    )
    return cities.all()
