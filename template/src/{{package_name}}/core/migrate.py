"""The database's schema, brought to the latest migration (`init-db`).

A database whose tables an earlier release of the template made with `create_all` (the tables
there, no `alembic_version`) is adopted: stamped at the first revision, which creates exactly
those tables, then upgraded; unless its tables differ from what the migrations make, which is
an error that leaves everything as it was.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.schema import CreateSchema

from ..models import Base

MIGRATIONS: Final = Path(__file__).parent.parent / "migrations"
# The first revision: it creates the tables that releases before migrations made.
BASELINE: Final = "2d5c0f6a9b31"
VERSION_TABLE: Final = "alembic_version"


T = TypeVar("T")


class MigrationError(Exception):
    """A migration that cannot be applied as it is; nothing was changed."""


async def in_one_transaction(engine: AsyncEngine, migration: Callable[[Connection], T]) -> T:
    """Run `migration` (`upgrade`, `recreate`, Alembic's own) on a connection of `engine`, in
    one transaction: on error, the database is left as it was.

    On SQLite its connection has foreign keys off, as Alembic's batch documentation advises:
    rebuilding a table (a batch operation) drops the old one, which would otherwise delete the
    rows that refer to it (`ON DELETE CASCADE`). Every foreign key is checked before the commit.
    """
    async with engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            async with connection.begin():
                return await connection.run_sync(migration)
        # Outside a transaction, where the pragma applies; the pool gets the connection back
        # with foreign keys on.
        await _outside_a_transaction(connection, "PRAGMA foreign_keys = OFF")
        try:
            async with connection.begin():
                done = await connection.run_sync(migration)
                await connection.run_sync(check_foreign_keys)
        finally:
            await _outside_a_transaction(connection, "PRAGMA foreign_keys = ON")
        return done


async def _outside_a_transaction(connection: AsyncConnection, statement: str) -> None:
    """Run `statement` through the driver itself: SQLAlchemy would begin a transaction."""
    driver: Any = (await connection.get_raw_connection()).driver_connection
    await driver.execute(statement)


def check_foreign_keys(connection: Connection) -> None:
    """Raise `MigrationError` if a row of SQLite's tables refers to a row that is not there."""
    if broken := connection.exec_driver_sql("PRAGMA foreign_key_check").all():
        found = ", ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _ in broken)
        msg = f"rows would refer to rows that are not there ({found}); nothing was changed"
        raise MigrationError(msg)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the package's migrations, wherever the package is installed;
    with `connection`, its commands run on that connection, in its transaction."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def table_schema(connection: Connection) -> str | None:
    """The schema that the connection's engine maps the tables to (`DB_SCHEMA`), if any."""
    translate_map = connection.get_execution_options().get("schema_translate_map") or {}
    schema: str | None = translate_map.get(None)
    return schema


def enter_schema(connection: Connection) -> None:
    """Create the app's schema if it is missing, and make it the default one until the end of
    the connection's transaction.

    The migrations' statements are mapped to the schema by the engine, as the app's are; but
    Alembic reflects tables (to find its version table, or for autogenerate) by schema name,
    which the mapping does not reach. `SET LOCAL` ends with the transaction: no rollback can
    leave it behind, and no other user of the pooled connection sees it.
    """
    if schema := table_schema(connection):
        connection.execute(CreateSchema(schema, if_not_exists=True))
        connection.execute(select(func.set_config("search_path", schema, True)))


def head() -> str | None:
    """The latest revision."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    enter_schema(connection)
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection) -> str:
    """Bring the database to the latest revision, adopting tables that an earlier release made;
    say what was done. Run it in a transaction: on error, nothing is changed."""
    config = alembic_config(connection)
    if _made_by_create_all(connection):
        command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        if differences := differences_from_models(connection):
            msg = (
                "its tables, made by an earlier release, differ from what the migrations make: "
                f"{'; '.join(map(str, differences))}; nothing was changed"
            )
            raise MigrationError(msg)
        return f"adopted the tables of an earlier release, now at revision {head()}"
    before = current_revision(connection)
    command.upgrade(config, "head")
    after = current_revision(connection)
    if before == after:
        return f"up to date, at revision {after}"
    return f"upgraded from revision {before or 'none'} to {after}"


def recreate(connection: Connection) -> str:
    """Downgrade the database to no tables, losing their data, then upgrade it again."""
    config = alembic_config(connection)
    if _made_by_create_all(connection):
        command.stamp(config, BASELINE)
    command.downgrade(config, "base")
    command.upgrade(config, "head")
    return f"recreated empty, at revision {head()}"


def _made_by_create_all(connection: Connection) -> bool:
    """Whether the database has tables of the app but no version table: made by `create_all`."""
    inspector = inspect(connection)
    schema = table_schema(connection)
    if inspector.has_table(VERSION_TABLE, schema=schema):
        return False
    return any(inspector.has_table(table, schema=schema) for table in Base.metadata.tables)


def differences_from_models(connection: Connection) -> list[Any]:
    """What autogenerate would change in the app's tables (other tables are left out): nothing,
    when the migrations make what the models declare."""
    enter_schema(connection)
    context = MigrationContext.configure(
        connection,
        opts={
            "compare_type": True,
            "include_name": lambda name, type_, _parent: (
                type_ != "table" or name in Base.metadata.tables
            ),
        },
    )
    return list(compare_metadata(context, Base.metadata))
