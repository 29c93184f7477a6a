"""Hostile bodies against the served app: oversized bodies, declared or streamed, get `413` at
once and cost the server next to no memory; the client is made to stop sending.

The default render (SQLite) under real uvicorn, driven by raw sockets: a client that sends its
body while watching for an answer, as curl does, stops at the first byte of it.
"""

import json
import os
import select
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
import pytest

from .helpers import PACKAGE, run, serve

pytestmark = [pytest.mark.render, pytest.mark.xdist_group("sqlite-plain")]

BODY_BYTES: Final = 200 * 2**20
CHUNK: Final = b" " * 2**16
CLIENTS_PER_FRAMING: Final = 4
# Beyond these, a client gives up: the test fails rather than hang.
DEADLINE_SECONDS: Final = 30
SOCKET_TIMEOUT_SECONDS: Final = 10
# What the server may grow by (its peak RSS against its RSS before) for all the bodies together.
RSS_GROWTH_BOUND: Final = 50 * 2**20
# What a client may have sent before it sees the answer: the limit, and the sockets' buffers.
SENT_BOUND: Final = 32 * 2**20


@dataclass(frozen=True)
class Outcome:
    """How one oversized request ended, seen by its client."""

    answer: bytes  # everything received until the server closed the connection
    sent: int  # bytes of the body sent
    closed: bool  # the server closed the connection (end of stream or reset), no timeout

    @property
    def status(self) -> int:
        return int(self.answer.split(b" ", 2)[1]) if self.answer.startswith(b"HTTP/") else 0

    @property
    def detail(self) -> object:
        return json.loads(self.answer.partition(b"\r\n\r\n")[2] or b"null")


def send_oversized(port: int, chunked: bool) -> Outcome:
    """`POST /cities` with a 200 MB body, sent while no answer has come; then read the answer
    until the server closes the connection."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY_BYTES}"
    head = f"POST /cities HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{framing}"
    piece = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if chunked else CHUNK
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_SECONDS) as sock:
        sock.sendall(f"{head}\r\n\r\n".encode())
        sent = _send_until_answered(sock, piece)
        answer, closed = b"", False
        try:
            while data := sock.recv(2**16):
                answer += data
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    return Outcome(answer, sent, closed)


def _send_until_answered(sock: socket.socket, piece: bytes) -> int:
    sent, pending = 0, b""
    deadline = time.monotonic() + DEADLINE_SECONDS
    sock.setblocking(False)
    try:
        while sent < BODY_BYTES and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], SOCKET_TIMEOUT_SECONDS)
            if readable or not writable:
                break
            pending = pending or piece
            try:
                written = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                break
            pending, sent = pending[written:], sent + written
    finally:
        sock.settimeout(SOCKET_TIMEOUT_SECONDS)
    return sent


def rss(pid: int) -> dict[str, int]:
    """The process's resident memory now (`VmRSS`) and at its peak (`VmHWM`), in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


def server_pid(base_url: str) -> int:
    """The pid of the uvicorn that `serve` started for `base_url`: this process's child."""
    port_argument = f"--port={urlsplit(base_url).port}".encode()
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if port_argument in arguments and parent == os.getpid():
            return int(entry.name)
    pytest.fail(f"no uvicorn process serves {base_url}")


def test_oversized_bodies_are_refused_at_once_and_cost_no_memory(
    installed_variant: Callable[[str], Path], tmp_path: Path
) -> None:
    project = installed_variant("sqlite-plain")
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cities.db'}"}
    run([str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"], project, env)
    log = tmp_path / "server.log"

    with (
        serve(project, env, log) as base_url,
        httpx.Client(base_url=base_url, timeout=SOCKET_TIMEOUT_SECONDS) as client,
    ):
        port, pid = urlsplit(base_url).port or 0, server_pid(base_url)
        assert client.post("/cities", json={"name": "Lyon", "population": 1}).status_code == 201
        before = rss(pid)["VmRSS"]

        framings = [False, True] * CLIENTS_PER_FRAMING
        with ThreadPoolExecutor(len(framings)) as pool:
            outcomes = list(pool.map(partial(send_oversized, port), framings))
        growth = rss(pid)["VmHWM"] - before

        paris = client.post("/cities", json={"name": "Paris", "population": 2})
        assert paris.status_code == 201
        assert [city["name"] for city in client.get("/cities/biggest").json()] == ["Paris", "Lyon"]

    for outcome in outcomes:
        assert outcome.status == 413, outcome.answer[:500]
        assert isinstance(outcome.detail, dict)
        assert set(outcome.detail) == {"detail"}
        assert b"\r\nconnection: close\r\n" in outcome.answer.lower()
        assert outcome.closed, "the server kept the connection open"
        assert outcome.sent < SENT_BOUND, f"the server read on: {outcome.sent} bytes sent"
    assert growth < RSS_GROWTH_BOUND, f"the server grew by {growth / 2**20:.0f} MB"
    assert "Traceback" not in log.read_text()
