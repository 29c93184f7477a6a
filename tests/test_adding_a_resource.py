"""The rendered README's "Outside a request" and "Adding a resource", word for word: a background
job, a script, a second model with a foreign key and a relationship, its routes, its migration
and its tests. Then the project's own checks pass, on SQLite and on PostgreSQL in a schema, and
through PgBouncer."""

import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.database import scratch_database
from bench.pgbouncer import pgbouncer
from bench.projects import UV

from .helpers import TEST_DATABASE_URL, VARIANTS, render, run, unexpected_skips, variant_param

pytestmark = pytest.mark.render

SECTIONS = ("## Outside a request", "## Adding a resource")
# "Create `path`:" gives a whole file; "Add to `path`:" its imports, then code for its end.
INSTRUCTION = re.compile(r"(Create|Add to)\s+`([^`]+)`")
FENCE = re.compile(r"^( *)```(python|sh)\n(.*?)^\1```$", re.MULTILINE | re.DOTALL)
IMPORT = re.compile(r"^(from \S+ import |import )")


@dataclass(frozen=True)
class Step:
    """What the README asks: write a file (`create`), add to one (`add`), or run commands."""

    action: str
    path: str
    text: str


def readme_steps(readme: str) -> list[Step]:
    """The steps of the README's sections, in their order."""
    steps: list[Step] = []
    for heading in SECTIONS:
        section = readme.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
        position = 0
        for fence in FENCE.finditer(section):
            code = textwrap.dedent(fence.group(3))
            if fence.group(2) == "sh":
                steps.append(Step("run", "", code))
            else:
                said = INSTRUCTION.findall(section, position, fence.start())
                assert said, f"no file named before a code block of {heading!r}"
                action, path = said[-1]
                steps.append(Step("create" if action == "Create" else "add", path, code))
            position = fence.end()
    return steps


def add_to(path: Path, code: str) -> None:
    """Put the code's imports after the file's, and the rest at the end of the file."""
    lines = code.splitlines(keepends=True)
    imports = [line for line in lines if IMPORT.match(line)]
    rest = "".join(lines[len(imports) :]).lstrip("\n")
    existing = path.read_text().splitlines(keepends=True)
    last_import = max(n for n, line in enumerate(existing) if IMPORT.match(line))
    existing[last_import + 1 : last_import + 1] = imports
    path.write_text("".join(existing).rstrip("\n") + "\n\n\n" + rest)


def take_steps(project: Path, steps: list[Step], env: Mapping[str, str]) -> None:
    for step in steps:
        target = project / step.path
        if step.action == "create":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(step.text)
        elif step.action == "add":
            add_to(target, step.text)
        else:
            for command in step.text.splitlines():
                run(["bash", "-c", command], project, env)


@contextmanager
def database_of(variant: str) -> Iterator[dict[str, str]]:
    """The environment of the README's commands: the render's own SQLite file, or a scratch
    PostgreSQL database."""
    if "postgresql" not in variant:
        yield {}
        return
    if not TEST_DATABASE_URL:
        pytest.skip("set TEST_DATABASE_URL to run the PostgreSQL checks")
    with scratch_database(TEST_DATABASE_URL, prefix="walk") as url:
        yield {"DATABASE_URL": url}


@pytest.mark.parametrize(
    "variant", [variant_param("sqlite-plain"), variant_param("postgresql-scoped-schema")]
)
def test_the_readme_walk_to_a_second_resource(
    variant: str, tmp_path: Path, type_check: Callable[[Path], None], request: pytest.FixtureRequest
) -> None:
    project = render(tmp_path / "project", **VARIANTS[variant])
    run([UV, "sync", "--quiet"], project)
    steps = readme_steps((project / "README.md").read_text())
    assert {step.path for step in steps} >= {
        "src/cities_service/models.py",
        "src/cities_service/api/landmarks.py",
        "src/cities_service/jobs.py",
        "tests/test_landmarks.py",
        "scripts/seed.py",
    }

    with database_of(variant) as env:
        take_steps(project, steps, env)
        # The script adds only the cities that are missing: run again, it does not fail.
        run([UV, "run", "--no-sync", "python", "scripts/seed.py"], project, env)
        (revision,) = (project / "src/cities_service/migrations/versions").glob("*_landmarks.py")
        assert 'ondelete="CASCADE"' in revision.read_text()
        run([UV, "run", "--no-sync", "alembic", "check"], project, env)

    run([UV, "run", "--no-sync", "ruff", "check"], project)
    run([UV, "run", "--no-sync", "ruff", "format", "--check"], project)
    type_check(project)
    pytest_args = [UV, "run", "--no-sync", "pytest", "-p", "no:cacheprovider"]
    # The SQLite walk runs the suite on SQLite; this one on PostgreSQL, then through PgBouncer.
    on_postgresql = {"TEST_DATABASE_URL": TEST_DATABASE_URL} if "postgresql" in variant else {}
    tested = run([*pytest_args, "-v"], project, on_postgresql).stdout
    if on_postgresql:
        assert "skipped" not in tested
    else:
        assert unexpected_skips(tested) == []
    assert "tests/test_landmarks.py::test_deleting_a_city_deletes_its_landmarks PASSED" in tested
    assert "tests/test_jobs.py::test_births_grow_the_city_after_the_response PASSED" in tested
    if not on_postgresql:
        return
    pytest_args.append("-q")
    binary = request.getfixturevalue("packaged_pgbouncer")
    with pgbouncer(binary, TEST_DATABASE_URL, pool_size=3) as bouncer:
        through = {"TEST_DATABASE_URL": bouncer.url, "DB_POOLER": "pgbouncer"}
        assert " passed" in run(pytest_args, project, through).stdout


# A file named in the project's text: `core/config.py`, `src/cities_service/models.py`, `env.py`.
NAMED_FILE = re.compile(r"[\w./{}-]*\w\.py\b")


@pytest.mark.parametrize("variant", ["sqlite-plain", "postgresql-scoped-schema"])
def test_every_file_that_the_project_names_is_there(variant: str, tmp_path: Path) -> None:
    """What the README, `.env`, comments and docstrings point a user to exists, but for the files
    that the README's walk has them create (a module moved into `core/` once left `.env`
    naming the old place)."""
    project = render(tmp_path / "project", **VARIANTS[variant])
    made_by_the_walk = {step.path for step in readme_steps((project / "README.md").read_text())}
    files = [path for path in project.rglob("*") if path.is_file()]
    modules = [path.relative_to(project).as_posix() for path in files if path.suffix == ".py"]
    missing = set()
    for path in files:
        for name in NAMED_FILE.findall(path.read_text()):
            if name not in made_by_the_walk and not any(
                module == name or module.endswith(f"/{name}") for module in modules
            ):
                missing.add(f"{path.relative_to(project)}: {name}")
    assert sorted(missing) == []
