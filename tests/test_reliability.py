"""A bad day on a real PostgreSQL, for the served app in both session styles.

Races on a unique name, rollbacks on pooled connections, an exhausted pool, a database outage
(through a fault-injecting proxy), clients that hang up, and hostile input: the app answers
201/409/4xx/503 as the contract says, never a 500 or a hang, leaks nothing, and recovers.
Each test serves the app under uvicorn with `GET /_probe/pool` added (see probe_server.py).
"""

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from bench.database import dsn

from .faultproxy import FaultProxy
from .helpers import TEST_DATABASE_URL, initialized_database, serve, variant_param
from .loadclient import LoadClient
from .postgres import fetch, fetch_async

pytestmark = [
    pytest.mark.render,
    pytest.mark.skipif(not TEST_DATABASE_URL, reason="needs TEST_DATABASE_URL (PostgreSQL)"),
]

# Both session styles with a schema; the races and leaks also without one.
BOTH_STYLES = [
    variant_param(name) for name in ["postgresql-plain-schema", "postgresql-scoped-schema"]
]
ALL_VARIANTS = [*BOTH_STYLES, variant_param("postgresql-scoped")]

# A request slower than this counts as a hang (the pool and connect timeouts are far below it).
HANG_SECONDS = 10

SETTLED = {"checked_out": 0, "scoped_sessions": 0}


class App:
    """A served variant and its scratch database, seen from the outside."""

    def __init__(self, project: Path, database_url: str, client: LoadClient) -> None:
        self.database_url = database_url
        self.client = client
        self.schema = answered_schema(project)
        self.table = f'"{self.schema}"."cities"'

    async def city_names(self) -> set[str]:
        rows = await fetch_async(self.database_url, f"SELECT name FROM {self.table}")
        return {name for (name,) in rows}

    async def pool(self) -> dict[str, int]:
        stats: dict[str, int] = (await self.client.get("/_probe/pool")).json()
        return stats

    async def settled_pool(self) -> dict[str, int]:
        """The pool's state once every request has ended (waits up to 5 s)."""
        for _ in range(100):
            if (stats := await self.pool()) == SETTLED:
                break
            await asyncio.sleep(0.05)
        return stats

    async def lock_table(self) -> asyncpg.Connection:
        """Hold an exclusive lock on the table: requests wait for it, holding a connection."""
        connection = await asyncpg.connect(dsn(self.database_url))
        await connection.execute("BEGIN")
        await connection.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
        return connection


def answered_schema(project: Path) -> str:
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    schema: str = answers.get("db_schema") or "public"
    return schema


@pytest.fixture
def database_url(project: Path) -> Iterator[str]:
    """A scratch database, set up by `init-db`; after the test, no session may be left on it."""
    with initialized_database(project, prefix="tpl") as url:
        yield url
        assert sessions_left(url) == 0, "the engine was not disposed at shutdown"


def sessions_left(url: str) -> int:
    """How many sessions the database has, once those ending have ended (waits up to 5 s)."""
    assert TEST_DATABASE_URL
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
    for _ in range(100):
        if not (sessions := fetch(TEST_DATABASE_URL, query, urlsplit(url).path[1:])[0][0]):
            break
        time.sleep(0.05)
    count: int = sessions
    return count


def served(
    project: Path, database_url: str, log: Path, **settings: str
) -> AbstractContextManager[str]:
    return serve(project, {"DATABASE_URL": database_url} | settings, log, probe=True)


def drive(
    project: Path, database_url: str, base_url: str, scenario: Callable[[App], Awaitable[None]]
) -> None:
    """Run an async scenario against the served app."""

    async def main() -> None:
        async with LoadClient(base_url, timeout=HANG_SECONDS) as client:
            await scenario(App(project, database_url, client))

    asyncio.run(main())


