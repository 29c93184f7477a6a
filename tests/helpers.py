"""Helpers for the template's tests: render the working tree with Copier, run the result's tools."""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from copier import run_copy

# The repository's root, the rendered package, uv, the environment of a rendered project's
# tools and a free port are the benchmark's too: one definition for both.
from bench.database import scratch_database
from bench.projects import PACKAGE, ROOT, tool_env
from bench.servers import free_port

PROBE_SERVER = Path(__file__).resolve().parent / "probe_server.py"

# The answer given for PostgreSQL variants; their tests run on TEST_DATABASE_URL.
PG_ANSWER_URL = "postgresql://postgres@127.0.0.1:5432/test"

# The variants the suite renders and runs, by name.
VARIANTS: dict[str, dict[str, Any]] = {
    "sqlite-plain": {},
    "sqlite-scoped": {"session_style": "scoped"},
    "postgresql-plain-schema": {"database_url": PG_ANSWER_URL, "db_schema": "cities"},
    "postgresql-scoped": {"database_url": PG_ANSWER_URL, "session_style": "scoped"},
    "postgresql-scoped-schema": {
        "database_url": PG_ANSWER_URL,
        "db_schema": "cities",
        "session_style": "scoped",
    },
}
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL")

requires_postgresql = pytest.mark.skipif(
    not TEST_DATABASE_URL, reason="set TEST_DATABASE_URL to run the PostgreSQL checks"
)
# Why a rendered project's PostgreSQL-only tests skip on SQLite, its default.
POSTGRESQL_ONLY = "PostgreSQL only: set TEST_DATABASE_URL"


def variant_param(name: str) -> Any:
    """A pytest parameter for a variant: all tests of one variant run on one xdist worker, which
    renders and installs it once."""
    return pytest.param(name, marks=pytest.mark.xdist_group(name), id=name)


def render(dst: Path, **data: Any) -> Path:
    """Render the template's working tree (uncommitted changes included) into `dst`."""
    run_copy(str(ROOT), dst, data=data, defaults=True, vcs_ref="HEAD", quiet=True, unsafe=False)
    return dst


def run(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command in a rendered project; fail the test with its output if it fails."""
    result = subprocess.run(
        list(args),
        cwd=cwd,
        env=tool_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"`{' '.join(args)}` failed ({result.returncode}) in {cwd}:\n"
        f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


@contextmanager
def initialized_database(project: Path, *, prefix: str) -> Iterator[str]:
    """A scratch database on the server of `TEST_DATABASE_URL`, made ready by the project's
    `init-db` (its migrations); its URL. Dropped at the end."""
    assert TEST_DATABASE_URL
    with scratch_database(TEST_DATABASE_URL, prefix=prefix) as url:
        init_db = [str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"]
        run(init_db, project, {"DATABASE_URL": url})
        yield url


@contextmanager
def serve(
    project: Path, env: Mapping[str, str], log: Path, *, probe: bool = False
) -> Iterator[str]:
    """Run the project's app under uvicorn on a free loopback port; yield its base URL.

    With `probe`, the app also answers `GET /_probe/pool` (see probe_server.py).
    """
    port = free_port()
    if probe:
        command = [str(project / ".venv/bin/python"), str(PROBE_SERVER), PACKAGE, str(port)]
    else:
        command = [
            str(project / ".venv/bin/uvicorn"),
            f"{PACKAGE}.main:app",
            "--host=127.0.0.1",
            f"--port={port}",
            "--no-access-log",
        ]
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=project, env=tool_env(env), stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_until_listening(port, server, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=15)


@contextmanager
def serving(
    project: Path, env: Mapping[str, str], log: Path, *, workers: int, access_log: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The project's `serve --workers N` on a free port, as a deployment runs it; yield its base
    URL and its process. Stopped at the end as a deployment stops it (SIGTERM), unless the test
    stopped it itself; killed if it then hangs."""
    port = free_port()
    command = [str(project / ".venv/bin/python"), "-m", PACKAGE, "serve", f"--port={port}"]
    command.append(f"--workers={workers}")
    if not access_log:
        command.append("--no-access-log")
    with log.open("w") as output:
        server = subprocess.Popen(
            command, cwd=project, env=tool_env(env), stdout=output, stderr=subprocess.STDOUT
        )
        try:
            wait_until_listening(port, server, log)
            yield f"http://127.0.0.1:{port}", server
        finally:
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


def wait_until_listening(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited:\n{log.read_text()}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"the server did not listen on port {port} within 30 s:\n{log.read_text()}")


def unexpected_skips(pytest_output: str) -> list[str]:
    """The lines of a rendered suite's report (`-ra`) that tell of a test skipped for another
    reason than needing PostgreSQL: on SQLite, everything else must run."""
    return [
        line
        for line in pytest_output.splitlines()
        if line.startswith("SKIPPED") and not line.endswith(POSTGRESQL_ONLY)
    ]
