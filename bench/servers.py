"""The apps under test, and serving one under uvicorn in a process of its own."""

import logging
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from . import database
from .projects import PACKAGE, Project, tool_env

logger = logging.getLogger(__name__)

REFERENCE_APPS_DIR: Final = Path(__file__).resolve().parent / "apps"
SEED_PATTERN: Final = "seed_pattern"
RAW_ASYNCPG: Final = "raw_asyncpg"
ORM_FLOOR: Final = "orm_floor"
READY_TIMEOUT_SECONDS: Final = 30
STOP_TIMEOUT_SECONDS: Final = 15


@dataclass(frozen=True)
class App:
    """An ASGI app (`target`, "module:attribute") served from the virtualenv of `project`, with
    `env` set: a rendered variant (its own package), or a reference app imported from `app_dir`.
    Each app's tables are in the schema of its name."""

    name: str
    target: str
    project: Path
    env: Mapping[str, str] = field(default_factory=dict)
    app_dir: Path | None = None
    workers: int = 1


@dataclass(frozen=True)
class Pool:
    """The connection pool of the rendered variants (`DB_POOL_SIZE`, `DB_MAX_OVERFLOW`)."""

    size: int
    max_overflow: int

    def per_worker(self, workers: int) -> "Pool":
        """The pool of each of `workers` processes that share this one's connections."""
        return Pool(max(1, self.size // workers), self.max_overflow // workers)


def variant_app(
    project: Project,
    database_url: str,
    pool: Pool,
    *,
    workers: int = 1,
    pooler: str = "none",
    name: str | None = None,
) -> App:
    """A rendered variant, configured as its users would: through its settings' variables.
    Its `workers` share `pool`'s connections; `pooler` is its `DB_POOLER`."""
    pool = pool.per_worker(workers)
    env = {
        "DATABASE_URL": database_url,
        "DB_SCHEMA": project.name,
        "DB_POOL_SIZE": str(pool.size),
        "DB_MAX_OVERFLOW": str(pool.max_overflow),
        "DB_POOLER": pooler,
    }
    return App(name or project.name, f"{PACKAGE}.main:app", project.path, env, workers=workers)


def reference_app(
    name: str, project: Project, database_url: str, pool: Pool, *, workers: int = 1
) -> App:
    """A reference app of `apps/`, in the virtualenv of a rendered `project`.

    raw_asyncpg and orm_floor get as many connections as a variant can open, so that they are
    its ceiling and its floor at the same cost to the database; seed_pattern keeps its own pool
    of 100, as the pattern does.
    Its `workers` share those connections, as a variant's do.
    """
    per_worker = pool.per_worker(workers)
    env = {
        "BENCH_SCHEMA": name,
        "BENCH_DSN": database_url,
        "BENCH_DATABASE_URL": database.sqlalchemy_url(database_url),
        "BENCH_POOL_SIZE": str(per_worker.size + per_worker.max_overflow),
    }
    return App(name, f"{name}:app", project.path, env, REFERENCE_APPS_DIR, workers)


@contextmanager
def serve(app: App, log: Path) -> Iterator[str]:
    """Serve `app` with its uvicorn workers on a free loopback port until the block ends; yield
    its base URL once it answers. Stopping it closes its pools, so the next app starts afresh."""
    port = free_port()
    python = str(app.project / ".venv/bin/python")
    listen = ["--host=127.0.0.1", f"--port={port}", f"--workers={app.workers}"]
    if app.app_dir:
        command = [python, "-m", "uvicorn", app.target, *listen, "--no-access-log"]
        command += ["--log-level=warning", f"--app-dir={app.app_dir}"]
    else:
        # A variant is served as in production, by its `serve` (uvicorn, with the app's own
        # access log and metrics on): what they cost is part of its figures.
        command = [python, "-m", PACKAGE, "serve", *listen, "--ignore-connection-budget"]
    with log.open("w") as output:
        # A session of its own: Ctrl-C reaches the benchmark only, which stops the server itself.
        server = subprocess.Popen(
            command,
            cwd=app.project,
            env=tool_env(app.env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_until_ready(base_url, server, log)
            yield base_url
        finally:
            _stop(server)


def free_port() -> int:
    """A loopback port that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_ready(base_url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until the app answers a real query (its pool and the database work), not only until
    the port is open."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            msg = f"the server exited ({server.returncode}):\n{log.read_text()[-4000:]}"
            raise RuntimeError(msg)
        try:
            with urllib.request.urlopen(f"{base_url}/cities/biggest?limit=1", timeout=5):
                return
        except OSError:  # refused, reset, timed out, or an HTTP error (not ready yet)
            time.sleep(0.1)
    msg = f"the server did not answer within {READY_TIMEOUT_SECONDS} s:\n{log.read_text()[-4000:]}"
    raise RuntimeError(msg)


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Stop as Ctrl-C would (uvicorn then runs the lifespan's shutdown); kill it if it hangs."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("the server did not stop within %s s: killing it", STOP_TIMEOUT_SECONDS)
        server.kill()
        server.wait()
