"""`python -m bench.instructions`: the CPU instructions that the app spends on a request,
counted by valgrind's callgrind, in-process, one request at a time (`apps/drive.py`).

Throughput on a shared 2-core machine moves by tens of percent between runs of the same app,
so a cost of a few percent (the access log, the metrics, entities rather than rows) is lost in
its noise. An instruction count is the same from one run to the next (to within 0.1%): it
measures what the app's Python does, without the server (uvicorn), the kernel or the database,
so it is no throughput, only the share of the app's work that a choice costs.

For `GET /cities/biggest` and `POST /cities`, it counts the plain variant as `serve` runs it
(access log on; with one worker, and with several, whose metrics go to files), with the access
log off, without its telemetry (request ids, access log, metrics), and the seed pattern; it
prints a table (instructions per request, and each against the variant as served) and writes
`instructions.json` in `--out`. About 3 minutes, 2 at a time.
"""

import argparse
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from . import apt, database, projects
from .projects import PACKAGE, Project, tool_env
from .results import DEFAULT_OUT
from .servers import REFERENCE_APPS_DIR, SEED_PATTERN

logger = logging.getLogger("bench")

DRIVER: Final = REFERENCE_APPS_DIR / "drive.py"
SEED_ROWS: Final = 1_000
READY_TIMEOUT_SECONDS: Final = 600


@dataclass(frozen=True)
class Setup:
    """An app as the driver serves it."""

    name: str
    description: str
    target: str
    options: tuple[str, ...]
    multiprocess_metrics: bool = False


SETUPS: Final = (
    Setup("served", "as `serve` runs it", f"{PACKAGE}.main:app", ("--access-log",)),
    Setup(
        "served, multiprocess",
        "as each of `serve --workers N`'s runs it (metrics in files)",
        f"{PACKAGE}.main:app",
        ("--access-log",),
        multiprocess_metrics=True,
    ),
    Setup("no access log", "`serve --no-access-log`", f"{PACKAGE}.main:app", ()),
    Setup(
        "no telemetry",
        "no request ids, access log or metrics",
        f"{PACKAGE}.main:app",
        ("--no-telemetry",),
    ),
    Setup(
        SEED_PATTERN,
        "the seed pattern",
        f"{SEED_PATTERN}:app",
        ("--app-dir", str(REFERENCE_APPS_DIR)),
    ),
)
METHODS: Final = ("GET", "POST")


@dataclass(frozen=True)
class Count:
    setup: str
    method: str
    instructions_per_request: int


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument(
        "--requests", type=int, default=200, help="requests counted per app and endpoint"
    )
    parser.add_argument("--database-url", default=database.DEFAULT_URL)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Stopped, it still drops its scratch database on the way out.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    valgrind = apt.find_or_install("valgrind")
    if valgrind is None:
        sys.stderr.write("valgrind is not installed: `sudo apt-get install -y valgrind`\n")
        return 2
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as workdir,
        database.scratch_database(database.dsn(args.database_url), prefix="bench") as url,
    ):
        project = projects.render("plain", Path(workdir) / "plain", url)
        projects.install(project)
        for schema in ("plain", SEED_PATTERN):
            projects.init_db(project.path, url, schema=schema)
        database.seed(url, ["plain", SEED_PATTERN], SEED_ROWS)
        jobs = [(setup, method) for method in METHODS for setup in SETUPS]
        with ThreadPoolExecutor(max_workers=2) as executor:
            counts = list(
                executor.map(
                    lambda job: count(valgrind, project, url, *job, args.requests, Path(workdir)),
                    jobs,
                )
            )
    sys.stdout.write(table(counts))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "instructions.json"
    payload = {
        "requests": args.requests,
        "wall_seconds": round(time.monotonic() - start),
        "counts": [asdict(c) for c in counts],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    sys.stdout.write(f"\nWall time {time.monotonic() - start:.0f} s. Wrote {path}\n")
    return 0


def count(
    valgrind: str, project: Project, url: str, setup: Setup, method: str, requests: int, work: Path
) -> Count:
    """Instructions per request of `setup` serving `requests` of `method`, once warm."""
    ready_dir = Path(tempfile.mkdtemp(dir=work))
    output = ready_dir / "callgrind.out"
    env = {
        "DATABASE_URL": url,
        "DB_SCHEMA": "plain",
        "BENCH_DATABASE_URL": database.sqlalchemy_url(url),
        "BENCH_SCHEMA": SEED_PATTERN,
        "DRIVE_READY_DIR": str(ready_dir),
        "PYTHONHASHSEED": "0",
    }
    if setup.multiprocess_metrics:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(ready_dir)
    python = str(project.path / ".venv/bin/python")
    command = [valgrind, "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={output}"]
    command += [python, str(DRIVER), setup.target, method, str(requests), *setup.options]
    with subprocess.Popen(
        command,
        cwd=project.path,
        env=tool_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as driver:
        ready = ready_dir / str(driver.pid)  # valgrind runs the program in its own process
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not ready.exists():
            if driver.poll() is not None or time.monotonic() > deadline:
                driver.kill()
                msg = f"{setup.name} {method}: the driver did not start:\n{driver.stderr.read()}"
                raise RuntimeError(msg)
            time.sleep(0.5)
        subprocess.run(
            ["callgrind_control", "-i", "on", str(driver.pid)], check=True, capture_output=True
        )
        ready.unlink()
        _, stderr = driver.communicate()
    if driver.returncode:
        msg = f"{setup.name} {method}: the driver failed:\n{stderr[-3000:]}"
        raise RuntimeError(msg)
    collected = int(stderr.split("Collected : ")[1].split()[0])
    logger.info("%s, %s: %s instructions per request", setup.name, method, collected // requests)
    return Count(setup.name, method, collected // requests)


def table(counts: Sequence[Count]) -> str:
    """Instructions per request, and each against the variant as served."""
    lines = ["| app | " + " | ".join(f"`{m}` instructions per request" for m in METHODS) + " |"]
    lines.append("|---|" + "---|" * len(METHODS))
    by_key = {(c.setup, c.method): c.instructions_per_request for c in counts}
    for setup in SETUPS:
        cells = []
        for method in METHODS:
            value, served = by_key[setup.name, method], by_key[SETUPS[0].name, method]
            cells.append(f"{value / 1e6:.2f} M ({value / served - 1:+.1%})")
        lines.append(f"| {setup.name}: {setup.description} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
