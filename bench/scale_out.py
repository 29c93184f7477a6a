"""`python -m bench --scale-out`: the `plain` variant served with 1 and 2 uvicorn workers,
connecting to PostgreSQL directly, through Debian's PgBouncer 1.18 (`DB_POOLER=pgbouncer`: no
statement kept) and through PgBouncer 1.24.1 (`pgbouncer-prepared`: statements kept), in
transaction pooling mode, side by side.

The four are served at once and loaded in turn in every round, in an order that rotates (a drift
of the machine's speed during a round touches all alike); each ratio is the median over the
rounds of the ratio of two runs of the same round. Two targets, reported and never enforced:
2 workers serve at least 1.4x one worker, and PgBouncer costs at most 25% of direct throughput
at the same worker count; and, through 1.24 with prepared statements, GET keeps at least 0.9x of
direct with 1 worker and 0.75x with 2.
"""

import logging
import statistics
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from . import wrk
from .projects import Project
from .results import Measurement, Target
from .servers import App, Pool, serve, variant_app

logger = logging.getLogger(__name__)

DIRECT: Final = "direct"
PGBOUNCER: Final = "PgBouncer 1.18"
PGBOUNCER_PREPARED: Final = "PgBouncer 1.24"
# Each route's DB_POOLER.
POOLERS: Final = {DIRECT: "none", PGBOUNCER: "pgbouncer", PGBOUNCER_PREPARED: "pgbouncer-prepared"}
# 1.24's default; the app's statements are a handful.
MAX_PREPARED_STATEMENTS: Final = 200
REPLICA: Final = "replica"  # direct, reads on a streaming replica (`--replica`)
# PgBouncer's server connections for the app: enough for the queries two cores run at once.
PGBOUNCER_SERVER_POOL: Final = 20
MIN_TWO_WORKERS_SPEEDUP: Final = 1.4
MAX_PGBOUNCER_COST: Final = 0.25
# Through 1.24 with prepared statements, GET against direct (issue 22).
MIN_PREPARED_GET: Final = {1: 0.9, 2: 0.75}


@dataclass(frozen=True)
class Configuration:
    workers: int
    route: str  # DIRECT, PGBOUNCER or PGBOUNCER_PREPARED

    @property
    def name(self) -> str:
        return f"{self.workers} worker{'s' if self.workers > 1 else ''}, {self.route}"


CONFIGURATIONS: Final = tuple(
    Configuration(workers, route)
    for route in (DIRECT, PGBOUNCER, PGBOUNCER_PREPARED)
    for workers in (1, 2)
)
# `python -m bench --replica`: the primary alone, and with its replica for reads.
REPLICA_CONFIGURATIONS: Final = tuple(
    Configuration(workers, route) for route in (DIRECT, REPLICA) for workers in (1, 2)
)


@dataclass(frozen=True)
class Ratio:
    endpoint: str
    description: str
    numerator: str
    denominator: str
    ratio: float


@dataclass(frozen=True)
class Row:
    configuration: str
    endpoint: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


def apps(project: Project, urls: Mapping[str, str], pool: Pool) -> list[App]:
    """The variant in each configuration, at the URL of its route (`urls`); the workers of one
    share `pool`'s connections."""
    return [
        variant_app(
            project,
            urls[configuration.route],
            pool,
            workers=configuration.workers,
            pooler=POOLERS[configuration.route],
            name=configuration.name,
        )
        for configuration in CONFIGURATIONS
    ]


def replica_apps(project: Project, primary_url: str, replica_url: str, pool: Pool) -> list[App]:
    """The variant with 1 and 2 workers, on the primary alone and with the replica for reads
    (`DATABASE_READ_URL`: a pool of the same size on the replica, beside the primary's)."""
    served = []
    for configuration in REPLICA_CONFIGURATIONS:
        app = variant_app(
            project, primary_url, pool, workers=configuration.workers, name=configuration.name
        )
        if configuration.route == REPLICA:
            app = replace(app, env={**app.env, "DATABASE_READ_URL": replica_url})
        served.append(app)
    return served


def measure(
    served: Sequence[App],
    load: wrk.Load,
    warmup: wrk.Load,
    rounds: int,
    wrk_path: str,
    workdir: Path,
) -> list[Measurement]:
    run_id = uuid.uuid4().hex[:8]
    measurements = []
    with ExitStack() as stack:
        base_urls = {
            app.name: stack.enter_context(serve(app, workdir / f"{app.name}.log".replace(" ", "")))
            for app in served
        }
        for endpoint in wrk.ENDPOINTS:
            for number, app in enumerate(served):
                if warmup.duration:
                    prefix = f"{run_id}-warmup-{number}"
                    wrk.run(wrk_path, base_urls[app.name], endpoint, warmup, prefix)
            for round_number in range(1, rounds + 1):
                shift = round_number % len(served)
                order = list(served[shift:]) + list(served[:shift])
                for app in order if round_number % 2 else order[::-1]:
                    prefix = f"{run_id}-round{round_number}-{served.index(app)}"
                    result = wrk.run(wrk_path, base_urls[app.name], endpoint, load, prefix)
                    measurements.append(
                        Measurement(round_number, app.name, endpoint.name, "", result)
                    )
                    logger.info(
                        "round %s/%s  %-22s  %-19s  %6.0f req/s  p99 %6.1f ms",
                        round_number,
                        rounds,
                        app.name,
                        endpoint.name,
                        result.requests_per_second,
                        result.p99_ms,
                    )
    return measurements


