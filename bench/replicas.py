"""A PostgreSQL primary and a streaming replica of our own, for the benchmark and the tests.

The machine's server allows no replication connection, and a test must be free to stop, pause
and restart its replica: `initdb` makes a primary (trust authentication, replication allowed from
loopback, `pg_stat_statements` preloaded so that each server counts the statements it ran), and
`pg_basebackup -R -X stream` its replica; both run with `pg_ctl` on free loopback ports, as
`postgres` when we are root (`initdb` refuses root), in a temporary directory removed at the end.
"""

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from .servers import free_port

AS_ROOT: Final = os.geteuid() == 0
RUN_AS: Final = "postgres"
READY_TIMEOUT_SECONDS: Final = 30
# Test clusters: nothing worth an fsync, and a statistics extension that counts as it goes.
SETTINGS: Final = """
listen_addresses = '127.0.0.1'
fsync = off
full_page_writes = off
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track_utility = on
max_connections = 200
wal_level = replica
max_wal_senders = 5
hot_standby = on
"""
HBA: Final = """
local all all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


class PostgresNotFoundError(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) on this machine."""


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian and Ubuntu: /usr/lib/postgresql/N/bin),
    or those on the PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    initdb = found[-1] if found else shutil.which("initdb")
    if not initdb or not (Path(initdb).parent / "pg_basebackup").exists():
        msg = (
            "PostgreSQL's server binaries (initdb, pg_ctl, pg_basebackup) are missing: install"
            " them with `apt-get install postgresql` (Debian, Ubuntu)"
        )
        raise PostgresNotFoundError(msg)
    return Path(initdb).parent


@dataclass
class Server:
    """One of the pair: its data directory, port and log."""

    name: str
    bindir: Path
    data: Path
    port: int

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    def url(self, database: str = "postgres") -> str:
        """Its URL, in libpq's form (`postgresql://`): asyncpg's, and the app's setting."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        _run(
            [str(self.bindir / "pg_ctl"), "start", "-w", "-D", str(self.data), "-l", str(self.log)]
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop it: `fast` ends sessions cleanly, `immediate` kills it as a crash would."""
        _run([str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data)])

    def send_signal(self, signum: signal.Signals) -> None:
        """Send `signum` to its postmaster and to every process that it started (`SIGSTOP` and
        `SIGCONT`: a server that stops answering, then answers again). Each backend has a
        session of its own: `killpg` would reach the postmaster alone."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        if signum == signal.SIGCONT:
            # Last: while it is stopped, it reaps no child, so every pid listed is still there
            # (resumed first, it once reaped one before we signalled it: ProcessLookupError).
            pids = [*_children(postmaster), postmaster]
        else:
            # First: stopped, it starts no process that we would miss.
            pids = [postmaster, *_children(postmaster)]
        for pid in pids:  # a child that ends meanwhile stays a zombie, unreaped: it takes a signal
            os.kill(pid, signum)

    def fetch(self, query: str, *args: object, database: str = "postgres") -> list[asyncpg.Record]:
        return asyncio.run(fetch(self.url(database), query, *args))


@dataclass
class Pair:
    primary: Server
    replica: Server

    def wait_for_replay(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until the replica has replayed all that the primary has written now."""
        target = self.primary.fetch("SELECT pg_current_wal_lsn()")[0][0]
        deadline = time.monotonic() + timeout
        query = "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn"
        while not self.replica.fetch(query, target)[0][0]:
            if time.monotonic() > deadline:
                msg = f"the replica did not replay up to {target} within {timeout} s"
                raise TimeoutError(msg)
            time.sleep(0.05)


async def fetch(url: str, query: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(query, *args)
    finally:
        await connection.close()


@contextmanager
def primary_and_replica() -> Iterator[Pair]:
    """A primary and its streaming replica, started; stopped and removed at the end."""
    bindir = postgres_bindir()
    # Not under pytest's tmp_path: the server's user must reach it, and root's is private.
    directory = Path(tempfile.mkdtemp(prefix="cities-replicas-"))
    if AS_ROOT:
        shutil.chown(directory, RUN_AS)
    primary = Server("primary", bindir, directory / "primary", free_port())
    replica = Server("replica", bindir, directory / "replica", free_port())
    started: list[Server] = []
    try:
        _run([str(bindir / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(primary.data)])
        _configure(primary, HBA)
        primary.start()
        started.append(primary)
        primary.fetch("CREATE EXTENSION pg_stat_statements")
        _run(
            [
                str(bindir / "pg_basebackup"),
                f"--pgdata={replica.data}",
                "--host=127.0.0.1",
                f"--port={primary.port}",
                "--username=postgres",
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
            ]
        )
        _configure(replica)
        replica.start()
        started.append(replica)
        pair = Pair(primary, replica)
        pair.wait_for_replay()
        yield pair
    finally:
        for server in reversed(started):
            with contextlib.suppress(subprocess.CalledProcessError):  # a test stopped it
                server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


def _configure(server: Server, hba: str | None = None) -> None:
    """Its settings after the defaults (the replica's after the primary's it copied)."""
    with (server.data / "postgresql.conf").open("a") as conf:
        conf.write(f"{SETTINGS}port = {server.port}\nunix_socket_directories = '{server.data}'\n")
    if hba is not None:
        (server.data / "pg_hba.conf").write_text(hba)


def _children(parent: int) -> list[int]:
    """The processes whose parent is `parent` (Linux's `/proc`)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # `pid (comm) state ppid ...`, where comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # gone since the listing
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children


def _run(command: list[str]) -> None:
    """Run a server binary, as `postgres` when we are root; raise with its output if it fails."""
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
        user=RUN_AS if AS_ROOT else None,
        cwd="/",
        timeout=120,
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, command, result.stdout, result.stderr
        )
