"""A PgBouncer of our own, in transaction pooling mode, in front of a PostgreSQL server: for the
benchmark and the template's tests.

Debian's package (installed with apt-get when missing and run as root, as in CI); an instance of
our own on a free loopback port, with a generated configuration, run as `postgres` (PgBouncer
refuses to run as root), or as the user running us; never the packaged service.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from .servers import free_port

BINARY: Final = "/usr/sbin/pgbouncer"
INSTALL_HINT: Final = (
    "PgBouncer is not installed: install it with `sudo apt-get install -y pgbouncer` (Debian, "
    "Ubuntu) or `brew install pgbouncer` (macOS)"
)
READY_TIMEOUT_SECONDS: Final = 10
# PgBouncer refuses to run as root: then it runs as the server's user.
AS_ROOT: Final = os.geteuid() == 0
RUN_AS: Final = "postgres"


def find_pgbouncer() -> str | None:
    """PgBouncer's binary, installed from Debian's packages if it is missing and we are root."""
    if found := shutil.which("pgbouncer") or (BINARY if Path(BINARY).exists() else None):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "pgbouncer"],
        check=False,
        capture_output=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return BINARY if Path(BINARY).exists() else None


CONFIG: Final = """\
[databases]
* = host={host} port={server_port} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


class PgBouncer:
    """A PgBouncer of `binary`; `url` is the server URL given, through it. `pool_size` server
    connections per database and user, which its clients share."""

    def __init__(self, binary: str, server_url: str, directory: Path, *, pool_size: int) -> None:
        self.binary = binary
        server = urlsplit(server_url)
        self.port = free_port()
        self.url = server._replace(netloc=f"{server.username}@127.0.0.1:{self.port}").geturl()
        self.directory = directory
        self.config = directory / "pgbouncer.ini"
        self.config.write_text(
            CONFIG.format(
                host=server.hostname,
                server_port=server.port or 5432,
                user=server.username,
                port=self.port,
                pool_size=pool_size,
                directory=directory,
            )
        )
        if AS_ROOT:
            shutil.chown(directory, RUN_AS)
            shutil.chown(self.config, RUN_AS)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text() if path.exists() else ""

    def start(self) -> None:
        self._process = subprocess.Popen(
            [self.binary, *(["-u", RUN_AS] if AS_ROOT else []), str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                msg = f"PgBouncer exited:\n{self.log}"
                raise RuntimeError(msg)
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        msg = f"PgBouncer did not listen on port {self.port}:\n{self.log}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        if self._process:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        """Stop (every client and server connection ends), then start again on the same port."""
        self.stop()
        self.start()


@contextmanager
def pgbouncer(binary: str, server_url: str, *, pool_size: int) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the server of `server_url` (trust auth)."""
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as directory:
        bouncer = PgBouncer(binary, server_url, Path(directory), pool_size=pool_size)
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.stop()
