"""Scale-out: the rendered `serve` with several workers, its connection budget, and PgBouncer in
transaction pooling mode, a real one, between the app and PostgreSQL."""

import asyncio
import collections
import contextlib
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bench.database import dsn, scratch_database, with_database
from bench.pgbouncer import PgBouncer, pgbouncer
from bench.projects import UV

from .helpers import (
    PACKAGE,
    TEST_DATABASE_URL,
    VARIANTS,
    initialized_database,
    run,
    serving,
    variant_param,
)
from .loadclient import LoadClient, Response
from .test_reliability import sessions_left

pytestmark = [
    pytest.mark.render,
    pytest.mark.skipif(not TEST_DATABASE_URL, reason="needs TEST_DATABASE_URL (PostgreSQL)"),
]

BOTH_STYLES = [
    variant_param(name) for name in ["postgresql-plain-schema", "postgresql-scoped-schema"]
]
# The one skip of the rendered suite through PgBouncer: a test of the server closing the app's
# connection, which PgBouncer's server connections are not.
THROUGH_PGBOUNCER_ONLY_SKIP = "Direct connections only: through PgBouncer"
PREPARED_STATEMENT_ERROR = "prepared statement"


# PgBouncer's server connections: far fewer than the clients, so that they are shared.
SERVER_POOL_SIZE = 3
# Each worker's pool (the rendered defaults), and the load client's requests in flight: no more
# than one worker's pool, wherever the kernel sends them, so that no request waits for a
# connection, and a slow machine makes the test slower, never a 503 (`DB_POOL_TIMEOUT`).
POOL = {"DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "10", "DB_POOL_TIMEOUT": "5"}
IN_FLIGHT = 15


@dataclass(frozen=True)
class Bouncing:
    """A PgBouncer (the fixture of its binary, its `max_prepared_statements` line) and the
    app's `DB_POOLER` through it."""

    binary: str
    pooler: str
    max_prepared_statements: int | None = None


# Debian 12's 1.18 keeps no prepared statement: `pgbouncer`. 1.24.1, built, keeps them.
PGBOUNCER_118 = Bouncing("packaged_pgbouncer", "pgbouncer")
PGBOUNCER_124 = Bouncing("prepared_pgbouncer", "pgbouncer-prepared", max_prepared_statements=100)
BOTH_PGBOUNCERS = [
    pytest.param(PGBOUNCER_118, id="1.18-pgbouncer"),
    pytest.param(PGBOUNCER_124, id="1.24-pgbouncer-prepared"),
]
# The negative controls: the app keeps statements that the PgBouncer does not.
WRONG_POOLERS = [
    pytest.param(Bouncing("packaged_pgbouncer", "none"), id="1.18-none"),
    pytest.param(
        Bouncing("prepared_pgbouncer", "pgbouncer-prepared", max_prepared_statements=0),
        id="1.24-max_prepared_statements-0-pgbouncer-prepared",
    ),
]


@pytest.fixture
def bouncer(request: pytest.FixtureRequest, bouncing: Bouncing) -> Iterator[PgBouncer]:
    """The PgBouncer that the test is parametrized with (`bouncing`); in CI, where `.ci/run`
    installs and builds them, never skipped."""
    assert TEST_DATABASE_URL
    binary = request.getfixturevalue(bouncing.binary)
    with pgbouncer(
        binary,
        TEST_DATABASE_URL,
        pool_size=SERVER_POOL_SIZE,
        max_prepared_statements=bouncing.max_prepared_statements,
    ) as running:
        yield running


def statuses(responses: list[Response]) -> collections.Counter[int]:
    return collections.Counter(response.status for response in responses)


def mixed_load(client: LoadClient, count: int, tag: str) -> list[asyncio.Task[Response]]:
    """`count` requests at once: writes of new names, reads of the biggest, health checks."""
    requests = []
    for number in range(count):
        match number % 3:
            case 0:
                body = {"name": f"{tag} {number}", "population": number}
                requests.append(client.post("/cities", json=body))
            case 1:
                requests.append(client.get("/cities/biggest?limit=5"))
            case _:
                requests.append(client.get("/health"))
    return [asyncio.ensure_future(request) for request in requests]


# ------------------------------------------------------- the rendered suite, through PgBouncer
@pytest.mark.parametrize("bouncing", BOTH_PGBOUNCERS)
@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_rendered_suite_through_pgbouncer(
    project: Path, bouncer: PgBouncer, bouncing: Bouncing
) -> None:
    """The suite, migrations included, through transaction pooling, in a schema of its own."""
    result = run(
        [UV, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        project,
        env={"TEST_DATABASE_URL": bouncer.url, "DB_POOLER": bouncing.pooler},
    )

    assert " passed" in result.stdout
    skips = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all(THROUGH_PGBOUNCER_ONLY_SKIP in line for line in skips), skips
    assert PREPARED_STATEMENT_ERROR not in bouncer.log


# --------------------------------------------------- the served app, 2 workers, through PgBouncer
@pytest.fixture
def through_bouncer(bouncer: PgBouncer, project: Path) -> Iterator[str]:
    """A scratch database, migrated through PgBouncer; its URL through PgBouncer."""
    assert TEST_DATABASE_URL
    with scratch_database(TEST_DATABASE_URL, prefix="pgb") as url:
        database = url.rsplit("/", 1)[1]
        proxied = bouncer.url.rsplit("/", 1)[0] + f"/{database}"
        # Migrated as on any PgBouncer: the negative controls' pooler would fail here.
        env = {"DATABASE_URL": proxied, "DB_POOLER": "pgbouncer"}
        run([str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"], project, env)
        yield proxied
        # PgBouncer keeps its server connections: let them go before the database is dropped.
        bouncer.restart()


@pytest.mark.parametrize("bouncing", BOTH_PGBOUNCERS)
@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_served_through_pgbouncer_with_two_workers(
    project: Path, bouncer: PgBouncer, bouncing: Bouncing, through_bouncer: str, tmp_path: Path
) -> None:
    """A race on one name, 1,500 mixed requests, then PgBouncer restarted mid-load."""
    log = tmp_path / "server.log"
    env = {"DATABASE_URL": through_bouncer, "DB_POOLER": bouncing.pooler, **POOL}
    outcome: dict[str, collections.Counter[int]] = {}

    async def scenario(base_url: str) -> None:
        async with LoadClient(base_url, timeout=20, concurrency=IN_FLIGHT) as client:
            race = await client.gather(
                "POST", "/cities", 300, json={"name": "Lyon", "population": 1}
            )
            outcome["race"] = statuses(race)
            mixed: list[Response] = []
            for round_ in range(3):
                mixed += await asyncio.gather(*mixed_load(client, 500, f"round {round_}"))
            outcome["mixed"] = statuses(mixed)
            during = mixed_load(client, 600, "restart")
            await asyncio.sleep(0.2)
            bouncer.restart()
            outcome["during the restart"] = statuses(await asyncio.gather(*during))
            outcome["after the restart"] = statuses(
                await asyncio.gather(*mixed_load(client, 300, "after"))
            )

    with serving(project, env, log, workers=2) as (base_url, _server):
        asyncio.run(scenario(base_url))

    text = log.read_text()
    assert PREPARED_STATEMENT_ERROR not in text, text[-3000:]
    assert outcome["race"] == {201: 1, 409: 299}
    assert set(outcome["mixed"]) <= {200, 201}, outcome
    assert sum(outcome["mixed"].values()) == 1500
    # Requests that met the restart get 503 at worst; afterwards, all is well again.
    assert set(outcome["during the restart"]) <= {200, 201, 503}, outcome
    assert set(outcome["after the restart"]) <= {200, 201}, outcome


@pytest.mark.parametrize("bouncing", WRONG_POOLERS)
@pytest.mark.parametrize("project", [variant_param("postgresql-plain-schema")], indirect=True)
def test_statements_kept_that_pgbouncer_does_not_keep_break_the_app(
    project: Path, bouncer: PgBouncer, bouncing: Bouncing, through_bouncer: str, tmp_path: Path
) -> None:
    """The negative controls: `DB_POOLER=none` through 1.18, and `pgbouncer-prepared` through a
    PgBouncer without `max_prepared_statements`, fail as PgBouncer users know."""
    log = tmp_path / "server.log"
    env = {"DATABASE_URL": through_bouncer, "DB_POOLER": bouncing.pooler}

    async def scenario(base_url: str) -> collections.Counter[int]:
        async with LoadClient(base_url, timeout=5) as client:
            answers: list[Response | BaseException] = []
            for round_ in range(3):
                requests = mixed_load(client, 300, f"round {round_}")
                answers += await asyncio.gather(*requests, return_exceptions=True)
        # A request that got no answer (the connection closed under it) counts as status 0.
        return collections.Counter(getattr(answer, "status", 0) for answer in answers)

    with serving(project, env, log, workers=2) as (base_url, _server):
        seen = asyncio.run(scenario(base_url))

    assert PREPARED_STATEMENT_ERROR in log.read_text()
    assert set(seen) - {200, 201}, f"every request succeeded: {seen}"


# ------------------------------------------------------ serve without PgBouncer: stop, budget
@pytest.fixture
def database_url(project: Path) -> Iterator[str]:
    with initialized_database(project, prefix="srv") as url:
        yield url


# ------------------------------------------- a column's type changed under the app, 2 workers
SCHEMA = VARIANTS["postgresql-plain-schema"]["db_schema"]
CHANGE_TYPE = f"ALTER TABLE {SCHEMA}.cities ALTER COLUMN population TYPE numeric(20)"
CITIES = 30
# Small pools, all of them busy: the server is shared with the other tests.
SMALL_POOL = {"DB_POOL_SIZE": "4", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT": "5"}
SMALL_POOL_IN_FLIGHT = 4


def survives_a_column_type_change(project: Path, env: dict[str, str], log: Path) -> None:
    """Cities written and read on every pooled connection of both workers; the column's type
    changed as a migration would, from another connection; then reads (each of them right) and
    writes, at once. A read never fails; a write fails (503) at most once per pooled
    connection, and only in the round right after the change."""
    direct_url = with_database(TEST_DATABASE_URL or "", env["DATABASE_URL"].rsplit("/", 1)[1])
    rounds: list[collections.Counter[int]] = []

    async def load(client: LoadClient, ids: dict[int, int], tag: str) -> None:
        reads = [client.get(f"/cities/{city_id}") for city_id in ids] * 5
        writes = [
            client.post("/cities", json={"name": f"{tag} {n}", "population": n}) for n in range(60)
        ]
        answers = await asyncio.gather(*reads, *writes)
        for (city_id, population), answer in zip([*ids.items()] * 5, answers, strict=False):
            assert answer.status == 200, (answer.status, answer.body)
            assert answer.json() == {
                "id": city_id,
                "name": f"City {population}",
                "population": population,
            }
        rounds.append(statuses(answers[len(reads) :]))

    async def scenario(base_url: str) -> None:
        async with LoadClient(base_url, timeout=20, concurrency=SMALL_POOL_IN_FLIGHT) as client:
            created = await asyncio.gather(
                *(
                    client.post("/cities", json={"name": f"City {n}", "population": n})
                    for n in range(CITIES)
                )
            )
            ids = {answer.json()["id"]: answer.json()["population"] for answer in created}
            await load(client, ids, "before")
            connection = await asyncpg.connect(dsn(direct_url))
            try:
                await connection.execute(CHANGE_TYPE)
            finally:
                await connection.close()
            for round_ in range(3):
                await load(client, ids, f"after {round_}")

    with serving(project, {**env, **SMALL_POOL}, log, workers=2) as (base_url, _server):
        asyncio.run(scenario(base_url))

    before, right_after, *later = rounds
    assert before == {201: 60}
    pooled = 2 * int(SMALL_POOL["DB_POOL_SIZE"])
    assert set(right_after) <= {201, 503}, right_after
    assert right_after[503] <= pooled, right_after
    assert all(round_ == {201: 60} for round_ in later), later


@pytest.mark.parametrize("project", [variant_param("postgresql-plain-schema")], indirect=True)
def test_a_column_type_changed_under_the_served_app_direct(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    survives_a_column_type_change(project, {"DATABASE_URL": database_url}, tmp_path / "log")


@pytest.mark.parametrize("bouncing", [pytest.param(PGBOUNCER_124, id="1.24-pgbouncer-prepared")])
@pytest.mark.parametrize("project", [variant_param("postgresql-plain-schema")], indirect=True)
def test_a_column_type_changed_under_the_served_app_through_pgbouncer_prepared(
    project: Path, bouncer: PgBouncer, bouncing: Bouncing, through_bouncer: str, tmp_path: Path
) -> None:
    """PgBouncer keeps its server connections (and their statements of the old types)."""
    env = {"DATABASE_URL": through_bouncer, "DB_POOLER": bouncing.pooler}
    survives_a_column_type_change(project, env, tmp_path / "log")
    assert PREPARED_STATEMENT_ERROR not in bouncer.log


@pytest.mark.parametrize("project", [variant_param("postgresql-scoped-schema")], indirect=True)
def test_sigterm_finishes_requests_in_flight_and_leaves_no_connection(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    responses: list[Response] = []

    async def scenario(base_url: str, server: subprocess.Popen[bytes]) -> None:
        async with LoadClient(base_url, timeout=20) as client:
            warm = await asyncio.gather(*mixed_load(client, 200, "warm"))
            assert set(statuses(warm)) <= {200, 201}
            in_flight = mixed_load(client, 200, "in flight")
            await asyncio.sleep(0.05)
            server.send_signal(signal.SIGTERM)
            for task in in_flight:
                # Sent after the workers stopped listening: refused, not lost.
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    responses.append(await task)

    with serving(project, {"DATABASE_URL": database_url}, log, workers=2) as (url, server):
        asyncio.run(scenario(url, server))
        assert server.wait(timeout=30) == 0

    assert responses, "no request was in flight"
    assert set(statuses(responses)) <= {200, 201}, statuses(responses)
    assert sessions_left(database_url) == 0, "a worker left connections open"
