"""`python -m bench`: render the variants, serve them and the reference apps in turn, load each
with wrk, and report throughput and latency against the targets: a table on stdout, JSON and a
chart in `--out`. Progress goes to stderr. See `--help`.
"""

import argparse
import itertools
import logging
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

from . import database, pgbouncer, projects, replicas, report, scale_out, servers, wrk
from .projects import Project
from .results import DEFAULT_OUT, REFERENCES, Measurement, check_targets, summarize
from .servers import ORM_FLOOR, SEED_PATTERN, App, Pool

logger = logging.getLogger("bench")

# What a full run measures (about 9 minutes), and what --smoke measures (a few seconds).
# Many short rounds rather than a few long ones: the two runs of a round are closer in time, and
# the median of a round's ratios has more rounds to settle on.
FULL: Final[dict[str, Any]] = {
    "variants": ("plain", "scoped"),
    "rounds": 8,
    "duration": 3,
    "warmup": 1,
    "seed_rows": 10_000,
}
SMOKE: Final[dict[str, Any]] = {
    "variants": ("plain",),
    "rounds": 1,
    "duration": 1,
    "warmup": 0,
    "seed_rows": 1_000,
}


@dataclass(frozen=True)
class Options:
    """What to measure, and for how long."""

    variants: tuple[str, ...]
    rounds: int
    duration: int
    warmup: int
    seed_rows: int
    connections: int
    pool: Pool
    database_url: str
    out: Path
    smoke: bool
    workers: int = 1
    pooler: str = "none"
    scale_out: bool = False
    replica: bool = False

    @property
    def load(self) -> wrk.Load:
        """wrk's load for each measured run."""
        return wrk.Load(self.connections, self.duration)


@dataclass(frozen=True)
class Outcome:
    """Everything a run measured, before it is summarized."""

    started_at: str
    wall_seconds: float
    projects: list[Project]
    measurements: list[Measurement]
    machine: dict[str, Any]


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    wrk_path = wrk.find_wrk()
    if wrk_path is None:
        sys.stderr.write(wrk.INSTALL_HINT + "\n")
        return 2
    pgbouncer_path = pgbouncer.find_pgbouncer()
    if pgbouncer_path is None and (options.scale_out or options.pooler == "pgbouncer"):
        sys.stderr.write(pgbouncer.INSTALL_HINT + "\n")
        return 2
    try:
        if options.replica:
            run_replica(options, wrk_path)
            return 0
        if options.scale_out:
            assert pgbouncer_path
            run_scale_out(options, wrk_path, pgbouncer_path)
            return 0
        outcome = run(options, wrk_path, pgbouncer_path)
    except KeyboardInterrupt:
        logger.error("interrupted: servers stopped, scratch database dropped")
        return 130
    publish(outcome, options)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the rendered service against raw asyncpg, the common seed "
        "pattern and the floor of an app on SQLAlchemy's session, with wrk, on a scratch "
        "PostgreSQL database.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a run of a few seconds that checks the harness: the plain variant, 1 round of "
        "1 s per app and endpoint, no warm-up, 1,000 rows, no test-suite timing",
    )
    parser.add_argument(
        "--variants",
        type=_variant_names,
        help=f"variants to measure, comma-separated, of {', '.join(projects.VARIANTS)} "
        f"(default: all)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"rounds per variant, reference and endpoint (default {FULL['rounds']})",
    )
    parser.add_argument(
        "--duration",
        type=int,
        help=f"seconds of load per app in a round (default {FULL['duration']})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=f"seconds of unmeasured load per endpoint first (default {FULL['warmup']})",
    )
    parser.add_argument(
        "--seed-rows", type=int, help=f"cities in each app's table (default {FULL['seed_rows']})"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="connections wrk keeps open (default 32)"
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        help="the variants' DB_POOL_SIZE (default: --connections, a connection for each request "
        "in flight, as the rendered README advises; raw_asyncpg gets the same total)",
    )
    parser.add_argument(
        "--max-overflow",
        type=int,
        default=0,
        help="the variants' DB_MAX_OVERFLOW (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn workers of every app, which share its pool's connections (default 1)",
    )
    parser.add_argument(
        "--pooler",
        choices=("none", "pgbouncer"),
        default="none",
        help="`pgbouncer`: the variants connect through a PgBouncer of the run's own, in "
        "transaction pooling mode, with DB_POOLER=pgbouncer (default none)",
    )
    parser.add_argument(
        "--scale-out",
        action="store_true",
        help="instead: the plain variant with 1 and 2 workers, direct, through Debian's "
        "PgBouncer (pgbouncer) and through 1.24.1 built from source (pgbouncer-prepared), "
        "side by side (writes scale-out.json)",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="instead: the plain variant with 1 and 2 workers on a primary of the run's own, "
        "alone and with a streaming replica for reads, side by side (writes replica.json)",
    )
    parser.add_argument(
        "--database-url",
        default=database.DEFAULT_URL,
        help="a database on the PostgreSQL server to use; the run makes a scratch database "
        "beside it and drops it at the end (default %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory for latest.json and latest.png (default bench/results)",
    )
    args = parser.parse_args(argv)
    # --smoke changes the defaults; options given explicitly win either way.
    chosen = (SMOKE if args.smoke else FULL) | {
        key: getattr(args, key) for key in FULL if getattr(args, key) is not None
    }
    return Options(
        **chosen,
        connections=args.connections,
        pool=Pool(args.pool_size or args.connections, args.max_overflow),
        database_url=args.database_url,
        out=args.out,
        smoke=args.smoke,
        workers=args.workers,
        pooler=args.pooler,
        scale_out=args.scale_out,
        replica=args.replica,
    )


