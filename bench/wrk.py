"""The load generator: find (or install) wrk, run it against an endpoint, and parse its report.

wrk rather than a Python client: on two cores, a Python load generator would take the CPU that
the server under test needs, and measure itself as much as the server.
"""

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import apt

logger = logging.getLogger(__name__)

INSTALL_HINT: Final = (
    "wrk is not installed: install it with `sudo apt-get install -y wrk` (Debian, Ubuntu) "
    "or `brew install wrk` (macOS), then run the benchmark again"
)
POST_SCRIPT: Final = Path(__file__).resolve().parent / "post.lua"


@dataclass(frozen=True)
class Endpoint:
    """What wrk sends: a GET of `path`, or the requests that `script` makes."""

    name: str
    path: str
    script: Path | None = None


ENDPOINTS: Final = (
    Endpoint("GET /cities/biggest", "/cities/biggest?limit=20"),
    Endpoint("POST /cities", "/cities", POST_SCRIPT),
)


@dataclass(frozen=True)
class Load:
    """wrk's options: one thread keeps `connections` open for `duration` seconds."""

    connections: int
    duration: int
    threads: int = 1

    def options(self) -> list[str]:
        return [
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{self.duration}s",
            "--latency",
        ]


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured. Latencies are in milliseconds."""

    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int


def find_wrk() -> str | None:
    """The path of wrk; when it is missing, install it with apt-get if we are root, else None."""
    return apt.find_or_install("wrk")


def version(wrk: str) -> str:
    """wrk's version line, e.g. "wrk debian/4.1.0-3+b2 [epoll]"."""
    output = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
    return output.split(" Copyright")[0].strip()


def run(wrk: str, base_url: str, endpoint: Endpoint, load: Load, name_prefix: str) -> WrkResult:
    """Load `endpoint` of the server at `base_url` and return what wrk measured. An endpoint's
    script gets `name_prefix`, which must be unique to the run, the round and the app."""
    command = [wrk, *load.options()]
    if endpoint.script:
        command += ["-s", str(endpoint.script), base_url + endpoint.path, "--", name_prefix]
    else:
        command.append(base_url + endpoint.path)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=load.duration + 60, check=False
    )
    if result.returncode:
        msg = f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr.strip()}"
        raise RuntimeError(msg)
    return parse(result.stdout)


# wrk prints durations with a unit of its choosing.
_MILLISECONDS_PER: Final = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SOCKET_ERRORS: Final = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def parse(output: str) -> WrkResult:
    """Read wrk's `--latency` report: throughput, median and 99th percentile, failures."""
    socket_errors = _SOCKET_ERRORS.search(output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests_per_second=float(_find(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=_milliseconds(_find(r"^\s+50%\s+(\S+)\s*$", output)),
        p99_ms=_milliseconds(_find(r"^\s+99%\s+(\S+)\s*$", output)),
        requests=int(_find(r"(\d+) requests in ", output)),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(map(int, socket_errors.groups())) if socket_errors else 0,
    )


def _find(pattern: str, output: str) -> str:
    match = re.search(pattern, output, re.MULTILINE)
    if not match:
        msg = f"wrk's report has no match for {pattern!r}:\n{output}"
        raise ValueError(msg)
    return match[1]


def _milliseconds(duration: str) -> float:
    """`"812.00us"`, `"1.25ms"`, `"2.01s"`... in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", duration)
    if not match:
        msg = f"not a wrk duration: {duration!r}"
        raise ValueError(msg)
    return float(match[1]) * _MILLISECONDS_PER[match[2]]
