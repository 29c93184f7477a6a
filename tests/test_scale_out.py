"""Scale-out: the rendered `serve` with several workers, its connection budget, and PgBouncer in
transaction pooling mode, a real one, between the app and PostgreSQL."""

import asyncio
import collections
import contextlib
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from bench.database import scratch_database
from bench.pgbouncer import PgBouncer, pgbouncer
from bench.projects import UV, tool_env
from bench.servers import free_port

from .helpers import (
    PACKAGE,
    TEST_DATABASE_URL,
    initialized_database,
    run,
    variant_param,
    wait_until_listening,
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


@pytest.fixture
def bouncer(packaged_pgbouncer: str) -> Iterator[PgBouncer]:
    """Debian's PgBouncer (1.18 on Debian 12); in CI, where `.ci/run` installs it, never skipped."""
    assert TEST_DATABASE_URL
    with pgbouncer(packaged_pgbouncer, TEST_DATABASE_URL, pool_size=SERVER_POOL_SIZE) as running:
        yield running


@contextmanager
def serving(
    project: Path, env: dict[str, str], log: Path, *, workers: int
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`<cli> serve --workers N` on a free port; SIGTERM at the end, as a deployment stops it."""
    port = free_port()
    command = [str(project / ".venv/bin/cities-service"), "serve", f"--port={port}"]
    with log.open("w") as output:
        server = subprocess.Popen(
            [*command, f"--workers={workers}", "--no-access-log"],
            cwd=project,
            env=tool_env(env),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_listening(port, server, log)
            yield f"http://127.0.0.1:{port}", server
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


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
@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_rendered_suite_through_pgbouncer(project: Path, bouncer: PgBouncer) -> None:
    """The suite, migrations included, through transaction pooling, in a schema of its own."""
    result = run(
        [UV, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
        project,
        env={"TEST_DATABASE_URL": bouncer.url, "DB_POOLER": "pgbouncer"},
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
        env = {"DATABASE_URL": proxied, "DB_POOLER": "pgbouncer"}
        run([str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"], project, env)
        yield proxied
        # PgBouncer keeps its server connections: let them go before the database is dropped.
        bouncer.restart()


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_served_through_pgbouncer_with_two_workers(
    project: Path, bouncer: PgBouncer, through_bouncer: str, tmp_path: Path
) -> None:
    """A race on one name, a few thousand mixed requests, then PgBouncer restarted mid-load."""
    log = tmp_path / "server.log"
    env = {"DATABASE_URL": through_bouncer, "DB_POOLER": "pgbouncer", "DB_POOL_TIMEOUT": "5"}
    outcome: dict[str, collections.Counter[int]] = {}

    async def scenario(base_url: str) -> None:
        async with LoadClient(base_url, timeout=20) as client:
            race = await client.gather(
                "POST", "/cities", 300, json={"name": "Lyon", "population": 1}
            )
            outcome["race"] = statuses(race)
            mixed: list[Response] = []
            for round_ in range(6):
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
    assert sum(outcome["mixed"].values()) == 3000
    # Requests that met the restart get 503 at worst; afterwards, all is well again.
    assert set(outcome["during the restart"]) <= {200, 201, 503}, outcome
    assert set(outcome["after the restart"]) <= {200, 201}, outcome


@pytest.mark.parametrize("project", [variant_param("postgresql-plain-schema")], indirect=True)
def test_without_pgbouncer_settings_pgbouncer_breaks_the_app(
    project: Path, bouncer: PgBouncer, through_bouncer: str, tmp_path: Path
) -> None:
    """The negative control: `DB_POOLER=none` through PgBouncer fails as PgBouncer users know."""
    log = tmp_path / "server.log"
    env = {"DATABASE_URL": through_bouncer, "DB_POOLER": "none"}

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
