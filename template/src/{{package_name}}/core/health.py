"""The probes: `/health/live` (the process answers) apart from `/health/ready` (it can serve).

- `GET /health/live`: `200` as long as the process answers, without touching the database, so
  that a database outage never gets every replica restarted at once. The liveness probe.
- `GET /health/ready`, and `GET /health`: `200` after a real `SELECT 1`; `503` with
  `Retry-After` when the database does not answer within `READY_TIMEOUT_SECONDS`, or when the
  process is draining (SIGTERM, `core/draining.py`). The readiness probe: the load balancer
  sends requests to this replica only while it is ready.
"""

import asyncio
from typing import Any, Final

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel
from sqlalchemy import text

from ..dependencies import DatabaseDep
from .draining import Draining
from .errors import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS, DatabaseUnavailableError
from .replica import ReplicaStatus
from .telemetry import cause_of_answer

# Answer 503 rather than keep a load balancer waiting when the database hangs.
READY_TIMEOUT_SECONDS: Final = 3
PING: Final = text("SELECT 1")

NOT_READY: Final[dict[int | str, dict[str, Any]]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: DATABASE_UNAVAILABLE[status.HTTP_503_SERVICE_UNAVAILABLE]
    | {"description": "The database cannot be reached, or the process is stopping: not ready"},
}

router = APIRouter(prefix="/health", tags=["health"])


class HealthStatus(BaseModel):
    status: str
    # With a read replica: its state, reported but never failing readiness (the primary serves
    # every read the replica cannot).
    replica: ReplicaStatus | None = None


OK: Final = HealthStatus(status="ok")


@router.get("/live", response_model_exclude_none=True)
async def live() -> HealthStatus:
    """The process answers: restart it only when this fails."""
    return OK


# Without a replica, the body is `{"status": "ok"}`.
@router.get("/ready", responses=NOT_READY, response_model_exclude_none=True)
@router.get("", responses=NOT_READY, response_model_exclude_none=True)
async def ready(request: Request, database: DatabaseDep) -> HealthStatus:
    """The process can serve: its database answers, and it is not draining."""
    draining: Draining = request.app.state.draining
    if draining.started:
        cause_of_answer(request.scope, "draining: the process is stopping")
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "The service is stopping",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    # The timeout covers taking the connection too: its pre-ping waits on the database as well.
    try:
        async with (
            asyncio.timeout(READY_TIMEOUT_SECONDS),
            database.read_session(primary=True) as session,
        ):
            await session.execute(PING)
    except TimeoutError as error:
        msg = f"no answer to {PING} within {READY_TIMEOUT_SECONDS} s"
        raise DatabaseUnavailableError(msg) from error
    return HealthStatus(status="ok", replica=database.replica_status())
