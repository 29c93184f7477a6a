"""The benchmark's summary: a variant's ratios are paired by round; the table's order. How
wrk's report is read, and the instruction counts' table."""

from bench.instructions import METHODS, SETUPS, Count, table
from bench.results import Measurement, summarize
from bench.wrk import WrkResult, parse

GET = "GET /cities/biggest"


def measured(round_number: int, app: str, beside: str, rate: float) -> Measurement:
    result = WrkResult(
        requests_per_second=rate,
        p50_ms=10,
        p99_ms=20,
        requests=int(rate),
        non_2xx=0,
        socket_errors=0,
    )
    return Measurement(round_number, app, GET, beside, result)


def test_ratios_hold_when_the_machine_slows_down_between_rounds() -> None:
    measurements = [
        measured(1, "raw_asyncpg", "plain", 1600),
        measured(1, "plain", "raw_asyncpg", 400),
        measured(1, "plain", "seed_pattern", 1000),
        measured(1, "seed_pattern", "plain", 500),
        # The machine runs at half speed in round 2: the ratio of that round is still 2x.
        measured(2, "seed_pattern", "plain", 250),
        measured(2, "plain", "seed_pattern", 500),
        measured(3, "plain", "seed_pattern", 900),
        measured(3, "seed_pattern", "plain", 450),
    ]

    summaries = summarize(measurements)

    assert [summary.app for summary in summaries] == ["plain", "seed_pattern", "raw_asyncpg"]
    plain, seed_pattern, raw_asyncpg = summaries
    assert plain.requests_per_second == 700  # the median of all its runs
    assert plain.vs_seed_pattern == 2.0  # paired; the ratio of medians would be 700/450
    assert plain.vs_raw_asyncpg == 0.25
    assert seed_pattern.vs_seed_pattern == 1.0
    # The references are never loaded side by side: the ratio of their medians.
    assert raw_asyncpg.vs_seed_pattern == 1600 / 450


def test_a_variant_is_set_against_the_floor_through_the_seed_pattern() -> None:
    measurements = [
        measured(1, "plain", "seed_pattern", 1000),
        measured(1, "seed_pattern", "plain", 500),
        # Loaded later, when the machine runs at half speed: the floor is 2.5x the seed.
        measured(1, "orm_floor", "seed_pattern", 625),
        measured(1, "seed_pattern", "orm_floor", 250),
    ]

    plain, seed_pattern, orm_floor = summarize(measurements)

    assert (plain.app, seed_pattern.app, orm_floor.app) == ("plain", "seed_pattern", "orm_floor")
    assert orm_floor.vs_seed_pattern == 2.5
    assert plain.vs_orm_floor == 2.0 / 2.5  # the ratio of medians would be 1000/625
    assert orm_floor.vs_orm_floor == 1.0


# wrk pads a latency in seconds with a space ("1.33s "), as it pads the units to one width.
SLOW_REPORT = """\
Running 3s test @ http://127.0.0.1:38997/cities/biggest?limit=20
  1 threads and 32 connections
  Latency Distribution
     50%   50.88ms
     75%   88.14ms
     90%  127.12ms
     99%    1.33s\x20
  1501 requests in 3.01s, 1.83MB read
  Non-2xx or 3xx responses: 2
Requests/sec:    499.31
"""


def test_a_report_with_latencies_in_seconds_is_read() -> None:
    result = parse(SLOW_REPORT)

    assert result.p50_ms == 50.88
    assert result.p99_ms == 1330
    assert (result.requests, result.non_2xx, result.socket_errors) == (1501, 2, 0)
    assert result.requests_per_second == 499.31


def test_the_instructions_table_sets_each_count_against_the_app_as_served() -> None:
    counts = [
        Count(setup.name, method, 2_000_000 if index else 2_100_000)
        for index, setup in enumerate(SETUPS)
        for method in METHODS
    ]

    lines = table(counts).splitlines()

    assert len(lines) == 2 + len(SETUPS)
    assert lines[2].count("+0.0%") == len(METHODS)
    assert "2.00 M (-4.8%)" in lines[3]
