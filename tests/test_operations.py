"""Operating the rendered service as a platform would, under `serve --workers 2`: draining on
SIGTERM (readiness fails at once, requests are still served for `SHUTDOWN_DELAY_SECONDS`, then a
clean exit that leaves no connection) and one scrape of `/metrics` that adds up both workers."""

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import (
    PACKAGE,
    initialized_database,
    requires_postgresql,
    run,
    serving,
    variant_param,
)
from .test_reliability import sessions_left

pytestmark = pytest.mark.render

SHUTDOWN_DELAY_SECONDS = 4
WORKERS = 2
# What uvicorn logs as each worker's app has started.
STARTED = "Application startup complete."


@contextmanager
def serving_ready(
    project: Path, env: Mapping[str, str], log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`serve --workers 2` with its own access log, once every worker is ready: one that is
    still starting when the test signals the server would not drain."""
    with serving(project, env, log, workers=WORKERS, access_log=True) as (base_url, server):
        wait_until(lambda: log.read_text().count(STARTED) == WORKERS, log)
        wait_until(lambda: status(f"{base_url}/health/ready") == 200, log)
        yield base_url, server


def status(url: str) -> int:
    """The status of `GET url`, on a connection of its own (so either worker may answer)."""
    request = urllib.request.Request(url, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            code: int = response.status
            return code
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # not answering (yet, or any more)


def wait_until(condition: Callable[[], bool], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)


@requires_postgresql
@pytest.mark.parametrize("project", [variant_param("postgresql-plain-schema")], indirect=True)
def test_sigterm_drains_then_stops_cleanly(project: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with initialized_database(project, prefix="tpl_drain") as url:
        env = {"DATABASE_URL": url, "SHUTDOWN_DELAY_SECONDS": str(SHUTDOWN_DELAY_SECONDS)}
        with serving_ready(project, env, log) as (base_url, server):
            # Both workers hold connections: each must give them back as it stops.
            for _ in range(20):
                assert status(f"{base_url}/cities/biggest") == 200
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # uvicorn's supervisor passes the signal on to its workers within half a second.
            wait_until(lambda: status(f"{base_url}/health/ready") == 503, log)
            time.sleep(0.5)
            during = {
                path: [status(f"{base_url}{path}") for _ in range(10)]
                for path in ("/health/ready", "/health", "/health/live", "/cities/biggest")
            }
            answered_until = time.monotonic()
            returncode = server.wait(timeout=SHUTDOWN_DELAY_SECONDS + 30)
            stopped_after = time.monotonic() - signalled

        assert answered_until - signalled < SHUTDOWN_DELAY_SECONDS, "the checks came too late"
        assert during["/health/ready"] == [503] * 10, during
        assert during["/health"] == [503] * 10, during
        assert during["/health/live"] == [200] * 10, during
        assert during["/cities/biggest"] == [200] * 10, during
        assert returncode == 0, log.read_text()[-4000:]
        assert stopped_after >= SHUTDOWN_DELAY_SECONDS
        assert sessions_left(url) == 0, "a worker left a connection behind"
    text = log.read_text()
    assert text.count("readiness answers 503") == WORKERS, text[-4000:]
    assert "Traceback" not in text, text[-4000:]


@pytest.mark.parametrize("project", [variant_param("sqlite-plain")], indirect=True)
def test_one_scrape_adds_up_both_workers_and_every_line_is_json(
    project: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    temporary = tmp_path / "tmp"  # where `serve` makes its metrics' directory
    temporary.mkdir()
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cities.db'}",
        "LOG_FORMAT": "json",
        "TMPDIR": str(temporary),
    }
    run([str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"], project, env)
    with serving_ready(project, env, log) as (base_url, server):
        sent = 0
        # Until the access lines show both workers answering (on connections of their own).
        while len(access_pids(log, "/cities/biggest")) < WORKERS:
            assert sent < 2000, f"one worker answered all of {sent} requests"
            for _ in range(20):
                assert status(f"{base_url}/cities/biggest?limit=1") == 200
            sent += 20
        scrapes = [scrape(f"{base_url}/metrics") for _ in range(10)]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0

    key = 'http_requests_total{method="GET",route="/cities/biggest",status="200"}'
    assert {lines[key] for lines in scrapes} == {float(sent)}, "a scrape missed a worker's counts"
    assert {lines["db_pool_size"] for lines in scrapes} == {float(2 * 5)}  # SQLite's pool: 5 each
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, uvicorn's too
    assert any(record["logger"] == "uvicorn.error" for record in records)
    assert not list(temporary.iterdir()), "the metrics' directory was left behind"


def access_pids(log: Path, path: str) -> set[int]:
    """The processes that logged an access line for `path` (JSON lines)."""
    pids = set()
    for line in log.read_text().splitlines():
        if f'"path": "{path}"' in line:
            pids.add(json.loads(line)["process"])
    return pids


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text exposition's samples, by their line's name and labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
