"""A bad day on a real PostgreSQL, for the served app in both session styles.

Races on a unique name, rollbacks on pooled connections, an exhausted pool, a database outage
(through a fault-injecting proxy), client disconnects and hostile input: the app answers
201/409/4xx/503 as the contract says, never a 500 or a hang, leaks nothing, and recovers.
"""

import asyncio
import collections
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import yaml

from .faultproxy import FaultProxy
from .helpers import PACKAGE, TEST_DATABASE_URL, run, serve, variant_param
from .postgres import dsn, fetch, fetch_async, scratch_database

pytestmark = [
    pytest.mark.render,
    pytest.mark.skipif(not TEST_DATABASE_URL, reason="needs TEST_DATABASE_URL (PostgreSQL)"),
]

RELIABILITY_VARIANTS = ["postgresql-plain-schema", "postgresql-scoped-schema", "postgresql-scoped"]

# A request slower than this counts as a hang (the pool and connect timeouts are far below it).
HANG_SECONDS = 10


class App:
    """A served variant, its scratch database, and what the checks need to know of them."""

    def __init__(self, project: Path, database_url: str, base_url: str) -> None:
        self.project = project
        self.database_url = database_url
        self.client = httpx.AsyncClient(
            base_url=base_url,
            timeout=HANG_SECONDS,
            limits=httpx.Limits(max_connections=600, max_keepalive_connections=600),
        )
        answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
        self.schema: str = answers.get("db_schema") or "public"
        self.scoped = answers["session_style"] == "scoped"

    @property
    def table(self) -> str:
        return f'"{self.schema}"."cities"'

    async def count_cities(self) -> int:
        rows = await fetch_async(self.database_url, f"SELECT count(*) FROM {self.table}")
        count: int = rows[0][0]
        return count

    async def pool(self) -> dict[str, int]:
        stats: dict[str, int] = (await self.client.get("/_probe/pool")).json()
        return stats

    async def settled_pool(self) -> dict[str, int]:
        """The pool once every request has ended (bounded wait)."""
        for _ in range(100):
            stats = await self.pool()
            if stats == {"checked_out": 0, "scoped_sessions": 0}:
                break
            await asyncio.sleep(0.05)
        return stats


@pytest.fixture(params=[variant_param(name) for name in RELIABILITY_VARIANTS])
def project(request: pytest.FixtureRequest, installed_variant: Callable[[str], Path]) -> Path:
    return installed_variant(request.param)