def rows(
    measurements: Sequence[Measurement], configurations: Sequence[Configuration] = CONFIGURATIONS
) -> list[Row]:
    result = []
    for endpoint in dict.fromkeys(m.endpoint for m in measurements):
        for configuration in configurations:
            runs = [
                m.result
                for m in measurements
                if m.endpoint == endpoint and m.app == configuration.name
            ]
            if runs:
                result.append(
                    Row(
                        configuration.name,
                        endpoint,
                        statistics.median(run.requests_per_second for run in runs),
                        statistics.median(run.p50_ms for run in runs),
                        statistics.median(run.p99_ms for run in runs),
                        sum(run.non_2xx for run in runs),
                        sum(run.socket_errors for run in runs),
                    )
                )
    return result


# What each ratio compares: (description, numerator, denominator).
COMPARISONS: Final = (
    *(
        (f"2 workers / 1, {route}", Configuration(2, route), Configuration(1, route))
        for route in (DIRECT, PGBOUNCER, PGBOUNCER_PREPARED)
    ),
    *(
        (
            f"{route} / direct, {workers} worker{'s' if workers > 1 else ''}",
            Configuration(workers, route),
            Configuration(workers, DIRECT),
        )
        for route in (PGBOUNCER, PGBOUNCER_PREPARED)
        for workers in (1, 2)
    ),
)
REPLICA_COMPARISONS: Final = (
    ("2 workers / 1, primary alone", Configuration(2, DIRECT), Configuration(1, DIRECT)),
    ("2 workers / 1, with replica", Configuration(2, REPLICA), Configuration(1, REPLICA)),
    ("with replica / alone, 1 worker", Configuration(1, REPLICA), Configuration(1, DIRECT)),
    ("with replica / alone, 2 workers", Configuration(2, REPLICA), Configuration(2, DIRECT)),
)


def ratios(
    measurements: Sequence[Measurement],
    comparisons: Sequence[tuple[str, Configuration, Configuration]] = COMPARISONS,
) -> list[Ratio]:
    """Each comparison's median over the rounds of the ratio within the round."""
    rate = {(m.round, m.app, m.endpoint): m.result.requests_per_second for m in measurements}
    result = []
    for endpoint in dict.fromkeys(m.endpoint for m in measurements):
        for description, numerator, denominator in comparisons:
            paired = [
                value / reference
                for (round_, app, measured), value in rate.items()
                if measured == endpoint
                and app == numerator.name
                and (reference := rate.get((round_, denominator.name, endpoint)))
            ]
            if paired:
                result.append(
                    Ratio(
                        endpoint,
                        description,
                        numerator.name,
                        denominator.name,
                        statistics.median(paired),
                    )
                )
    return result


def targets(computed: Sequence[Ratio]) -> list[Target]:
    checked = []
    by_name = {configuration.name: configuration for configuration in CONFIGURATIONS}
    for ratio in computed:
        numerator = by_name[ratio.numerator]
        if ratio.description.startswith("2 workers"):
            minimum = MIN_TWO_WORKERS_SPEEDUP
            goal = f">= {minimum}x"
        elif numerator.route == PGBOUNCER_PREPARED and ratio.endpoint.startswith("GET"):
            minimum = MIN_PREPARED_GET[numerator.workers]
            goal = f">= {minimum:.2f}x"
        else:
            minimum = 1 - MAX_PGBOUNCER_COST
            goal = f">= {minimum:.2f}x (costs at most {MAX_PGBOUNCER_COST:.0%})"
        checked.append(
            Target(
                f"{ratio.endpoint}: {ratio.description} {goal}",
                ratio.ratio >= minimum,
                f"{ratio.ratio:.2f}x",
            )
        )
    return checked


def table(computed_rows: Sequence[Row], computed: Sequence[Ratio]) -> str:
    lines = [
        f"{'configuration':<26}  {'endpoint':<19}  {'req/s':>6}  {'p50 ms':>6}  {'p99 ms':>6}"
        f"  {'non-2xx':>7}  {'sock err':>8}"
    ]
    lines += [
        f"{row.configuration:<26}  {row.endpoint:<19}  {row.requests_per_second:>6.0f}"
        f"  {row.p50_ms:>6.1f}  {row.p99_ms:>6.1f}  {row.non_2xx:>7}  {row.socket_errors:>8}"
        for row in computed_rows
    ]
    lines.append("")
    lines += [f"{r.endpoint:<19}  {r.description:<36}  {r.ratio:.2f}x" for r in computed]
    return "\n".join(lines) + "\n"
