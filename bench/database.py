"""The benchmark's PostgreSQL database: made for the run, seeded, dropped at the end.

Every app gets a schema of its own in it, with the same tables and the same rows, so that one
app's inserts never change what another app reads.
"""

import asyncio
import logging
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import asyncpg

logger = logging.getLogger(__name__)

# Populations up to that of the biggest real cities; with 10,000 rows, ties are rare but possible.
MAX_POPULATION = 40_000_000


# The server the benchmark runs on, unless `--database-url` names another.
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def with_database(url: str, database: str) -> str:
    """`url` naming `database` on the same server, in the same form (libpq or SQLAlchemy)."""
    return urlsplit(url)._replace(path=f"/{database}").geturl()


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a PostgreSQL URL, with asyncpg as its driver (what the reference
    apps read)."""
    return urlsplit(url)._replace(scheme="postgresql+asyncpg").geturl()


def dsn(url: str) -> str:
    """The libpq form of a PostgreSQL URL (what asyncpg reads): a SQLAlchemy URL names its
    driver in the scheme (`postgresql+asyncpg://`)."""
    return urlsplit(url)._replace(scheme="postgresql").geturl()


@contextmanager
def scratch_database(server_url: str, *, prefix: str) -> Iterator[str]:
    """Create an empty database named `<prefix>_<random>` on the server of `server_url`; yield
    its URL, in the form of `server_url`; drop it after (with any session still on it), also
    when the block fails or is interrupted. The benchmark and the template's tests share it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin_url = dsn(with_database(server_url, urlsplit(server_url).path.lstrip("/") or "postgres"))
    asyncio.run(_run_ddl(admin_url, "CREATE DATABASE %I", name))
    logger.info("created the scratch database %s", name)
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(_run_ddl(admin_url, "DROP DATABASE IF EXISTS %I WITH (FORCE)", name))
        logger.info("dropped the scratch database %s", name)


async def _run_ddl(url: str, template: str, identifier: str) -> None:
    """Run a statement about a database, which cannot take the name as a parameter: the server's
    `format()` quotes it (`%I`), so no name is ever pasted into SQL by hand."""
    connection = await asyncpg.connect(url)
    try:
        statement = await connection.fetchval("SELECT format($1, $2::text)", template, identifier)
        await connection.execute(statement)
    finally:
        await connection.close()


def server_version(url: str) -> str:
    async def query() -> str:
        connection = await asyncpg.connect(url)
        try:
            version: str = await connection.fetchval("SHOW server_version")
            return version
        finally:
            await connection.close()

    return asyncio.run(query())


def seed(url: str, schemas: list[str], rows: int) -> None:
    """Copy the same `rows` cities (unique names, random populations) into `cities` of each
    schema; the tables must exist."""
    generator = random.Random(rows)  # the same data in every run with as many rows
    cities = [(f"Seed city {n}", generator.randint(0, MAX_POPULATION)) for n in range(rows)]
    asyncio.run(_copy(url, schemas, cities))


async def _copy(url: str, schemas: list[str], cities: list[tuple[str, int]]) -> None:
    connection = await asyncpg.connect(url)
    try:
        for schema in schemas:
            await connection.copy_records_to_table(
                "cities", records=cities, columns=["name", "population"], schema_name=schema
            )
            # Fresh statistics, as a long-lived table would have, for the planner.
            await connection.execute(
                await connection.fetchval("SELECT format('ANALYZE %I.cities', $1::text)", schema)
            )
    finally:
        await connection.close()
