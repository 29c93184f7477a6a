"""`/health`: whether the service can reach its database."""

import asyncio
from typing import Final

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from ..dependencies import DatabaseDep
from .errors import DATABASE_UNAVAILABLE, DatabaseUnavailableError
from .replica import ReplicaStatus

# Answer 503 rather than keep a load balancer waiting when the database hangs.
HEALTH_TIMEOUT_SECONDS: Final = 3
PING: Final = text("SELECT 1")

router = APIRouter(tags=["health"], responses=DATABASE_UNAVAILABLE)


class HealthStatus(BaseModel):
    status: str
    # With a read replica: its state, reported but never failing readiness (the primary serves
    # every read the replica cannot).
    replica: ReplicaStatus | None = None


@router.get("/health", response_model_exclude_none=True)
async def health(database: DatabaseDep) -> HealthStatus:
    # The timeout covers taking the connection too: its pre-ping waits on the database as well.
    try:
        async with (
            asyncio.timeout(HEALTH_TIMEOUT_SECONDS),
            database.read_session(primary=True) as session,
        ):
            await session.execute(PING)
    except TimeoutError as error:
        msg = f"no answer to {PING} within {HEALTH_TIMEOUT_SECONDS} s"
        raise DatabaseUnavailableError(msg) from error
    return HealthStatus(status="ok", replica=database.replica_status())
