"""A PgBouncer of our own, in transaction pooling mode, in front of a PostgreSQL server: for the
benchmark and the template's tests.

Which PgBouncer is the caller's choice: `packaged`, Debian's package (1.18 on Debian 12, which
keeps no prepared statement in transaction mode; installed with apt-get when missing and run as
root, as in CI), or `built`, 1.24.1 built from Debian trixie's source package and cached
(`bench.pgbouncer_build`). An instance of our own on a free loopback port, with a generated
configuration (`max_prepared_statements` when asked), run as `postgres` (PgBouncer refuses to
run as root), or as the user running us; never the packaged service.
"""

import functools
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from . import pgbouncer_build
from .servers import free_port

Which = Literal["packaged", "built"]
PACKAGED: Final = "packaged"
BUILT: Final = "built"
# The first PgBouncer that keeps protocol-level prepared statements in transaction mode.
PREPARED_STATEMENTS_SINCE: Final = (1, 21)
# The first whose SIGTERM is a "super safe shutdown" (SIGQUIT stops it at once).
SIGTERM_WAITS_FOR_CLIENTS_SINCE: Final = (1, 23)

BINARY: Final = "/usr/sbin/pgbouncer"
INSTALL_HINT: Final = (
    "PgBouncer is not installed: install it with `sudo apt-get install -y pgbouncer` (Debian, "
    "Ubuntu) or `brew install pgbouncer` (macOS)"
)
READY_TIMEOUT_SECONDS: Final = 10
# PgBouncer refuses to run as root: then it runs as the server's user.
AS_ROOT: Final = os.geteuid() == 0
RUN_AS: Final = "postgres"


class PgBouncerNotFoundError(RuntimeError):
    """No PgBouncer of the kind asked for: the message says why, and how to get one."""


def pgbouncer_binary(which: Which = PACKAGED) -> str:
    """The binary of the PgBouncer asked for: Debian's package (installed if missing and we are
    root), or 1.24.1 built from Debian trixie's source package (built now if not cached)."""
    if which == BUILT:
        try:
            return str(pgbouncer_build.ensure())
        except pgbouncer_build.BuildError as error:
            raise PgBouncerNotFoundError(str(error)) from error
    if found := _packaged_pgbouncer():
        return found
    raise PgBouncerNotFoundError(INSTALL_HINT)


def find_pgbouncer(which: Which = PACKAGED) -> str | None:
    """`pgbouncer_binary(which)`, or None when there is none."""
    try:
        return pgbouncer_binary(which)
    except PgBouncerNotFoundError:
        return None


@functools.cache
def pgbouncer_version(binary: str) -> tuple[int, ...]:
    """`(1, 24, 1)` from `binary --version`."""
    found = pgbouncer_build.binary_version(binary)
    if found is None or not re.fullmatch(r"\d+(\.\d+)*", found):
        msg = f"{binary} --version does not say which PgBouncer it is"
        raise PgBouncerNotFoundError(msg)
    return tuple(int(part) for part in found.split("."))


def keeps_prepared_statements(binary: str) -> bool:
    """Whether `binary` can keep prepared statements in transaction mode (1.21 and later)."""
    return pgbouncer_version(binary) >= PREPARED_STATEMENTS_SINCE


def _packaged_pgbouncer() -> str | None:
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
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""


class PgBouncer:
    """A PgBouncer of `binary`; `url` is the server URL given, through it. `pool_size` server
    connections per database and user, which its clients share. `max_prepared_statements`: the
    line is written when given (0: none kept, on any version; more needs 1.21 or later), else
    the version's default (0 until 1.23, 200 from 1.24)."""

    def __init__(
        self,
        binary: str,
        server_url: str,
        directory: Path,
        *,
        pool_size: int,
        max_prepared_statements: int | None = None,
    ) -> None:
        self.binary = binary
        self.version = pgbouncer_version(binary)
        server = urlsplit(server_url)
        self.user = server.username or "postgres"
        self.port = free_port()
        self.url = server._replace(netloc=f"{server.username}@127.0.0.1:{self.port}").geturl()
        self.directory = directory
        self.config = directory / "pgbouncer.ini"
        config = CONFIG.format(
            host=server.hostname,
            server_port=server.port or 5432,
            user=self.user,
            port=self.port,
            pool_size=pool_size,
            directory=directory,
        )
        if max_prepared_statements is not None:
            if self.version >= PREPARED_STATEMENTS_SINCE:
                config += f"max_prepared_statements = {max_prepared_statements}\n"
            elif max_prepared_statements > 0:
                version = ".".join(map(str, self.version))
                msg = f"PgBouncer {version} keeps no prepared statement in transaction mode"
                raise ValueError(msg)
        self.config.write_text(config)
        if AS_ROOT:
            shutil.chown(directory, RUN_AS)
            shutil.chown(self.config, RUN_AS)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def immediate_shutdown(self) -> signal.Signals:
        """The signal that stops this PgBouncer at once: SIGTERM until 1.22; from 1.23 SIGTERM
        waits for every client to disconnect (which an app's pool never does), SIGQUIT not."""
        return signal.SIGQUIT if self.version >= SIGTERM_WAITS_FOR_CLIENTS_SINCE else signal.SIGTERM

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
        """Stop at once, closing every client and server connection."""
        if self._process:
            self._process.send_signal(self.immediate_shutdown)
            self._process.wait(timeout=10)
            self._process = None

    def restart(self) -> None:
        """Stop (every client and server connection ends), then start again on the same port."""
        self.stop()
        self.start()

    def admin(self, command: str) -> list[dict[str, str | None]]:
        """The rows of `command` (`SHOW VERSION`, `SHOW POOLS`, ...) on the admin console."""
        return admin_command("127.0.0.1", self.port, self.user, command)


