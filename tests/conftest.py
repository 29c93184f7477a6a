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
from bench.pgbouncer_build import cache_root, machine_lock
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
def type_check(worker_id: str) -> Callable[[Path], None]:
    """Run mypy in a rendered project, with a cache kept on the machine from run to run beside
    PgBouncer's build: the variants share their third-party modules' analysis (uv links the same
    files into every virtualenv), which a cold cache spent 10 s of each check redoing.

    Each xdist worker has a cache of its own, and holds its lock while mypy runs. mypy writes an
    entry's data and then its metadata, and trusts the data if its mtime, in whole seconds,
    matches: two processes writing one cache can leave one variant's metadata over the other's
    data, and a check then reads a `Database` without the attributes it has (seen once in CI)."""
    cache = cache_root() / "mypy" / worker_id
    cache.mkdir(parents=True, exist_ok=True)

    def check(project: Path) -> None:
        with machine_lock(cache / ".lock"):
            run([UV, "run", "--no-sync", "mypy"], project, {"MYPY_CACHE_DIR": str(cache)})

    return check


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
