"""Read replicas, on a real primary and streaming replica of the tests' own, for the served app in
both session styles.

Where each read lands is counted on the servers themselves, with `pg_stat_statements` (which
counts a statement as it ends; `pg_stat_database` flushes its counters late). The replica is
paused, made to lag, killed, restarted and replaced by a server that never answers: the app
serves every read all along, fresh to a client that sends its write's consistency token, and
logs no traceback.
"""

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.database import scratch_database
from bench.replicas import Pair, PostgresNotFoundError, Server, primary_and_replica

from .helpers import PACKAGE, run, serve, variant_param
from .loadclient import LoadClient, Response

pytestmark = [pytest.mark.render]

BOTH_STYLES = [
    variant_param(name) for name in ["postgresql-plain-schema", "postgresql-scoped-schema"]
]
TOKEN = "x-consistency-token"
# The variants' tables are in the schema `cities`; the app's reads of them, not its writes'
# `SELECT ... FOR UPDATE`, and not the replica checks (which name no table).
READS = (
    "SELECT coalesce(sum(calls), 0)::int FROM pg_stat_statements s"
    " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1"
    " AND s.query LIKE 'SELECT %cities.cities%' AND s.query NOT LIKE '%FOR UPDATE%'"
)
# Every statement of the app in its database but the replica checks': its round trips.
STATEMENTS = (
    "SELECT coalesce(sum(calls), 0)::int FROM pg_stat_statements s"
    " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1"
    " AND s.query NOT LIKE '%pg_current_wal_flush_lsn%'"
    " AND s.query NOT LIKE '%pg_last_wal_replay_lsn%'"
)
WAIT_SECONDS = 20


@pytest.fixture(scope="session")
def pair() -> Iterator[Pair]:
    """A primary and its replica (about 10 s to make); in CI a missing PostgreSQL fails."""
    try:
        with primary_and_replica() as made:
            yield made
    except PostgresNotFoundError as error:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL's server binaries are missing in CI: {error}")
        pytest.skip(str(error))


class App:
    """The served app and its database on both servers, seen from the outside."""

    def __init__(self, client: LoadClient, pair: Pair, database: str) -> None:
        self.client = client
        self.pair = pair
        self.database = database

    async def count(self, server: Server, query: str = READS) -> int:
        rows = await asyncio.to_thread(server.fetch, query, self.database)
        count: int = rows[0][0]
        return count

    async def counts(self, query: str = READS) -> tuple[int, int]:
        """(on the primary, on the replica)."""
        return await self.count(self.pair.primary, query), await self.count(
            self.pair.replica, query
        )

    async def replica_state(self) -> str:
        response = await self.client.get("/health")
        assert response.status == 200, response
        state: str = response.json()["replica"]["state"]
        return state

    async def wait_for(self, state: str) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while (current := await self.replica_state()) != state:
            assert time.monotonic() < deadline, f"the replica stayed {current}, not {state}"
            await asyncio.sleep(0.05)

    async def create(self, name: str, population: int = 10**9) -> Response:
        response = await self.client.post("/cities", json={"name": name, "population": population})
        assert response.status == 201, response
        return response

    async def replay(self, pause: bool) -> None:
        """Pause or resume the replica's replay, and wait until it is so."""
        verb = "pause" if pause else "resume"
        await asyncio.to_thread(self.pair.replica.fetch, f"SELECT pg_wal_replay_{verb}()")
        want = "paused" if pause else "not paused"
        query = "SELECT pg_get_wal_replay_pause_state()"
        while (await asyncio.to_thread(self.pair.replica.fetch, query))[0][0] != want:
            await asyncio.sleep(0.02)


def token_of(response: Response) -> str:
    headers = {name.lower(): value for name, value in response.headers.items()}
    assert TOKEN in headers, f"no consistency token: {response.headers}"
    return headers[TOKEN]