def run(options: Options, wrk_path: str, pgbouncer_path: str | None) -> Outcome:
    """Render and install the variants, make and seed the database, then measure every app."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.monotonic()
    # A libpq URL, which the apps and asyncpg read, whatever form --database-url has.
    server_url = database.dsn(options.database_url)
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as workdir,
        database.scratch_database(server_url, prefix="bench") as database_url,
        ExitStack() as stack,
    ):
        rendered = [
            _prepare(name, Path(workdir) / name, database_url, time_suite=not options.smoke)
            for name in options.variants
        ]
        variants_url = database_url
        if options.pooler == "pgbouncer":
            assert pgbouncer_path
            bouncer = stack.enter_context(_pgbouncer(pgbouncer_path, database_url))
            variants_url = bouncer.url
        apps = [
            servers.variant_app(
                project, variants_url, options.pool, workers=options.workers, pooler=options.pooler
            )
            for project in rendered
        ]
        apps += [
            servers.reference_app(
                name, rendered[0], database_url, options.pool, workers=options.workers
            )
            for name in REFERENCES
        ]
        _create_tables(apps, database_url)
        database.seed(database_url, [app.name for app in apps], options.seed_rows)
        logger.info("%s rows in each of %s", options.seed_rows, ", ".join(app.name for app in apps))
        measurements = _measure(apps, options, wrk_path, Path(workdir))
        machine = _machine(rendered[0], database_url, wrk_path, options)
    return Outcome(started_at, time.monotonic() - start, rendered, measurements, machine)


def _pgbouncer(binary: str, database_url: str) -> AbstractContextManager[pgbouncer.PgBouncer]:
    return pgbouncer.pgbouncer(binary, database_url, pool_size=scale_out.PGBOUNCER_SERVER_POOL)


def run_scale_out(options: Options, wrk_path: str, pgbouncer_path: str) -> None:
    """The plain variant in each configuration of `scale_out`, side by side; the table and the
    targets on stdout, every round in `scale-out.json`. PgBouncer 1.24.1 is built (once per
    machine, `bench.pgbouncer_build`) when missing."""
    start = time.monotonic()
    server_url = database.dsn(options.database_url)
    prepared_path = pgbouncer.pgbouncer_binary(pgbouncer.BUILT)
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as workdir,
        database.scratch_database(server_url, prefix="bench") as database_url,
        _pgbouncer(pgbouncer_path, database_url) as bouncer,
        pgbouncer.pgbouncer(
            prepared_path,
            database_url,
            pool_size=scale_out.PGBOUNCER_SERVER_POOL,
            max_prepared_statements=scale_out.MAX_PREPARED_STATEMENTS,
        ) as prepared_bouncer,
    ):
        project = _prepare("plain", Path(workdir) / "plain", database_url, time_suite=False)
        projects.init_db(project.path, database_url, schema=project.name)
        database.seed(database_url, [project.name], options.seed_rows)
        urls = {
            scale_out.DIRECT: database_url,
            scale_out.PGBOUNCER: bouncer.url,
            scale_out.PGBOUNCER_PREPARED: prepared_bouncer.url,
        }
        apps = scale_out.apps(project, urls, options.pool)
        warmup = wrk.Load(options.connections, options.warmup)
        measurements = scale_out.measure(
            apps, options.load, warmup, options.rounds, wrk_path, Path(workdir)
        )
        machine = _machine(project, database_url, wrk_path, options)
    rows, ratios = scale_out.rows(measurements), scale_out.ratios(measurements)
    checked = scale_out.targets(ratios)
    sys.stdout.write(scale_out.table(rows, ratios))
    sys.stdout.write("\nTargets (reported, never enforced):\n" + report.targets(checked))
    options.out.mkdir(parents=True, exist_ok=True)
    json_path = options.out / "scale-out.json"
    report.write_json(
        json_path,
        {
            "wall_seconds": round(time.monotonic() - start, 1),
            "options": asdict(options) | {"out": str(options.out)},
            "machine": machine
            | {
                "pgbouncer_server_pool": scale_out.PGBOUNCER_SERVER_POOL,
                "pgbouncer_versions": [
                    ".".join(map(str, bouncer.version)),
                    ".".join(map(str, pgbouncer.pgbouncer_version(prepared_path))),
                ],
                "max_prepared_statements": scale_out.MAX_PREPARED_STATEMENTS,
            },
            "rounds": [asdict(measurement) for measurement in measurements],
            "rows": [asdict(row) for row in rows],
            "ratios": [asdict(ratio) for ratio in ratios],
            "targets": [asdict(target) for target in checked],
        },
    )
    sys.stdout.write(f"\nWall time {time.monotonic() - start:.0f} s. Wrote {json_path}\n")


def run_replica(options: Options, wrk_path: str) -> None:
    """The plain variant on a primary and a streaming replica of the run's own (`bench.replicas`,
    as the tests make them), alone and with the replica, side by side; the table on stdout,
    every round in `replica.json`."""
    start = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-") as workdir,
        replicas.primary_and_replica() as pair,
        database.scratch_database(pair.primary.url(), prefix="bench") as database_url,
    ):
        project = _prepare("plain", Path(workdir) / "plain", database_url, time_suite=False)
        projects.init_db(project.path, database_url, schema=project.name)
        database.seed(database_url, [project.name], options.seed_rows)
        pair.wait_for_replay()
        replica_url = pair.replica.url(database_url.rpartition("/")[2])
        apps = scale_out.replica_apps(project, database_url, replica_url, options.pool)
        warmup = wrk.Load(options.connections, options.warmup)
        measurements = scale_out.measure(
            apps, options.load, warmup, options.rounds, wrk_path, Path(workdir)
        )
        machine = _machine(project, database_url, wrk_path, options)
    rows = scale_out.rows(measurements, scale_out.REPLICA_CONFIGURATIONS)
    ratios = scale_out.ratios(measurements, scale_out.REPLICA_COMPARISONS)
    sys.stdout.write(scale_out.table(rows, ratios))
    options.out.mkdir(parents=True, exist_ok=True)
    json_path = options.out / "replica.json"
    report.write_json(
        json_path,
        {
            "wall_seconds": round(time.monotonic() - start, 1),
            "options": asdict(options) | {"out": str(options.out)},
            "machine": machine | {"servers": "primary and replica of the run's own, fsync off"},
            "rounds": [asdict(measurement) for measurement in measurements],
            "rows": [asdict(row) for row in rows],
            "ratios": [asdict(ratio) for ratio in ratios],
        },
    )
    sys.stdout.write(f"\nWall time {time.monotonic() - start:.0f} s. Wrote {json_path}\n")


def _prepare(name: str, path: Path, database_url: str, *, time_suite: bool) -> Project:
    project = projects.render(name, path, database_url)
    logger.info("rendered %s in %.2f s", name, project.render_seconds)
    projects.install(project)
    if time_suite:
        project = projects.time_suite(project)
        logger.info("%s's own test suite: %.2f s", name, project.suite_seconds)
    return project


def _create_tables(apps: list[App], database_url: str) -> None:
    """Every app's schema and tables, by a variant's `init-db`: the same DDL for all, indexes
    included. All at once: each command spends a second importing its modules."""
    with ThreadPoolExecutor() as executor:
        commands = [
            executor.submit(projects.init_db, app.project, database_url, schema=app.name)
            for app in apps
        ]
    for command in commands:
        command.result()  # raises the command's failure, if any


def _measure(apps: list[App], options: Options, wrk_path: str, workdir: Path) -> list[Measurement]:
    """Measure each variant beside seed_pattern and raw_asyncpg, and orm_floor beside
    seed_pattern: both served at once, loaded in turn.

    The machine's speed drifts by tens of percent within minutes. So a variant and a reference
    are loaded seconds apart, in the order ABBA ABBA... (a drift during a round touches both
    alike), and their ratio is taken per round. Two apps at a time keep at most two pools open.
    """
    run_id = uuid.uuid4().hex[:8]
    load = options.load
    warmup = wrk.Load(options.connections, options.warmup)
    variants = [app for app in apps if app.name not in REFERENCES]
    references = {app.name: app for app in apps if app.name in REFERENCES}
    # The floor runs beside the seed pattern only: a variant's ratio to it is taken through
    # their ratios to the seed pattern (`results.summarize`), at the cost of one pair, not one
    # per variant.
    floor = references.pop(ORM_FLOOR, None)
    pairs = list(itertools.product(variants, references.values()))
    if floor is not None and SEED_PATTERN in references:
        pairs.append((floor, references[SEED_PATTERN]))
    measurements = []
    for variant, reference in pairs:
        pair = (variant, reference)
        # wrk's POST names must be unique in the run: they start with this, the round and the app.
        names = f"{run_id}-{variant.name}-{reference.name}"
        with (
            servers.serve(variant, workdir / f"{variant.name}.log") as variant_url,
            servers.serve(reference, workdir / f"{reference.name}.log") as reference_url,
        ):
            base_urls = {variant.name: variant_url, reference.name: reference_url}
            for endpoint in wrk.ENDPOINTS:
                for app in pair if options.warmup else ():
                    prefix = f"{names}-warmup-{app.name}"
                    wrk.run(wrk_path, base_urls[app.name], endpoint, warmup, prefix)
                for round_number in range(1, options.rounds + 1):
                    for app in pair if round_number % 2 else pair[::-1]:
                        prefix = f"{names}-round{round_number}-{app.name}"
                        result = wrk.run(wrk_path, base_urls[app.name], endpoint, load, prefix)
                        other = reference if app is variant else variant
                        measurement = Measurement(
                            round_number, app.name, endpoint.name, other.name, result
                        )
                        measurements.append(measurement)
                        _log(measurement, options.rounds)
    return measurements


def _log(measurement: Measurement, rounds: int) -> None:
    result = measurement.result
    logger.info(
        "round %s/%s  %-12s  %-19s  %6.0f req/s  p50 %5.1f ms  p99 %6.1f ms  (beside %s)",
        measurement.round,
        rounds,
        measurement.app,
        measurement.endpoint,
        result.requests_per_second,
        result.p50_ms,
        result.p99_ms,
        measurement.beside,
    )


def _machine(
    project: Project, database_url: str, wrk_path: str, options: Options
) -> dict[str, Any]:
    """Where the numbers come from: they mean little without it."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "rendered_venv": projects.versions(project),
        "postgresql": database.server_version(database_url),
        "wrk": {
            "version": wrk.version(wrk_path),
            "options": options.load.options(),
        },
    }


