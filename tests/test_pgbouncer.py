"""The PgBouncers that the tests and the benchmark start: Debian's package (1.18 on Debian 12) and
one that keeps prepared statements in transaction mode (1.24.1 built from Debian trixie's source
package, or `$PGBOUNCER_PREPARED_BINARY`), in front of the server of `TEST_DATABASE_URL`."""

import asyncio
import os
from collections.abc import Iterator

import asyncpg
import pytest

from bench.database import dsn
from bench.pgbouncer import PgBouncer, pgbouncer
from bench.pgbouncer_build import VERSION

from .conftest import PREPARED_PGBOUNCER_ENV
from .helpers import TEST_DATABASE_URL

pytestmark = pytest.mark.skipif(
    not TEST_DATABASE_URL, reason="needs TEST_DATABASE_URL (PostgreSQL)"
)

# Far fewer server connections than clients: every client's statements meet both of them.
SERVER_POOL_SIZE = 2
CLIENTS = 20
QUERIES_PER_CLIENT = 50
MAX_PREPARED_STATEMENTS = 100
PREPARED_STATEMENT_ERROR = "prepared statement"


@pytest.fixture
def prepared_bouncer(prepared_pgbouncer: str) -> Iterator[PgBouncer]:
    assert TEST_DATABASE_URL
    with pgbouncer(
        prepared_pgbouncer,
        TEST_DATABASE_URL,
        pool_size=SERVER_POOL_SIZE,
        max_prepared_statements=MAX_PREPARED_STATEMENTS,
    ) as running:
        yield running


async def named_statement_load(url: str) -> tuple[int, list[str]]:
    """`CLIENTS` asyncpg connections, statement caches on, at once: each prepares one statement
    by name and runs it, and a cached one, `QUERIES_PER_CLIENT` times in all. The answers that
    were right, and the errors."""
    errors: list[str] = []
    right = 0

    async def client(connection: asyncpg.Connection) -> None:
        nonlocal right
        named = None
        for number in range(QUERIES_PER_CLIENT):
            try:
                if number % 2:
                    # asyncpg's statement cache: every client names this text alike.
                    answer = await connection.fetchval("SELECT $1::int + 1", number)
                else:
                    named = named or await connection.prepare("SELECT $1::int + 1 AS next")
                    answer = await named.fetchval(number)
            except asyncpg.PostgresError as error:
                errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")
                continue
            right += answer == number + 1

    connections = [
        await asyncpg.connect(dsn(url), statement_cache_size=100) for _ in range(CLIENTS)
    ]
    try:
        await asyncio.gather(*(client(connection) for connection in connections))
    finally:
        for connection in connections:
            await connection.close()
    return right, errors


def test_prepared_pgbouncer_says_its_version_on_the_admin_console(
    prepared_bouncer: PgBouncer,
) -> None:
    version = ".".join(map(str, prepared_bouncer.version))
    assert prepared_bouncer.admin("SHOW VERSION") == [{"version": f"PgBouncer {version}"}]
    if not os.environ.get(PREPARED_PGBOUNCER_ENV):
        assert version == VERSION
    config = {row["key"]: row["value"] for row in prepared_bouncer.admin("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config["max_prepared_statements"] == str(MAX_PREPARED_STATEMENTS)


def test_named_prepared_statements_through_prepared_pgbouncer(
    prepared_bouncer: PgBouncer,
) -> None:
    """Transaction pooling with `max_prepared_statements`: asyncpg's named statements, prepared
    on one server connection, run on any; zero errors."""
    right, errors = asyncio.run(named_statement_load(prepared_bouncer.url))

    assert errors == []
    assert right == CLIENTS * QUERIES_PER_CLIENT
    servers = prepared_bouncer.admin("SHOW SERVERS")
    assert 1 <= len(servers) <= SERVER_POOL_SIZE, servers
    assert PREPARED_STATEMENT_ERROR not in prepared_bouncer.log


def test_without_max_prepared_statements_the_same_load_fails(packaged_pgbouncer: str) -> None:
    """The negative control: the system's package (1.18 on Debian 12), none kept (0, on a
    version that has the setting): named statements meet server connections that lack them."""
    assert TEST_DATABASE_URL
    with pgbouncer(
        packaged_pgbouncer,
        TEST_DATABASE_URL,
        pool_size=SERVER_POOL_SIZE,
        max_prepared_statements=0,
    ) as bouncer:
        right, errors = asyncio.run(named_statement_load(bouncer.url))

    assert errors, "every named statement worked through transaction pooling"
    assert all(PREPARED_STATEMENT_ERROR in error for error in errors), set(errors)
    assert right + len(errors) == CLIENTS * QUERIES_PER_CLIENT