@contextmanager
def served(project: Path, pair: Pair, log: Path, **settings: str) -> Iterator[tuple[str, str]]:
    """The app on a scratch database of the primary, with the replica for reads; `init-db` has
    made its tables (on the primary: it never uses the replica). Yields its URL, the database.
    `{database}` in a setting stands for the database's name."""
    with scratch_database(pair.primary.url(), prefix="replicas") as url:
        database = url.rpartition("/")[2]
        env = {
            "DATABASE_URL": url,
            "DATABASE_READ_URL": pair.replica.url(database),
            "DB_CONNECT_TIMEOUT": "2",
        } | {name: value.format(database=database) for name, value in settings.items()}
        run([str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"], project, env)
        pair.wait_for_replay()
        with serve(project, env, log) as base_url:
            yield base_url, database


def drive(
    project: Path,
    pair: Pair,
    log: Path,
    scenario: Callable[[App], Awaitable[None]],
    **settings: str,
) -> None:
    with served(project, pair, log, **settings) as (base_url, database):

        async def main() -> None:
            async with LoadClient(base_url, timeout=30) as client:
                await scenario(App(client, pair, database))

        asyncio.run(main())
    text = log.read_text()
    assert "Traceback" not in text, text[-4000:]


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_reads_land_on_the_replica_in_one_round_trip(
    project: Path, pair: Pair, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """Reads (with and without a token, once replayed) are served by the replica, 1 statement
    each; a write costs its 3 on the primary and 1 more for its token; readiness is answered by
    the primary and reports the replica."""

    async def scenario(app: App) -> None:
        await app.wait_for("streaming")
        city = (await app.create("Warm-up", population=1)).json()
        await app.client.gather("GET", "/cities/biggest", 20)  # every pooled connection made

        before = await app.counts(STATEMENTS)
        written = await app.create("Written")
        after_write = await app.counts(STATEMENTS)
        record_property("round trips of a write (primary, replica)", after_write)
        assert after_write[0] - before[0] == 4, "BEGIN, INSERT, COMMIT, then the token's"
        assert after_write[1] == before[1]

        await asyncio.to_thread(app.pair.wait_for_replay)
        await asyncio.sleep(0.5)  # the app's next check sees the replay
        token = token_of(written)
        after_write = await app.counts(STATEMENTS)
        reads = await app.client.gather("GET", "/cities/biggest", 30)
        own = await app.client.gather(
            "GET", f"/cities/{written.json()['id']}", 30, headers={TOKEN: token}
        )
        other = await app.client.gather("GET", f"/cities/{city['id']}", 30)
        assert {r.status for r in reads + own + other} == {200}
        assert all(r.json()[0]["name"] == "Written" for r in reads)
        after_reads = await app.counts(STATEMENTS)
        assert after_reads[0] == after_write[0], "no read on the primary"
        dump = await asyncio.to_thread(
            app.pair.replica.fetch,
            "SELECT calls, query FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = $1",
            app.database,
        )
        assert after_reads[1] - after_write[1] == 90, "\n".join(map(str, map(tuple, dump)))

        health = await app.client.get("/health")
        assert health.json()["status"] == "ok"
        assert health.json()["replica"]["state"] == "streaming"
        assert "x-consistency-token" not in {n.lower() for n in reads[0].headers}

    drive(project, pair, tmp_path / "server.log", scenario, DB_READ_MAX_LAG="30")


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_paused_replica_is_stale_without_a_token_and_fresh_with_it(
    project: Path, pair: Pair, tmp_path: Path
) -> None:
    """Replay paused, within the allowed lag: a client without a token reads from the replica
    what it had (not the new city), a client with the write's token reads it from the primary;
    once replayed, the token's reads go to the replica."""

    async def scenario(app: App) -> None:
        await app.wait_for("streaming")
        await app.replay(pause=True)
        try:
            created = await app.create("Fresh")
            path, token = f"/cities/{created.json()['id']}", token_of(created)
            updated = await app.client.request(
                "PATCH", path, json={"population": 7}, headers={TOKEN: token}
            )
            assert updated.status == 200
            token = token_of(updated)
            await asyncio.sleep(0.5)  # checked, and still within the allowed lag
            assert await app.replica_state() == "streaming"

            primary, replica = await app.counts()
            stale = await app.client.get(path)
            assert stale.status == 404, "the replica has not replayed the write"
            assert await app.counts() == (primary, replica + 1)
            fresh = await app.client.get(path, headers={TOKEN: token})
            assert (fresh.status, fresh.json()["population"]) == (200, 7)
            listed = await app.client.get("/cities/biggest", headers={TOKEN: token})
            assert listed.json()[0]["name"] == "Fresh"
            assert await app.counts() == (primary + 2, replica + 1)
        finally:
            await app.replay(pause=False)

        await asyncio.to_thread(app.pair.wait_for_replay)
        await asyncio.sleep(0.5)
        primary, replica = await app.counts()
        fresh = await app.client.get(path, headers={TOKEN: token})
        assert (fresh.status, fresh.json()["population"]) == (200, 7)
        assert await app.counts() == (primary, replica + 1), "replayed: the replica serves it"

    drive(project, pair, tmp_path / "server.log", scenario, DB_READ_MAX_LAG="30")


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_lagging_replica_is_bypassed_then_used_again(
    project: Path, pair: Pair, tmp_path: Path
) -> None:
    """A replica further behind than DB_READ_MAX_LAG serves no read, token or not; once it has
    caught up, it serves them again."""

    async def scenario(app: App) -> None:
        await app.wait_for("streaming")
        await app.replay(pause=True)
        try:
            await app.create("Behind")
            await app.wait_for("lagging")
            primary, replica = await app.counts()
            reads = await app.client.gather("GET", "/cities/biggest", 20)
            assert {r.json()[0]["name"] for r in reads} == {"Behind"}
            assert await app.counts() == (primary + 20, replica)
        finally:
            await app.replay(pause=False)
        await app.wait_for("streaming")
        primary, replica = await app.counts()
        reads = await app.client.gather("GET", "/cities/biggest", 20)
        assert {r.json()[0]["name"] for r in reads} == {"Behind"}
        assert await app.counts() == (primary, replica + 20)

    drive(project, pair, tmp_path / "server.log", scenario, DB_READ_MAX_LAG="0.5")


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_killed_replica_costs_no_read_and_is_used_again_after_a_restart(
    project: Path, pair: Pair, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """Under a steady load of reads (with and without tokens), the replica is killed (`pg_ctl
    stop -m immediate`: reads in flight lose their connection) and restarted: every read is
    answered 200, fresh for the tokens', and the replica serves again without an app restart."""

    async def scenario(app: App) -> None:
        await app.wait_for("streaming")
        created = await app.create("Steady")
        path, token = f"/cities/{created.json()['id']}", token_of(created)
        stop = time.monotonic() + 3600.0
        responses: list[Response] = []

        async def load(headers: dict[str, str]) -> None:
            while time.monotonic() < stop:
                responses.append(await app.client.get("/cities/biggest?limit=50"))
                responses.append(await app.client.get(path, headers=headers))

        loaders = [asyncio.create_task(load({TOKEN: token} if n % 2 else {})) for n in range(8)]
        await asyncio.sleep(1)
        killed_at = len(responses)
        await asyncio.to_thread(app.pair.replica.stop, "immediate")
        await app.wait_for("down")
        await asyncio.sleep(1.5)
        await asyncio.to_thread(app.pair.replica.start)
        await app.wait_for("streaming")
        _, replica = await app.counts()
        await asyncio.sleep(1)
        stop = time.monotonic()
        await asyncio.gather(*loaders)
        _, replica_after = await app.counts()

        record_property("reads", f"{len(responses)}, {killed_at} before the kill")
        assert killed_at > 0
        assert {r.status for r in responses} == {200}, "no failed read"
        assert all(r.json()["name"] == "Steady" for r in responses if isinstance(r.json(), dict))
        assert replica_after > replica, "back in use after its restart"

    drive(project, pair, tmp_path / "server.log", scenario, DB_READ_MAX_LAG="30")


@pytest.mark.parametrize("project", BOTH_STYLES, indirect=True)
def test_stopped_replica_costs_no_read_and_is_used_again_when_it_resumes(
    project: Path, pair: Pair, tmp_path: Path, record_property: Callable[[str, Any], None]
) -> None:
    """Under a steady load of reads, the replica's processes are stopped (`SIGSTOP`: their
    connections stay open, their statements unanswered), then resumed: the reads in flight give
    up after DB_READ_TIMEOUT and are served by the primary, so that no loader waits for the
    replica; every read is answered 200, and the replica serves again once it answers."""

    async def scenario(app: App) -> None:
        await app.wait_for("streaming")
        created = await app.create("Steady")
        path, token = f"/cities/{created.json()['id']}", token_of(created)
        stop = time.monotonic() + 3600.0
        responses: list[Response] = []
        answered = [0] * 8  # reads answered, by loader

        async def load(loader: int, headers: dict[str, str]) -> None:
            while time.monotonic() < stop:
                responses.append(await app.client.get("/cities/biggest?limit=50"))
                responses.append(await app.client.get(path, headers=headers))
                answered[loader] += 2

        loaders = [
            asyncio.create_task(load(n, {TOKEN: token} if n % 2 else {}))
            for n in range(len(answered))
        ]
        await asyncio.sleep(0.5)
        stopped_at = len(responses)
        await asyncio.to_thread(app.pair.replica.send_signal, signal.SIGSTOP)
        try:
            await app.wait_for("down")
            primary = await app.count(app.pair.primary)
            # Each loader answered again, though the replica holds the reads it had in flight.
            before = list(answered)
            deadline = time.monotonic() + WAIT_SECONDS
            while any(now <= then for now, then in zip(answered, before, strict=True)):
                assert time.monotonic() < deadline, f"loaders waiting: {answered} vs {before}"
                await asyncio.sleep(0.05)
            assert await app.count(app.pair.primary) > primary, "the primary serves the reads"
        finally:
            await asyncio.to_thread(app.pair.replica.send_signal, signal.SIGCONT)
        await app.wait_for("streaming")
        _, replica = await app.counts()
        deadline = time.monotonic() + WAIT_SECONDS
        while (await app.counts())[1] <= replica:
            assert time.monotonic() < deadline, "the resumed replica serves no read"
            await asyncio.sleep(0.05)
        stop = time.monotonic()
        await asyncio.gather(*loaders)

        record_property("reads", f"{len(responses)}, {stopped_at} before the stop")
        assert stopped_at > 0
        assert {r.status for r in responses} == {200}, "no failed read"
        assert all(r.json()["name"] == "Steady" for r in responses if isinstance(r.json(), dict))

    settings = {"DB_READ_MAX_LAG": "30", "DB_READ_TIMEOUT": "0.5"}
    drive(project, pair, tmp_path / "server.log", scenario, **settings)
    log = (tmp_path / "server.log").read_text()
    assert "read replica unavailable" in log, log[-4000:]
    assert "read replica back" in log, log[-4000:]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never answers: a replica that
    times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(100)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("project", BOTH_STYLES[:1], indirect=True)
def test_replica_that_never_answers_costs_no_read(
    project: Path, pair: Pair, tmp_path: Path, silent_server: int
) -> None:
    """A replica that accepts connections and never answers: every read is served by the
    primary, readiness says that the replica is down and does not fail."""

    async def scenario(app: App) -> None:
        reads = await app.client.gather("GET", "/cities/biggest", 10)
        assert {r.status for r in reads} == {200}
        await app.wait_for("down")
        reads = await app.client.gather("GET", "/cities/biggest", 10)
        assert {r.status for r in reads} == {200}

    silent = f"postgresql://postgres@127.0.0.1:{silent_server}/{{database}}"
    settings = {"DATABASE_READ_URL": silent, "DB_CONNECT_TIMEOUT": "1"}
    drive(project, pair, tmp_path / "server.log", scenario, **settings)
