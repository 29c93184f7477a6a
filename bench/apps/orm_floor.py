"""The floor of an app that reads and writes through SQLAlchemy's `AsyncSession` as the template
teaches: what is left when everything else that the template adds is taken away.

The template's own data path, bare: a read-only session on an autocommit engine for the read (one
statement, one round trip: rows of the table's columns), a session in a transaction for the write
(`add`, `commit`: `BEGIN`, `INSERT ... RETURNING`, `COMMIT`), the schema in the engine. No
middleware (request ids, access log, metrics, body limit), no engine or session events (pre-ping,
schema changes), one dependency per route; the garbage collector tuned by the template's own
`tuned_for_serving` (`core/garbage_collector.py`, importable in the rendered project's virtualenv
that serves this app; untuned, this app ran at 1.35x the seed pattern instead of 1.8x). What the
template costs above this, its own features cost; what this costs above raw_asyncpg,
SQLAlchemy's session does. Environment: `BENCH_DATABASE_URL` (a `postgresql+asyncpg://` URL),
`BENCH_SCHEMA`, `BENCH_POOL_SIZE` (connections).
"""

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from cities import City, CityCreate, CityRead
from cities_service.core.garbage_collector import tuned_for_serving
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from sqlalchemy import Row, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

BIGGEST = (
    select(*City.__table__.columns)
    .order_by(City.population.desc(), City.id)
    .limit(bindparam("limit"))
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    engine = create_async_engine(
        os.environ["BENCH_DATABASE_URL"],
        pool_size=size,
        max_overflow=0,
        execution_options={"schema_translate_map": {None: os.environ["BENCH_SCHEMA"]}},
    )
    app.state.sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    app.state.read_sessionmaker = async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )
    try:
        with tuned_for_serving():
            yield
    finally:
        await engine.dispose()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.read_sessionmaker() as session:
        yield session


app = FastAPI(lifespan=lifespan)


@app.post("/cities", status_code=status.HTTP_201_CREATED, response_model=CityRead)
async def create_city(
    city_in: CityCreate, session: Annotated[AsyncSession, Depends(get_session)]
) -> City:
    city = City(name=city_in.name, population=city_in.population)
    session.add(city)
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, "Name taken") from error
    return city


@app.get("/cities/biggest", response_model=list[CityRead])
async def biggest_cities(
    session: Annotated[AsyncSession, Depends(get_read_session)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Sequence[Row[Any]]:
    return (await session.execute(BIGGEST, {"limit": limit})).all()