@pytest.fixture
def database_url(project: Path) -> Iterator[str]:
    """A scratch database with the tables made by `init-db`; after the test, no session is left."""
    assert TEST_DATABASE_URL
    with scratch_database(TEST_DATABASE_URL) as url:
        init_db = [str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"]
        run(init_db, project, {"DATABASE_URL": url})
        run(init_db, project, {"DATABASE_URL": url})  # idempotent
        yield url
        assert wait_for_no_sessions(url) == 0, "the engine was not disposed at shutdown"


def wait_for_no_sessions(url: str) -> int:
    """How many sessions the database still has, after waiting up to 5 s for them to end."""
    assert TEST_DATABASE_URL
    database = urlsplit(url).path.lstrip("/")
    for _ in range(100):
        query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
        sessions: int = fetch(TEST_DATABASE_URL, query, database)[0][0]
        if not sessions:
            break
        time.sleep(0.05)
    return sessions


def served(project: Path, database_url: str, tmp_path: Path, **settings: str) -> Any:
    env = {"DATABASE_URL": database_url} | settings
    return serve(project, env, tmp_path / "server.log", probe=True)


async def timed(request: Any) -> tuple[int, float]:
    """A response's status and latency; a client-side timeout counts as a hang (status 0)."""
    start = time.monotonic()
    try:
        status = (await request).status_code
    except httpx.TimeoutException:
        status = 0
    return status, time.monotonic() - start


def assert_no_server_errors(log: Path) -> None:
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


def test_duplicate_race_and_schema_after_rollbacks(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """500 concurrent creations of one name: one 201, 499 409; then every pooled connection,
    rolled back many times, still finds the table in its schema; nothing lands in `public`."""

    async def scenario(app: App) -> None:
        body = {"name": "Duplicate", "population": 1}
        responses = await asyncio.gather(
            *(app.client.post("/cities", json=body) for _ in range(500))
        )
        assert collections.Counter(r.status_code for r in responses) == {201: 1, 409: 499}
        assert await app.count_cities() == 1

        reads = await asyncio.gather(*(app.client.get("/cities/biggest") for _ in range(100)))
        assert {r.status_code for r in reads} == {200}
        assert all(r.json()[0]["name"] == "Duplicate" for r in reads)
        creates = await asyncio.gather(
            *(
                app.client.post("/cities", json={"name": f"C{i}", "population": i})
                for i in range(50)
            )
        )
        assert {r.status_code for r in creates} == {201}
        assert await app.settled_pool() == {"checked_out": 0, "scoped_sessions": 0}

    with served(project, database_url, tmp_path) as base_url:
        app = App(project, database_url, base_url)
        asyncio.run(_with_client(app, scenario))

    relations = fetch(
        database_url,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
    )
    assert {schema for schema, _ in relations} == {app.schema}
    assert "cities" in {name for _, name in relations}
    assert_no_server_errors(tmp_path / "server.log")


async def _with_client(app: App, scenario: Callable[[App], Any]) -> None:
    async with app.client:
        await scenario(app)


async def _lock_table(app: App) -> asyncpg.Connection:
    """Hold an exclusive lock on the cities table, so that requests wait holding a connection."""
    connection = await asyncpg.connect(dsn(app.database_url))
    await connection.execute("BEGIN")
    await connection.execute(f"LOCK TABLE {app.table} IN ACCESS EXCLUSIVE MODE")
    return connection


def test_exhausted_pool_answers_503_then_recovers(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """Pool of 2, no overflow, 1 s timeout: with both connections held, more requests get 503
    with Retry-After after about the pool timeout; once released, everything answers again."""
    latencies: list[float] = []

    async def scenario(app: App) -> None:
        lock = await _lock_table(app)
        held = [asyncio.create_task(app.client.get("/cities/biggest")) for _ in range(2)]
        for _ in range(100):  # both held requests have their connection
            if (await app.pool())["checked_out"] == 2:
                break
            await asyncio.sleep(0.02)
        extra = await asyncio.gather(
            *(timed(app.client.get(path)) for path in ["/cities/biggest", "/health"] * 3)
        )
        extra_responses = await asyncio.gather(
            app.client.post("/cities", json={"name": "Waiting", "population": 1})
        )
        await lock.execute("ROLLBACK")
        await lock.close()

        assert [status for status, _ in extra] == [503] * 6
        assert extra_responses[0].status_code == 503
        assert extra_responses[0].headers["retry-after"].isdigit()
        latencies.extend(latency for _, latency in extra)
        assert [(await task).status_code for task in held] == [200, 200]
        after = await asyncio.gather(*(app.client.get("/cities/biggest") for _ in range(20)))
        assert {r.status_code for r in after} == {200}
        assert await app.settled_pool() == {"checked_out": 0, "scoped_sessions": 0}

    pool = {"DB_POOL_SIZE": "2", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT": "1"}
    with served(project, database_url, tmp_path, **pool) as base_url:
        asyncio.run(_with_client(App(project, database_url, base_url), scenario))

    assert max(latencies) < HANG_SECONDS
    print(f"503 latency with a 1 s pool timeout: {min(latencies):.2f}..{max(latencies):.2f} s")  # noqa: T201
    assert_no_server_errors(tmp_path / "server.log")


@pytest.mark.parametrize("pre_ping", ["true", "false"])
def test_outage_answers_503_quickly_then_recovers(
    project: Path, database_url: str, tmp_path: Path, pre_ping: str
) -> None:
    """Cut every connection mid-load and refuse new ones for 2 s, then restore: 503s meanwhile
    (health too), quickly, never a 500 or a hang; then the app recovers without a restart."""
    assert TEST_DATABASE_URL
    target_port = urlsplit(TEST_DATABASE_URL).port or 5432
    outcome: dict[str, Any] = {}

    async def load(app: App, until: float, results: list[tuple[float, int, float]]) -> None:
        while (now := time.monotonic()) < until:
            status, latency = await timed(app.client.get("/cities/biggest"))
            results.append((now, status, latency))

    async def scenario(app: App, proxy: FaultProxy) -> None:
        warm = await asyncio.gather(*(app.client.get("/cities/biggest") for _ in range(20)))
        assert {r.status_code for r in warm} == {200}
        results: list[tuple[float, int, float]] = []
        start = time.monotonic()
        workers = [asyncio.create_task(load(app, start + 3.5, results)) for _ in range(8)]
        await asyncio.sleep(0.5)
        proxy.cut()
        cut_at = time.monotonic()
        health = await timed(app.client.get("/health"))
        await asyncio.sleep(2)
        proxy.restore()
        restored_at = time.monotonic()
        await asyncio.gather(*workers)

        assert {status for _, status, _ in results} <= {200, 503}, "only 200 or 503, never a hang"
        during = [r for r in results if cut_at + 0.1 < r[0] and r[0] + r[2] < restored_at]
        assert during
        assert {status for _, status, _ in during} == {503}
        assert health[0] == 503
        outcome["outage_latency"] = max([health[1]] + [latency for _, _, latency in during])

        # The outage touched every pooled connection; now cut again while the pool is idle,
        # so that it holds connections that died unnoticed.
        proxy.cut()
        proxy.restore()
        after = await asyncio.gather(*(timed(app.client.get("/cities/biggest")) for _ in range(20)))
        outcome["after_restore"] = collections.Counter(status for status, _ in after)
        again = await asyncio.gather(*(app.client.get("/cities/biggest") for _ in range(20)))
        assert {r.status_code for r in again} == {200}, "recovered without a restart"
        assert await app.settled_pool() == {"checked_out": 0, "scoped_sessions": 0}

    with FaultProxy(target_port) as proxy:
        proxied_url = urlsplit(database_url)._replace(netloc=f"postgres@127.0.0.1:{proxy.port}")
        env = {"DB_POOL_PRE_PING": pre_ping, "DB_CONNECT_TIMEOUT": "2"}
        with served(project, proxied_url.geturl(), tmp_path, **env) as base_url:
            app = App(project, database_url, base_url)
            asyncio.run(_with_client(app, lambda app: scenario(app, proxy)))

    assert outcome["outage_latency"] < HANG_SECONDS
    if pre_ping == "true":
        assert outcome["after_restore"] == {200: 20}, "pre-ping replaces dead connections"
    else:
        assert set(outcome["after_restore"]) <= {200, 503}
    print(f"pre_ping={pre_ping}: outage 503 latency <= {outcome['outage_latency']:.2f} s;")  # noqa: T201
    print(f"  right after a silent cut: {dict(outcome['after_restore'])}")  # noqa: T201
    assert_no_server_errors(tmp_path / "server.log")


def test_no_leaks_after_mixed_load_and_disconnects(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """Successes, 409s, 4xx on hostile input, and clients that hang up mid-request: afterwards
    no connection is checked out, none is idle in a transaction, no scoped session is left, and
    only the valid cities were written."""
    hostile: list[tuple[dict[str, Any] | bytes, str]] = [
        ({"name": "x" * 101, "population": 1}, "application/json"),
        ({"name": "", "population": 1}, "application/json"),
        ({"name": "a\x00b", "population": 1}, "application/json"),
        ({"name": "Robert'); DROP TABLE cities;--", "population": -1}, "application/json"),
        ({"name": "Huge", "population": 2**63}, "application/json"),
        ({"name": "Huge", "population": 1e300}, "application/json"),
        (b'{"name": "\\ud800", "population": 1}', "application/json"),
        (b'{"name": "Lyon", "population":', "application/json"),
        (b'{"name": "Lyon", "population": 1}', "text/plain"),
        (b"\xff\xfe\x00", "application/json"),
    ]

    async def post(app: App, body: dict[str, Any] | bytes, content_type: str) -> int:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": content_type}
        return (await app.client.post("/cities", content=content, headers=headers)).status_code

    async def scenario(app: App) -> None:
        # Clients that give up while their request waits for a locked table.
        lock = await _lock_table(app)
        impatient = httpx.AsyncClient(base_url=str(app.client.base_url), timeout=0.3)
        async with impatient:
            hung_up = await asyncio.gather(
                *(
                    timed(impatient.post("/cities", json={"name": f"Gone {i}", "population": i}))
                    for i in range(10)
                ),
                *(timed(impatient.get("/cities/biggest")) for _ in range(10)),
            )
        assert {status for status, _ in hung_up} == {0}
        await lock.execute("ROLLBACK")
        await lock.close()

        valid = [{"name": f"Valid {i}", "population": i} for i in range(40)]
        statuses = await asyncio.gather(
            *(post(app, body, "application/json") for body in valid),
            *(post(app, body, "application/json") for body in valid[:20]),
            *(post(app, body, content_type) for body, content_type in hostile),
        )
        assert statuses[:40] == [201] * 40
        assert statuses[40:60] == [409] * 20
        assert all(400 <= status < 500 for status in statuses[60:]), statuses[60:]
        assert await app.settled_pool() == {"checked_out": 0, "scoped_sessions": 0}
        names = await fetch_async(app.database_url, f"SELECT name FROM {app.table}")
        assert {name for (name,) in names} == {body["name"] for body in valid} | {
            f"Gone {i}" for i in range(10)
        }
        in_transaction = await fetch_async(
            app.database_url,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        assert in_transaction[0][0] == 0

    with served(project, database_url, tmp_path) as base_url:
        asyncio.run(_with_client(App(project, database_url, base_url), scenario))
    assert_no_server_errors(tmp_path / "server.log")
