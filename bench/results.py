"""What the benchmark measured: medians over the rounds, ratios to the references, targets.

Medians rather than means: a round disturbed by another process on the machine moves a median
much less than a mean. A variant's ratio to a reference is the median of its ratios in the rounds
where the two were loaded one after the other, not a ratio of medians taken minutes apart.
"""

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .projects import Project
from .servers import ORM_FLOOR, RAW_ASYNCPG, SEED_PATTERN
from .wrk import WrkResult

# Where a run writes its reports, unless `--out` names another directory (gitignored).
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "results"

# The reference apps, in the order the report lists them (after the variants).
REFERENCES: Final = (SEED_PATTERN, ORM_FLOOR, RAW_ASYNCPG)

# The targets of issue 6; reported as met or missed, never asserted.
MIN_VS_SEED_PATTERN: Final = 2.0
STRETCH_VS_RAW_ASYNCPG: Final = 0.5
MAX_P99_OVER_P50: Final = 4.0
MAX_RENDER_SECONDS: Final = 1.0
MAX_SUITE_SECONDS: Final = 3.0


@dataclass(frozen=True)
class Measurement:
    """One wrk run: an app's endpoint in one round, loaded in turn with the app `beside` it."""

    round: int
    app: str
    endpoint: str
    beside: str
    result: WrkResult


@dataclass(frozen=True)
class Summary:
    """An app's endpoint over all rounds: medians, failures summed, throughput ratios (paired
    where the app was measured beside the reference)."""

    app: str
    endpoint: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    vs_seed_pattern: float | None
    vs_orm_floor: float | None
    vs_raw_asyncpg: float | None


@dataclass(frozen=True)
class Target:
    """A target, and whether this run met it (None: not measured in this run)."""

    description: str
    met: bool | None
    detail: str


def summarize(measurements: Sequence[Measurement]) -> list[Summary]:
    """One summary per app and endpoint: the variants in the order they were measured, then the
    references; each app's endpoints together."""
    apps = sorted(
        dict.fromkeys(measurement.app for measurement in measurements),
        key=lambda app: REFERENCES.index(app) + 1 if app in REFERENCES else 0,
    )
    runs: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for measurement in sorted(measurements, key=lambda measurement: apps.index(measurement.app)):
        runs[measurement.app, measurement.endpoint].append(measurement)
    throughput = {
        key: statistics.median(run.result.requests_per_second for run in app_runs)
        for key, app_runs in runs.items()
    }

    def paired(reference: str, app: str, endpoint: str) -> float | None:
        app_runs, reference_runs = (runs.get((a, endpoint), []) for a in (app, reference))
        ratios = _paired_ratios(app_runs, reference_runs, reference)
        return statistics.median(ratios) if ratios else None

    def vs(reference: str, app: str, endpoint: str) -> float | None:
        if (ratio := paired(reference, app, endpoint)) is not None:
            return ratio
        # Never loaded together, but each beside the seed pattern (a variant and orm_floor):
        # the ratio of those ratios, which the machine's drift does not move either.
        via_app, via_reference = (paired(SEED_PATTERN, a, endpoint) for a in (app, reference))
        if via_app is not None and via_reference is not None:
            return via_app / via_reference
        # Otherwise (raw_asyncpg and the seed pattern): medians it is.
        return _ratio(throughput[app, endpoint], throughput.get((reference, endpoint)))

    return [
        Summary(
            app=app,
            endpoint=endpoint,
            requests_per_second=throughput[app, endpoint],
            p50_ms=statistics.median(run.result.p50_ms for run in app_runs),
            p99_ms=statistics.median(run.result.p99_ms for run in app_runs),
            non_2xx=sum(run.result.non_2xx for run in app_runs),
            socket_errors=sum(run.result.socket_errors for run in app_runs),
            vs_seed_pattern=vs(SEED_PATTERN, app, endpoint),
            vs_orm_floor=vs(ORM_FLOOR, app, endpoint),
            vs_raw_asyncpg=vs(RAW_ASYNCPG, app, endpoint),
        )
        for (app, endpoint), app_runs in runs.items()
    ]


def _paired_ratios(
    app_runs: Sequence[Measurement], reference_runs: Sequence[Measurement], reference: str
) -> list[float]:
    """The app's throughput over the reference's in each round where they were side by side."""
    reference_rate = {
        (run.round, run.beside): run.result.requests_per_second for run in reference_runs
    }
    return [
        run.result.requests_per_second / rate
        for run in app_runs
        if run.beside == reference and (rate := reference_rate.get((run.round, run.app)))
    ]


def _ratio(value: float, reference: float | None) -> float | None:
    return value / reference if reference else None


def check_targets(summaries: Sequence[Summary], projects: Sequence[Project]) -> list[Target]:
    """The targets of each rendered variant: its render time, the wall time of its own test
    suite, and per endpoint its throughput against the references and its tail latency."""
    by_app = {(summary.app, summary.endpoint): summary for summary in summaries}
    targets = []
    for project in projects:
        suite = project.suite_seconds
        targets += [
            Target(
                f"{project.name}: render < {MAX_RENDER_SECONDS:g} s",
                project.render_seconds < MAX_RENDER_SECONDS,
                f"{project.render_seconds:.2f} s",
            ),
            Target(
                f"{project.name}: its test suite < {MAX_SUITE_SECONDS:g} s",
                None if suite is None else suite < MAX_SUITE_SECONDS,
                "not measured in smoke mode" if suite is None else f"{suite:.2f} s",
            ),
        ]
        for summary in summaries:
            if summary.app == project.name:
                seed_pattern = by_app.get((SEED_PATTERN, summary.endpoint))
                raw_asyncpg = by_app.get((RAW_ASYNCPG, summary.endpoint))
                targets += [
                    _throughput_target(summary, seed_pattern, MIN_VS_SEED_PATTERN),
                    _throughput_target(summary, raw_asyncpg, STRETCH_VS_RAW_ASYNCPG, "stretch: "),
                    _tail_target(summary),
                ]
    return targets


def _throughput_target(
    summary: Summary, reference: Summary | None, minimum: float, kind: str = ""
) -> Target:
    where = f"{summary.app} {summary.endpoint}"
    if reference is None:
        return Target(f"{where}: {kind}req/s >= {minimum:g}x a reference", None, "not measured")
    ratio = summary.vs_seed_pattern if reference.app == SEED_PATTERN else summary.vs_raw_asyncpg
    return Target(
        f"{where}: {kind}req/s >= {minimum:g}x {reference.app}",
        None if ratio is None else ratio >= minimum,
        ("" if ratio is None else f"{ratio:.2f}x, median of the rounds side by side; ")
        + f"medians {summary.requests_per_second:.0f} vs {reference.requests_per_second:.0f} req/s",
    )


def _tail_target(summary: Summary) -> Target:
    tail = _ratio(summary.p99_ms, summary.p50_ms)
    return Target(
        f"{summary.app} {summary.endpoint}: p99 <= {MAX_P99_OVER_P50:g}x p50",
        None if tail is None else tail <= MAX_P99_OVER_P50,
        f"p99 {summary.p99_ms:.1f} ms, p50 {summary.p50_ms:.1f} ms"
        + ("" if tail is None else f": {tail:.1f}x"),
    )
