"""Metrics in Prometheus' text format, at `GET /metrics` (prometheus-client).

- `http_requests_total{method, route, status}` and `http_request_duration_seconds{method, route}`
  (a histogram), counted by `core/telemetry.py` for every answer, the body limit's `413`
  included. `route` is the route's template (`/cities/{city_id}`), never the path as sent;
  `<unmatched>` for a path that no route has (or a request refused before routing).
- `db_pool_size`, `db_pool_checked_out`, `db_pool_overflow`: the connection pool, kept up to
  date by the pool's own events; `db_pool_timeouts_total`: requests that found no free
  connection within `DB_POOL_TIMEOUT` (answered `503`).

With several worker processes (`serve --workers N`), `serve` sets `PROMETHEUS_MULTIPROC_DIR` to a
directory of its own: each worker writes its values there, and a scrape, whichever worker
answers it, reads them all (prometheus-client's multiprocess mode): counters and histograms
summed over the workers, the pool's gauges summed over the live ones.
"""

import os
from typing import Any, Final

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED: Final = "<unmatched>"

REQUESTS: Final = Counter(
    "http_requests", "Requests answered, by method, route and status", ["method", "route", "status"]
)
LATENCY: Final = Histogram(
    "http_request_duration_seconds",
    "Time from the request to the end of its answer, by method and route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
POOL_SIZE: Final = Gauge(
    "db_pool_size", "Connections the pools keep open", multiprocess_mode="livesum"
)
POOL_CHECKED_OUT: Final = Gauge(
    "db_pool_checked_out", "Connections in use by a request or a job", multiprocess_mode="livesum"
)
POOL_OVERFLOW: Final = Gauge(
    "db_pool_overflow", "Connections open beyond the pool's size", multiprocess_mode="livesum"
)
POOL_TIMEOUTS: Final = Counter(
    "db_pool_timeouts", "Waits for a free connection that timed out (answered 503)"
)

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """The metrics of this process, or of every worker in multiprocess mode."""
    registry = REGISTRY
    if path := os.environ.get(MULTIPROC_DIR):
        registry = CollectorRegistry()
        # prometheus-client's multiprocess module has no type annotations.
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def instrument_pool(engine: AsyncEngine) -> None:
    """Keep the pool's gauges up to date from its events: a connection taken or returned, opened
    or closed (SQLite's in-memory pool has no size: its gauges stay at 0)."""
    pool: Any = engine.sync_engine.pool
    if not hasattr(pool, "overflow"):
        return
    size = pool.size()
    POOL_SIZE.set(size)
    # Counted rather than read from the pool: its events fire before its own counts change.
    opened = 0

    def connected(*_args: Any) -> None:
        nonlocal opened
        opened += 1
        POOL_OVERFLOW.set(max(0, opened - size))

    def closed(*_args: Any) -> None:
        nonlocal opened
        opened -= 1
        POOL_OVERFLOW.set(max(0, opened - size))

    event.listen(pool, "connect", connected)
    event.listen(pool, "close", closed)
    event.listen(pool, "close_detached", closed)
    event.listen(pool, "checkout", lambda *_args: POOL_CHECKED_OUT.inc())
    event.listen(pool, "checkin", lambda *_args: POOL_CHECKED_OUT.dec())


def forget_this_process() -> None:
    """In multiprocess mode, drop this worker's gauges from the scrapes (it is stopping)."""
    if path := os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(os.getpid(), path)  # type: ignore[no-untyped-call]
