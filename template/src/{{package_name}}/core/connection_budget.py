"""The connection budget: what the app's worker processes may hold at most, against what the
PostgreSQL server allows (read once, when `serve` starts)."""

from dataclasses import dataclass
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import Settings

# `reserved_connections` (PostgreSQL 16 and later) is missing on older servers: NULL, then 0.
LIMITS: Final = text(
    "SELECT current_setting('max_connections')::int,"
    " current_setting('superuser_reserved_connections')::int"
    " + coalesce(current_setting('reserved_connections', true)::int, 0)"
)


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int
    reserved: int  # for superusers (and roles with pg_use_reserved_connections, PostgreSQL 16+)

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved


async def server_limits(engine: AsyncEngine) -> ServerLimits:
    async with engine.connect() as connection:
        max_connections, reserved = (await connection.execute(LIMITS)).one()
    return ServerLimits(max_connections, reserved)


def over_budget(settings: Settings, workers: int, limits: ServerLimits) -> str | None:
    """Why `workers` processes could hold more connections than the server allows, if so."""
    needed = workers * (settings.db_pool_size + settings.db_max_overflow)
    if needed <= limits.available:
        return None
    return (
        f"{workers} workers x (DB_POOL_SIZE {settings.db_pool_size}"
        f" + DB_MAX_OVERFLOW {settings.db_max_overflow}) = {needed} connections, but the server"
        f" allows {limits.available} (max_connections {limits.max_connections}"
        f" - {limits.reserved} reserved): lower --workers (WEB_CONCURRENCY), DB_POOL_SIZE or"
        " DB_MAX_OVERFLOW, raise max_connections, or put PgBouncer in front (DB_POOLER);"
        " --ignore-connection-budget starts anyway"
    )
