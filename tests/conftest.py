"""Fixtures shared by the template's tests."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.pgbouncer import (
    BUILT,
    PACKAGED,
    PgBouncerNotFoundError,
    keeps_prepared_statements,
    pgbouncer_binary,
    pgbouncer_version,
)
from bench.pgbouncer_build import cache_root
from bench.projects import UV

from .helpers import VARIANTS, render, run


@pytest.fixture(scope="session")
def installed_variant(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Render a variant and `uv sync` it (from the shared uv cache), once per worker."""
    projects: dict[str, Path] = {}

    def installed(name: str) -> Path:
        if name not in projects:
            project = render(tmp_path_factory.mktemp(name) / "project", **VARIANTS[name])
            run([UV, "sync"], project)
            projects[name] = project
        return projects[name]

    return installed


@pytest.fixture
def project(request: pytest.FixtureRequest, installed_variant: Callable[[str], Path]) -> Path:
    """The installed variant that the test is parametrized with (`indirect`)."""
    return installed_variant(request.param)


@pytest.fixture(scope="session")
def mypy_cache() -> Path:
    """A mypy cache kept on the machine from run to run, beside PgBouncer's build: the variants
    share their third-party modules' analysis (uv links the same files into every virtualenv),
    which a cold cache spent 10 s of each worker's first check redoing. mypy checks each entry
    against its file, and replaces entries atomically, so the two workers share it."""
    path = cache_root() / "mypy"
    path.mkdir(parents=True, exist_ok=True)
    return path


# A PgBouncer >= 1.21 to use instead of building 1.24.1: the template's GitHub workflow gives
# its runner's own package (Ubuntu's, 1.22 or later), where Debian's source package cannot be
# fetched.
PREPARED_PGBOUNCER_ENV = "PGBOUNCER_PREPARED_BINARY"


def _missing_pgbouncer(reason: str) -> None:
    """In CI (`CI` set), where `.ci/run` installs and builds them, a missing PgBouncer fails the
    test; elsewhere it skips it, saying why."""
    if os.environ.get("CI"):
        pytest.fail(f"PgBouncer is missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def packaged_pgbouncer() -> str:
    """The system's PgBouncer package (Debian 12: 1.18), installed when missing (as root)."""
    try:
        return pgbouncer_binary(PACKAGED)
    except PgBouncerNotFoundError as error:
        _missing_pgbouncer(str(error))
        raise


@pytest.fixture(scope="session")
def prepared_pgbouncer() -> str:
    """A PgBouncer that keeps prepared statements in transaction mode: `$PGBOUNCER_PREPARED_BINARY`
    if set, else 1.24.1 built from Debian trixie's source package (`bench.pgbouncer_build`, cached
    per machine; xdist workers wait for the one that builds it)."""
    configured = os.environ.get(PREPARED_PGBOUNCER_ENV)
    try:
        binary = configured or pgbouncer_binary(BUILT)
        version = ".".join(map(str, pgbouncer_version(binary)))
    except PgBouncerNotFoundError as error:
        if configured:  # asked for by name: never skipped
            pytest.fail(f"{PREPARED_PGBOUNCER_ENV}: {error}")
        _missing_pgbouncer(str(error))
        raise
    if not keeps_prepared_statements(binary):
        pytest.fail(f"{binary} is PgBouncer {version}: prepared statements need 1.21 or later")
    return binary
