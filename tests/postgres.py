"""Queries on the PostgreSQL server that `TEST_DATABASE_URL` names. A database of a test's own
comes from `bench.database.scratch_database`."""

import asyncio
from typing import Any

import asyncpg

from bench.database import dsn


async def fetch_async(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """Run one query on the database of `url` and return its rows."""
    connection = await asyncpg.connect(dsn(url))
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


def fetch(url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """`fetch_async`, from synchronous code."""
    return asyncio.run(fetch_async(url, query, *args))