def publish(outcome: Outcome, options: Options) -> None:
    """The table and the targets on stdout; latest.json and latest.png in `options.out`."""
    summaries = summarize(outcome.measurements)
    targets = check_targets(summaries, outcome.projects)
    sys.stdout.write(report.table(summaries))
    sys.stdout.write("\nTargets (reported, never enforced):\n" + report.targets(targets))

    options.out.mkdir(parents=True, exist_ok=True)
    json_path, chart_path = options.out / "latest.json", options.out / "latest.png"
    report.write_json(
        json_path,
        {
            "started_at": outcome.started_at,
            "wall_seconds": round(outcome.wall_seconds, 1),
            "options": asdict(options) | {"out": str(options.out)},
            "machine": outcome.machine,
            "projects": [
                {key: value for key, value in asdict(project).items() if key != "path"}
                for project in outcome.projects
            ],
            "rounds": [asdict(measurement) for measurement in outcome.measurements],
            "summary": [asdict(summary) for summary in summaries],
            "targets": [asdict(target) for target in targets],
        },
    )
    wrk_options = " ".join(outcome.machine["wrk"]["options"])
    report.write_chart(
        chart_path,
        summaries,
        f"{options.rounds} round(s) per variant and reference, side by side; wrk {wrk_options}, "
        f"{outcome.machine['cpu_count']} CPUs, variants' pool "
        f"{options.pool.size}+{options.pool.max_overflow}",
    )
    sys.stdout.write(
        f"\nWall time {outcome.wall_seconds:.0f} s. Wrote {json_path} and {chart_path}\n"
    )


def _variant_names(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in projects.VARIANTS]
    if unknown or not names:
        msg = f"choose among {', '.join(projects.VARIANTS)}, comma-separated (got {value!r})"
        raise argparse.ArgumentTypeError(msg)
    return names


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Exit through the `finally` blocks, which stop the servers and drop the database."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
