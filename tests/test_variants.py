"""Render each variant, then run its lint, type checks and test suite, on SQLite and PostgreSQL."""

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bench.database import scratch_database
from bench.projects import UV

from .helpers import (
    PACKAGE,
    TEST_DATABASE_URL,
    VARIANTS,
    render,
    requires_postgresql,
    run,
    serve,
    unexpected_skips,
    variant_param,
)
from .postgres import fetch

pytestmark = pytest.mark.render


@pytest.fixture(params=[variant_param(name) for name in VARIANTS])
def project(request: pytest.FixtureRequest, installed_variant: Callable[[str], Path]) -> Path:
    return installed_variant(request.param)


def test_lint(project: Path) -> None:
    run([UV, "run", "--no-sync", "ruff", "check"], project)
    run([UV, "run", "--no-sync", "ruff", "format", "--check"], project)


def test_types(project: Path, type_check: Callable[[Path], None]) -> None:
    type_check(project)


def test_suite_on_sqlite(project: Path) -> None:
    result = run([UV, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert " passed" in result.stdout
    assert unexpected_skips(result.stdout) == []


@requires_postgresql
def test_suite_on_postgresql(project: Path) -> None:
    assert TEST_DATABASE_URL
    if "postgresql" not in (project / ".copier-answers.yml").read_text():
        pytest.skip("a SQLite render runs on PostgreSQL as its PostgreSQL twin does")
    result = run(
        [UV, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"],
        project,
        env={"TEST_DATABASE_URL": TEST_DATABASE_URL},
    )
    assert " passed" in result.stdout
    assert "skipped" not in result.stdout


@pytest.mark.xdist_group("lowest")
def test_suite_at_the_lowest_allowed_versions(tmp_path: Path) -> None:
    """The floors of the rendered pyproject.toml hold: with each direct dependency at the lowest
    version it allows (and the others at their latest), the suite passes, as the project's CI
    checks. On SQLite, and on PostgreSQL with TEST_DATABASE_URL."""
    project = render(tmp_path / "project", **VARIANTS["postgresql-plain-schema"])
    lowest = {"UV_RESOLUTION": "lowest-direct"}
    run([UV, "sync"], project, lowest)
    pytest_args = [UV, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"]
    assert " passed" in run(pytest_args, project, lowest).stdout
    if TEST_DATABASE_URL:
        on_postgresql = lowest | {"TEST_DATABASE_URL": TEST_DATABASE_URL}
        assert "skipped" not in run(pytest_args, project, on_postgresql).stdout


@pytest.fixture
def database_url(project: Path, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own, of the variant's kind: PostgreSQL, or a SQLite file."""
    if "postgresql" not in (project / ".copier-answers.yml").read_text():
        yield f"sqlite+aiosqlite:///{tmp_path / 'cities.db'}"
        return
    if not TEST_DATABASE_URL:
        pytest.skip("set TEST_DATABASE_URL to serve the PostgreSQL variants")
    with scratch_database(TEST_DATABASE_URL, prefix="tpl") as url:
        yield url


def test_served_app_answers_the_contract(project: Path, database_url: str, tmp_path: Path) -> None:
    """`init-db` (the migrations), then the app under uvicorn: endpoints, status codes, and
    where the tables are."""
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    env = {"DATABASE_URL": database_url}
    python_m = [str(project / ".venv/bin/python"), "-m", PACKAGE, "init-db"]
    assert "upgraded from revision none to" in run(python_m, project, env).stdout
    again = run([str(project / ".venv/bin/cities-service"), "init-db"], project, env)
    assert "up to date" in again.stdout

    with (
        serve(project, env, tmp_path / "server.log") as base_url,
        httpx.Client(base_url=base_url, timeout=10) as client,
    ):
        assert client.get("/health").json() == {"status": "ok"}
        lyon = client.post("/cities", json={"name": "Lyon", "population": 522_250})
        assert lyon.status_code == 201
        assert client.post("/cities", json={"name": "Lyon", "population": 1}).status_code == 409
        assert client.post("/cities", json={"name": "", "population": 1}).status_code == 422
        paris = client.post("/cities", json={"name": "Paris", "population": 2_102_650})
        biggest = client.get("/cities/biggest", params={"limit": 2})
        assert biggest.json() == [paris.json(), lyon.json()]
        assert client.get("/cities/biggest", params={"limit": 0}).status_code == 422

    if database_url.startswith("postgresql"):
        schema = answers.get("db_schema") or "public"
        tables = fetch(
            database_url,
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')",
        )
        assert {tuple(table) for table in tables} == {
            (schema, "cities"),
            (schema, "alembic_version"),
        }
        sessions = fetch(
            TEST_DATABASE_URL or "",
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
            database_url.rsplit("/", 1)[1],
        )
        assert sessions[0][0] == 0, "the engine was not disposed at shutdown"
