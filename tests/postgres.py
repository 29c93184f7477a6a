"""A PostgreSQL database of a test's own, on the server that `TEST_DATABASE_URL` names."""

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg


def with_database(url: str, database: str) -> str:
    """`url` (a SQLAlchemy URL) naming another database on the same server."""
    return urlsplit(url)._replace(path=f"/{database}").geturl()


def dsn(url: str) -> str:
    """The libpq connection string of a SQLAlchemy URL, for asyncpg."""
    return urlsplit(url)._replace(scheme="postgresql").geturl()


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


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """Create an empty database, yield its SQLAlchemy URL, and drop it (and its sessions) after."""
    name = f"tpl_{uuid.uuid4().hex[:12]}"
    fetch(url, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        fetch(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
