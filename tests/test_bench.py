"""The benchmark (`python -m bench`) in smoke mode: it renders the plain variant, serves it and the
three reference apps, loads each with wrk and writes its report.

Nothing about speed is asserted: the numbers depend on the machine and on what else runs on it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.wrk import find_wrk

from .helpers import ROOT, TEST_DATABASE_URL, requires_postgresql

APPS = ("plain", "seed_pattern", "orm_floor", "raw_asyncpg")
ENDPOINTS = ("GET /cities/biggest", "POST /cities")


@requires_postgresql
@pytest.mark.render
# Scheduled as a unit of its own beside the variants' groups (`--dist loadgroup`).
@pytest.mark.xdist_group("bench")
def test_smoke_run_reports_every_app_and_endpoint(tmp_path: Path) -> None:
    assert TEST_DATABASE_URL
    if find_wrk() is None:
        pytest.skip("wrk is not installed and cannot be installed here")

    options = ["--smoke", "--out", str(tmp_path), "--database-url", TEST_DATABASE_URL]
    result = subprocess.run(
        [sys.executable, "-m", "bench", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    for name in APPS + ENDPOINTS:
        assert name in result.stdout
    summary = json.loads((tmp_path / "latest.json").read_text())["summary"]
    assert {(row["app"], row["endpoint"]) for row in summary} == {
        (app, endpoint) for app in APPS for endpoint in ENDPOINTS
    }
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