@contextmanager
def pgbouncer(
    binary: str,
    server_url: str,
    *,
    pool_size: int,
    max_prepared_statements: int | None = None,
) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the server of `server_url` (trust auth)."""
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as directory:
        bouncer = PgBouncer(
            binary,
            server_url,
            Path(directory),
            pool_size=pool_size,
            max_prepared_statements=max_prepared_statements,
        )
        bouncer.start()
        try:
            yield bouncer
        finally:
            bouncer.stop()


# ------------------------------------------------------------------------ the admin console
# It speaks the simple query protocol only (asyncpg prepares everything): a client of its own.
PROTOCOL_VERSION: Final = 196608  # 3.0
ADMIN_TIMEOUT_SECONDS: Final = 10


def admin_command(host: str, port: int, user: str, command: str) -> list[dict[str, str | None]]:
    """Run `command` on the admin console (database `pgbouncer`) of the PgBouncer at
    `host:port`, as `user`, without a password; its rows, by column name."""
    with socket.create_connection((host, port), timeout=ADMIN_TIMEOUT_SECONDS) as sock:
        parameters = f"user\0{user}\0database\0pgbouncer\0\0".encode()
        sock.sendall(struct.pack("!ii", 8 + len(parameters), PROTOCOL_VERSION) + parameters)
        _until_ready(sock)
        query = command.encode() + b"\0"
        sock.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
        rows = _until_ready(sock)
        sock.sendall(b"X" + struct.pack("!i", 4))
    return rows


def _until_ready(sock: socket.socket) -> list[dict[str, str | None]]:
    """Read messages until ReadyForQuery; the rows that came, by column name."""
    columns: list[str] = []
    rows: list[dict[str, str | None]] = []
    while True:
        kind, body = _message(sock)
        match kind:
            case b"R":
                (code,) = struct.unpack_from("!i", body)
                if code != 0:
                    msg = f"PgBouncer's admin console asks for a password (authentication {code})"
                    raise RuntimeError(msg)
            case b"E":
                fields = {field[:1]: field[1:].decode() for field in body.split(b"\0") if field}
                msg = f"PgBouncer's admin console: {fields.get(b'M', body.decode())}"
                raise RuntimeError(msg)
            case b"T":
                (count,) = struct.unpack_from("!h", body)
                offset, columns = 2, []
                for _ in range(count):
                    end = body.index(b"\0", offset)
                    columns.append(body[offset:end].decode())
                    offset = end + 1 + 18  # table oid, column, type oid, size, modifier, format
            case b"D":
                (count,) = struct.unpack_from("!h", body)
                offset = 2
                values: list[str | None] = []
                for _ in range(count):
                    (length,) = struct.unpack_from("!i", body, offset)
                    offset += 4
                    if length < 0:
                        values.append(None)
                    else:
                        values.append(body[offset : offset + length].decode())
                        offset += length
                rows.append(dict(zip(columns, values, strict=True)))
            case b"Z":
                return rows
            case _:  # parameter status, backend key, command complete, notices
                pass


def _message(sock: socket.socket) -> tuple[bytes, bytes]:
    header = _read_exactly(sock, 5)
    (length,) = struct.unpack_from("!i", header, 1)
    return header[:1], _read_exactly(sock, length - 4)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            msg = "PgBouncer's admin console closed the connection"
            raise ConnectionError(msg)
        data += chunk
    return data
