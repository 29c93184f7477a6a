"""The ceiling of this stack: FastAPI on a bare asyncpg pool, one statement per request.

No ORM, no session, no transaction blocks: what is left of a request's cost is FastAPI, pydantic,
asyncpg and the database. Environment: `BENCH_DSN` (a libpq URL), `BENCH_SCHEMA`,
`BENCH_POOL_SIZE` (connections, opened at start-up).
"""

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
from fastapi import FastAPI, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def qualified_table(schema: str, table: str) -> str:
    """`"schema"."table"`. Identifiers cannot be `$n` parameters: check them, then quote them."""
    for name in (schema, table):
        if not IDENTIFIER.fullmatch(name):
            msg = f"not a plain lower-case identifier: {name!r}"
            raise ValueError(msg)
    return '"' + schema + '"."' + table + '"'


CITIES = qualified_table(os.environ["BENCH_SCHEMA"], "cities")
INSERT_CITY = (
    "INSERT INTO " + CITIES + " (name, population) VALUES ($1, $2) RETURNING id, name, population"
)
BIGGEST_CITIES = (
    "SELECT id, name, population FROM " + CITIES + " ORDER BY population DESC, id LIMIT $1"
)


class CityCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    population: int = Field(ge=0)


class CityRead(BaseModel):
    id: int
    name: str
    population: int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=size, max_size=size)
    app.state.pool = pool
    try:
        yield
    finally:
        await pool.close()


app = FastAPI(lifespan=lifespan)


@app.post("/cities", status_code=status.HTTP_201_CREATED)
async def create_city(city: CityCreate, request: Request) -> CityRead:
    try:
        row = await request.app.state.pool.fetchrow(INSERT_CITY, city.name, city.population)
    except asyncpg.UniqueViolationError as error:
        raise HTTPException(status.HTTP_409_CONFLICT, "Name taken") from error
    return CityRead(**row)


@app.get("/cities/biggest")
async def biggest_cities(
    request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> list[CityRead]:
    rows = await request.app.state.pool.fetch(BIGGEST_CITIES, limit)
    return [CityRead(**row) for row in rows]
