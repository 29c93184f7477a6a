"""The rendered variants: render with Copier in-process, install with uv, time their own tests,
and run their `init-db`.
"""

import json
import logging
import os
import subprocess
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from copier import run_copy
from copier.errors import DirtyLocalWarning

logger = logging.getLogger(__name__)

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGE: Final = "cities_service"
# `uv run` tells its children which uv it is; use the same one for the rendered projects.
UV: Final = os.environ.get("UV", "uv")

# The variants that can be measured, by name: PostgreSQL with a schema, in each session style.
# The schema and the pool sizes are overridden at run time through the environment.
VARIANTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "plain": {"db_schema": "cities", "session_style": "plain"},
    "scoped": {"db_schema": "cities", "session_style": "scoped"},
}
# What the benchmark records of a rendered project's virtualenv.
PACKAGES: Final = ("fastapi", "sqlalchemy", "asyncpg", "uvicorn", "uvloop", "httptools", "pydantic")


@dataclass(frozen=True)
class Project:
    """A rendered and installed variant, and how long it took to render and to test."""

    name: str
    path: Path
    render_seconds: float
    suite_seconds: float | None = None

    @property
    def python(self) -> Path:
        return self.path / ".venv/bin/python"


def render(name: str, dst: Path, database_url: str) -> Project:
    """Render the template's working tree (uncommitted changes included) as variant `name`;
    time Copier alone, in this process, where its import is already paid for."""
    data = {"database_url": database_url, **VARIANTS[name]}
    with warnings.catch_warnings():
        # Expected while the template is being changed: the render includes the changes.
        warnings.simplefilter("ignore", DirtyLocalWarning)
        start = time.perf_counter()
        run_copy(str(ROOT), dst, data=data, defaults=True, vcs_ref="HEAD", quiet=True, unsafe=False)
        seconds = time.perf_counter() - start
    return Project(name, dst, render_seconds=seconds)


# Not passed on to a rendered project's tools. Without bytecode caches (which some CI machines
# turn off) every run of a project compiles FastAPI and SQLAlchemy again: seconds of each run.
NOT_INHERITED: Final = frozenset(
    {"VIRTUAL_ENV", "PYTHONPATH", "TEST_DATABASE_URL", "PYTHONDONTWRITEBYTECODE"}
)


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a rendered project's tools, as in a developer's shell: its own
    virtualenv, not the bench's, with bytecode caches."""
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    quiet = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}
    return env | quiet | dict(extra or {})


def run(
    args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command in a project; raise with its output if it fails."""
    result = subprocess.run(
        list(args), cwd=cwd, env=tool_env(env), capture_output=True, text=True, check=False
    )
    if result.returncode:
        msg = (
            f"`{' '.join(args)}` failed ({result.returncode}) in {cwd}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
        raise RuntimeError(msg)
    return result


def install(project: Project) -> None:
    run([UV, "sync", "--quiet"], project.path)


def time_suite(project: Project) -> Project:
    """Time the project's own tests (on SQLite, as after rendering), once warm: the first run
    fills the bytecode and pytest caches, as a developer's second run would find them."""
    command = [UV, "run", "pytest", "-q"]
    run(command, project.path)
    start = time.perf_counter()
    run(command, project.path)
    return replace(project, suite_seconds=time.perf_counter() - start)


def init_db(project: Path, database_url: str, *, schema: str) -> None:
    """Create `schema` and the tables in it with the command of the project in `project`."""
    run(
        [UV, "run", "python", "-m", PACKAGE, "init-db"],
        project,
        {"DATABASE_URL": database_url, "DB_SCHEMA": schema},
    )


def versions(project: Project) -> dict[str, str]:
    """Python's and the main packages' versions in the project's virtualenv."""
    script = (
        "import importlib.metadata as m, json, platform, sys; "
        "print(json.dumps({'python': platform.python_version()}"
        " | {name: m.version(name) for name in sys.argv[1:]}))"
    )
    output = run([str(project.python), "-c", script, *PACKAGES], project.path).stdout
    found: dict[str, str] = json.loads(output)
    return found
