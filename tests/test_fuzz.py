"""The served app under an API fuzzer: every answer is one that its OpenAPI document lists.

Schemathesis reads the document of the app served on PostgreSQL, in both session styles, and
sends it valid and invalid requests generated from it (bodies, parameters, content types). Any
server error, undocumented status code or content type, body that does not match its schema, or
invalid request that is not refused, fails the test with the request to reproduce it.

The run is bounded by the number of cases per operation and reproducible by its seed:
`FUZZ_SEED` (default below) and `FUZZ_MAX_EXAMPLES` change them.
"""

import os
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import TEST_DATABASE_URL, initialized_database, serve, variant_param

pytestmark = [
    pytest.mark.render,
    pytest.mark.skipif(not TEST_DATABASE_URL, reason="needs TEST_DATABASE_URL (PostgreSQL)"),
]

SCHEMATHESIS = Path(sysconfig.get_path("scripts")) / "schemathesis"
SEED = int(os.environ.get("FUZZ_SEED", "15"))
# About 170 cases per session style with the default, in a few seconds.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "50"))
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]


@pytest.fixture
def database_url(project: Path) -> Iterator[str]:
    """A scratch database, set up by `init-db`."""
    with initialized_database(project, prefix="tpl") as url:
        yield url


def fuzz_command(base_url: str) -> list[str]:
    return [
        str(SCHEMATHESIS),
        "run",
        f"{base_url}/openapi.json",
        f"--checks={','.join(CHECKS)}",
        f"--max-examples={MAX_EXAMPLES}",
        f"--seed={SEED}",
        # One request at a time, and no examples kept from earlier runs: a run is repeated by
        # giving its seed again.
        "--workers=1",
        "--generation-database=none",
        "--no-color",
    ]


# One session style: the API, and so what the fuzzer sends and checks, is the same in both; the
# styles' own tests (in the rendered suites, and under load in `test_reliability.py`) cover both.
@pytest.mark.parametrize("project", [variant_param("postgresql-plain-schema")], indirect=True)
def test_every_answer_is_documented(project: Path, database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serve(project, {"DATABASE_URL": database_url}, log) as base_url:
        # From the test's directory, where Schemathesis may leave files.
        result = subprocess.run(
            fuzz_command(base_url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert result.returncode == 0, (
        f"the app's answers disagree with its OpenAPI document (FUZZ_SEED={SEED},"
        f" FUZZ_MAX_EXAMPLES={MAX_EXAMPLES}):\n{result.stdout[-8000:]}{result.stderr[-2000:]}"
    )
    assert "Traceback" not in log.read_text()
