"""`/health`: whether the service can reach its database."""

import asyncio
from typing import Final

from fastapi import APIRouter
from sqlalchemy import text

from ..dependencies import SessionDep
from ..errors import DATABASE_UNAVAILABLE
from ..schemas import HealthStatus

# Answer 503 rather than keep a load balancer waiting when the database hangs.
HEALTH_TIMEOUT_SECONDS: Final = 3
PING: Final = text("SELECT 1")

router = APIRouter(tags=["health"], responses=DATABASE_UNAVAILABLE)


@router.get("/health")
async def health(session: SessionDep) -> HealthStatus:
    async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
        await session.execute(PING)
    return HealthStatus(status="ok")