def assert_no_tracebacks(log: Path) -> None:
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.parametrize("project", ALL_VARIANTS, indirect=True)
def test_duplicate_race_and_schema_after_rollbacks(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """500 concurrent creations of one name: one 201 and 499 409s, one row. Then every pooled
    connection, rolled back many times, still finds the table in its schema, and nothing was
    ever created outside the schema."""
    log = tmp_path / "server.log"

    async def scenario(app: App) -> None:
        same = {"name": "Duplicate", "population": 1}
        race = await app.client.gather("POST", "/cities", 500, json=same)
        assert collections.Counter(r.status for r in race) == {201: 1, 409: 499}
        assert await app.city_names() == {"Duplicate"}

        reads = await app.client.gather("GET", "/cities/biggest", 100)
        assert {r.status for r in reads} == {200}
        assert {r.json()[0]["name"] for r in reads} == {"Duplicate"}
        new = [{"name": f"City {i}", "population": i} for i in range(50)]
        creates = await asyncio.gather(*(app.client.post("/cities", json=body) for body in new))
        assert {r.status for r in creates} == {201}
        assert await app.settled_pool() == SETTLED

    with served(project, database_url, log) as base_url:
        drive(project, database_url, base_url, scenario)

    schema = answered_schema(project)
    relations = fetch(
        database_url,
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')",
    )
    assert {nspname for nspname, _ in relations} == {schema}
    assert "cities" in {relname for _, relname in relations}
    assert fetch(database_url, f'SELECT count(*) FROM "{schema}".cities')[0][0] == 51
    assert_no_tracebacks(log)


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_exhausted_pool_answers_503_then_recovers(
    project: Path, database_url: str, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """Pool of 2, no overflow, 1 s timeout: with both connections held, other requests get 503
    with Retry-After after about the pool timeout; once released, everything answers again."""
    log = tmp_path / "server.log"
    latencies: list[float] = []

    async def scenario(app: App) -> None:
        lock = await app.lock_table()
        held = [asyncio.create_task(app.client.get("/cities/biggest")) for _ in range(2)]
        for _ in range(100):
            if (await app.pool())["checked_out"] == 2:
                break
            await asyncio.sleep(0.02)
        waiting = await asyncio.gather(
            *(app.client.get(path) for path in ["/cities/biggest", "/health"] * 3),
            app.client.post("/cities", json={"name": "Waiting", "population": 1}),
        )
        await lock.execute("ROLLBACK")
        await lock.close()

        assert [r.status for r in waiting] == [503] * 7
        assert all(int(r.headers["Retry-After"]) > 0 for r in waiting)
        latencies.extend(r.latency for r in waiting)
        assert [(await task).status for task in held] == [200, 200]
        after = await app.client.gather("GET", "/cities/biggest", 20)
        assert {r.status for r in after} == {200}
        assert await app.settled_pool() == SETTLED

    pool = {"DB_POOL_SIZE": "2", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT": "1"}
    with served(project, database_url, log, **pool) as base_url:
        drive(project, database_url, base_url, scenario)

    assert max(latencies) < HANG_SECONDS
    record_property("503_latency_s", f"{min(latencies):.2f}..{max(latencies):.2f}")
    assert_no_tracebacks(log)


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
@pytest.mark.parametrize("pre_ping", ["true", "false"])
# Now and then (about one run in five) a socket that the fault proxy accepted around a cut is
# still open when the proxy's loop closes, though every accepted transport is aborted then: a
# race in the test's proxy, not found yet, and not the app's (its connections are checked by
# `sessions_left`). Only that warning is let through.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <(socket\.socket|function _SelectorTransport\.__del__)"
    ":pytest.PytestUnraisableExceptionWarning"
)
def test_outage_answers_503_quickly_then_recovers(
    project: Path,
    database_url: str,
    tmp_path: Path,
    pre_ping: str,
    record_property: Callable[[str, Any], None],
) -> None:
    """Cut every connection mid-load and refuse new ones for 1.5 s, then restore: meanwhile 503s
    (health too), quickly, never a 500 or a hang; afterwards the app recovers by itself.

    With pre-ping, even connections that died unnoticed in the pool cost no request; without
    it, a request that meets one gets a 503 (and the pool is renewed)."""
    assert TEST_DATABASE_URL
    log = tmp_path / "server.log"
    outcome: dict[str, Any] = {}

    async def scenario(app: App, proxy: FaultProxy) -> None:
        warm = await app.client.gather("GET", "/cities/biggest", 20)
        assert {r.status for r in warm} == {200}

        async def load(until: float) -> list[tuple[float, int, float]]:
            results = []
            while (start := time.monotonic()) < until:
                response = await app.client.get("/cities/biggest")
                results.append((start, response.status, response.latency))
            return results

        loaders = [asyncio.create_task(load(time.monotonic() + 2.5)) for _ in range(8)]
        await asyncio.sleep(0.3)
        proxy.cut()
        cut_at = time.monotonic()
        health = await app.client.get("/health")
        await asyncio.sleep(1.5)
        proxy.restore()
        restored_at = time.monotonic()
        results = [result for loader in loaders for result in await loader]

        assert {status for _, status, _ in results} <= {200, 503}, "only 200 or 503, no hang"
        during = [r for r in results if r[0] > cut_at + 0.1 and r[0] + r[2] < restored_at]
        assert {status for _, status, _ in during} == {503}, (cut_at, restored_at, results)
        assert health.status == 503, health
        outcome["503 latency"] = max([health.latency] + [latency for *_, latency in during])

        # Now the pool is full of fresh connections: kill them while they sit idle.
        proxy.cut()
        proxy.restore()
        after = await app.client.gather("GET", "/cities/biggest", 20)
        outcome["after a silent cut"] = collections.Counter(r.status for r in after)
        again = await app.client.gather("GET", "/cities/biggest", 20)
        assert {r.status for r in again} == {200}, f"not recovered without a restart: {again}"
        assert await app.settled_pool() == SETTLED

    target_port = urlsplit(TEST_DATABASE_URL).port or 5432
    with FaultProxy(target_port) as proxy:
        proxied = urlsplit(database_url)._replace(netloc=f"postgres@127.0.0.1:{proxy.port}")
        settings = {"DB_POOL_PRE_PING": pre_ping, "DB_CONNECT_TIMEOUT": "2"}
        with served(project, proxied.geturl(), log, **settings) as base_url:
            drive(project, database_url, base_url, lambda app: scenario(app, proxy))

    assert outcome["503 latency"] < HANG_SECONDS
    assert set(outcome["after a silent cut"]) <= {200, 503}
    if pre_ping == "true":
        assert outcome["after a silent cut"] == {200: 20}, "pre-ping replaces dead connections"
    record_property("outage", {key: str(value) for key, value in outcome.items()})
    assert_no_tracebacks(log)


HOSTILE_BODIES: list[tuple[bytes | dict[str, Any], str]] = [
    ({"name": "x" * 101, "population": 1}, "application/json"),
    ({"name": " ", "population": 1}, "application/json"),
    ({"name": "a\x00b", "population": 1}, "application/json"),
    ({"name": "Robert'); DROP TABLE cities;--", "population": -1}, "application/json"),
    ({"name": "Huge", "population": 2**63}, "application/json"),
    ({"name": "Huge", "population": 1e300}, "application/json"),
    ({"name": ["Lyon"], "population": 1}, "application/json"),
    (b'{"name": "\\ud800", "population": 1}', "application/json"),
    (b'{"name": "Lyon", "population":', "application/json"),
    (b"\xff\xfe\x00", "application/json"),
    (b'{"name": "Lyon", "population": 1}', "text/plain"),
    (b"name=Lyon&population=1", "application/x-www-form-urlencoded"),
]


@pytest.mark.parametrize("project", ALL_VARIANTS, indirect=True)
def test_no_leaks_after_mixed_load_and_hang_ups(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """Successes, 409s, 4xx on hostile input, and clients that hang up mid-request: afterwards
    no connection is checked out or idle in a transaction, no scoped session is left, and only
    the valid cities were written."""
    log = tmp_path / "server.log"
    valid = [{"name": f"Valid {i}", "population": i} for i in range(40)]
    valid.append({"name": "Robert'); DROP TABLE cities;--", "population": 10**10})
    valid.append({"name": "東京 🗼 São Paulo", "population": 0})

    async def post(app: App, body: bytes | dict[str, Any], content_type: str) -> int:
        if isinstance(body, dict):
            return (await app.client.post("/cities", json=body)).status
        headers = {"content-type": content_type}
        return (await app.client.post("/cities", content=body, headers=headers)).status

    async def scenario(app: App) -> None:
        lock = await app.lock_table()
        hung_up = await asyncio.gather(
            *(
                app.client.post("/cities", json={"name": f"Gone {i}", "population": i}, timeout=0.3)
                for i in range(10)
            ),
            *(app.client.get("/cities/biggest", timeout=0.3) for _ in range(10)),
        )
        assert {r.status for r in hung_up} == {0}
        await lock.execute("ROLLBACK")
        await lock.close()

        statuses = await asyncio.gather(
            *(post(app, body, "application/json") for body in valid),
            *(post(app, body, "application/json") for body in valid[:20]),
            *(post(app, body, content_type) for body, content_type in HOSTILE_BODIES),
        )
        # Each of the 20 names sent twice at once: one request wins (201), the other gets 409.
        creations = collections.Counter(statuses[: len(valid) + 20])
        assert creations == {201: len(valid), 409: 20}
        assert {status // 100 for status in statuses[len(valid) + 20 :]} == {4}
        assert await app.settled_pool() == SETTLED
        gone = {f"Gone {i}" for i in range(10)}  # their requests ran to the end all the same
        assert await app.city_names() == {body["name"] for body in valid} | gone
        idle_in_transaction = await fetch_async(
            app.database_url,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        assert idle_in_transaction[0][0] == 0

    with served(project, database_url, log) as base_url:
        drive(project, database_url, base_url, scenario)
    assert_no_tracebacks(log)
