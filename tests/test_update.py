"""`copier update` from one release of the template to the next keeps the user's work.

The tests build a throwaway git repository of the template with two PEP 440 tags: `v1.0.0` is the
working tree as it is; `v1.1.0` is a release made the usual way, which adds a question, changes a
line of the project's README and of its `.env`, and adds a module. A project rendered at `v1.0.0`,
committed and then edited the way its owner would, is updated to `v1.1.0`.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from copier import run_copy, run_update

from bench.projects import UV

from .helpers import PG_ANSWER_URL, ROOT, run, unexpected_skips

OLD, NEW = "v1.0.0", "v1.1.0"

# A throwaway identity for the commits of the throwaway repositories.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "template-tests@example.invalid",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "template-tests@example.invalid",
}

# --------------------------------------------------------------- release 1.1.0
DESCRIPTION = "An async FastAPI + SQLAlchemy service."
NEW_QUESTION = f"""
project_description:
  type: str
  help: One sentence on what the service does
  default: {DESCRIPTION}
"""
README_LINE = (
    "An async FastAPI + SQLAlchemy service, generated from the cities service Copier template."
)
NEW_README_LINE = "{{ project_description }} Generated from the cities service Copier template."
RENDERED_README_LINE = f"{DESCRIPTION} Generated from the cities service Copier template."
ENV_LINE = "# DB_ECHO=false"
NEW_ENV_LINE = "# DB_CONNECT_TIMEOUT=5.0"
NEW_MODULE = "src/{{package_name}}/about.py.jinja"
NEW_MODULE_TEXT = '"""What the service is."""\n\nDESCRIPTION = "{{ project_description }}"\n'

# ------------------------------------------------------------------ user edits
PASSWORD = "s3cret-only-in-dot-env"
PG_ANSWERS = {
    "database_url": PG_ANSWER_URL,
    "database_password": PASSWORD,
    "pool_size": 7,
    "db_schema": "cities",
    "session_style": "scoped",
}
PING_ROUTE = '''"""`GET /ping`: a route of the project's own."""

from fastapi import APIRouter

router = APIRouter(tags=["ping"])


@router.get("/ping")
async def ping() -> dict[str, str]:
    return {"ping": "pong"}
'''
PING_TEST = '''"""The project's own route."""

from httpx import AsyncClient


async def test_ping(client: AsyncClient) -> None:
    response = await client.get("/ping")

    assert response.json() == {"ping": "pong"}
'''
README_LINE_THE_USER_EDITS = (
    "Lint and types: `uv run ruff check`, `uv run ruff format --check`, `uv run mypy`."
)
USERS_README_LINE = "Before a push: `uv run ruff check && uv run mypy && uv run pytest`."
USERS_DESCRIPTION = "The cities API of the geography team, with a ping route."
USERS_ENV_SETTING = "DB_POOL_SIZE=20"


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` as the tests' identity; return its output."""
    return run(["git", "-c", "commit.gpgsign=false", *args], repo, env=GIT_IDENTITY).stdout


def commit(repo: Path, message: str, tag: str | None = None) -> None:
    """Commit everything in `repo` (what `.gitignore` allows), and tag the commit."""
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "--message", message)
    if tag:
        git(repo, "tag", tag)


def replace(path: Path, old: str, new: str) -> None:
    """Replace a text that must be in the file (so that a test cannot go vacuous)."""
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new))


def answers(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return loaded


def release_1_1(repo: Path) -> None:
    """The next release: a new question, changed lines in two files, a new module."""
    with (repo / "copier.yml").open("a") as copier_yml:
        copier_yml.write(NEW_QUESTION)
    replace(repo / "template/README.md.jinja", README_LINE, NEW_README_LINE)
    replace(repo / "template/.env.jinja", ENV_LINE, f"{ENV_LINE}\n{NEW_ENV_LINE}")
    (repo / "template" / NEW_MODULE).write_text(NEW_MODULE_TEXT)


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository of the template (the working tree) tagged `v1.0.0`, then `v1.1.0`."""
    repo = tmp_path_factory.mktemp("template")
    shutil.copy2(ROOT / "copier.yml", repo)
    ignored = shutil.ignore_patterns("__pycache__", "*.py[co]")
    shutil.copytree(ROOT / "template", repo / "template", ignore=ignored)
    git(repo, "init", "--quiet", "--initial-branch=main")
    commit(repo, "Release 1.0.0", tag=OLD)
    release_1_1(repo)
    commit(repo, "Release 1.1.0", tag=NEW)
    return repo


def render_old_release(template: Path, project: Path, **data: Any) -> Path:
    """Render `v1.0.0` into `project` and commit it, as `copier copy` and `git init` would."""
    run_copy(
        str(template), project, data=data, defaults=True, vcs_ref=OLD, unsafe=False, quiet=True
    )
    git(project, "init", "--quiet", "--initial-branch=main")
    commit(project, "Render the project from the template")
    return project


def update(project: Path, **options: Any) -> None:
    """`copier update --defaults --vcs-ref=v1.1.0`, the way the README says."""
    run_update(
        project, vcs_ref=NEW, defaults=True, overwrite=True, unsafe=False, quiet=True, **options
    )


def edit_like_a_user(project: Path) -> None:
    """A route module and its test, an edited README line, a setting in `.env`."""
    package = project / "src/cities_service"
    (package / "api/ping.py").write_text(PING_ROUTE)
    routers = package / "api/__init__.py"
    replace(routers, "from . import cities\n", "from . import cities, ping\n")
    with routers.open("a") as routes:
        routes.write("routers.append(ping.router)\n")
    (project / "tests/test_ping.py").write_text(PING_TEST)
    replace(project / "README.md", README_LINE_THE_USER_EDITS, USERS_README_LINE)
    with (project / ".env").open("a") as env:
        env.write(f"{USERS_ENV_SETTING}\n")


# Directories of git and of the tools, not of the project.
NOT_THE_PROJECTS = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def project_files(project: Path) -> list[Path]:
    """Every file of the project, ignored ones included, but git's and the tools' own."""
    return [
        path
        for path in project.rglob("*")
        if path.is_file() and not NOT_THE_PROJECTS.intersection(path.relative_to(project).parts)
    ]


def files_containing(project: Path, text: str) -> list[Path]:
    return [path for path in project_files(project) if text.encode() in path.read_bytes()]


def unmerged(project: Path) -> list[str]:
    """Files that `git status` shows as conflicted."""
    return git(project, "diff", "--name-only", "--diff-filter=U").split()


# ------------------------------------------------- one update, several checks
@dataclass(frozen=True)
class Updated:
    """A PostgreSQL project edited by its user, then updated; and what it held before."""

    project: Path
    answers_before: dict[str, Any]
    env_before: str


@pytest.fixture(scope="module")
def updated(template_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Updated:
    """A PostgreSQL project with a password and a schema, edited, committed, then updated."""
    project = tmp_path_factory.mktemp("updated") / "project"
    render_old_release(template_repo, project, **PG_ANSWERS)
    edit_like_a_user(project)
    commit(project, "Add a ping route; document the checks before a push")
    updated = Updated(
        project, answers_before=answers(project), env_before=(project / ".env").read_text()
    )
    update(project)
    return updated


# The checks share one update: keep them on one xdist worker. (With pytest 9.2, xdist 3.8 ignores
# the group, pytest-xdist#1386: each worker then makes an update of its own.)
scenario = pytest.mark.xdist_group("update-scenario")


@scenario
def test_the_release_arrives(updated: Updated) -> None:
    project = updated.project

    assert RENDERED_README_LINE in (project / "README.md").read_text()
    about = project / "src/cities_service/about.py"
    assert f'DESCRIPTION = "{DESCRIPTION}"' in about.read_text()
    assert answers(project)["project_description"] == DESCRIPTION


@scenario
def test_user_edits_are_kept(updated: Updated) -> None:
    project = updated.project

    assert (project / "src/cities_service/api/ping.py").read_text() == PING_ROUTE
    assert (project / "tests/test_ping.py").read_text() == PING_TEST
    assert (
        "routers.append(ping.router)"
        in (project / "src/cities_service/api/__init__.py").read_text()
    )
    readme = (project / "README.md").read_text()
    assert USERS_README_LINE in readme
    assert README_LINE_THE_USER_EDITS not in readme
    assert unmerged(project) == []
    assert [path for path in project_files(project) if path.suffix == ".rej"] == []


@scenario
def test_answers_are_kept_and_the_new_question_gets_its_default(updated: Updated) -> None:
    after = answers(updated.project)

    assert after == updated.answers_before | {"_commit": NEW, "project_description": DESCRIPTION}
    assert after["session_style"] == "scoped"
    assert after["db_schema"] == "cities"
    assert after["pool_size"] == 7


@scenario
def test_env_is_untouched_and_the_password_written_nowhere_else(updated: Updated) -> None:
    project = updated.project

    env = (project / ".env").read_text()
    assert env == updated.env_before, ".env was rewritten by the update"
    assert f"DB_PASSWORD='{PASSWORD}'" in env
    assert USERS_ENV_SETTING in env
    assert NEW_ENV_LINE not in env
    assert "database_password" not in answers(project)
    assert files_containing(project, PASSWORD) == [project / ".env"]
    assert ".env" not in git(project, "ls-files").split()


@scenario
def test_updated_project_passes_its_tests(updated: Updated) -> None:
    """Its own suite, the user's test of the new route included, on SQLite."""
    project = updated.project

    run([UV, "sync", "--quiet"], project)
    result = run([UV, "run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider"], project)

    assert " passed" in result.stdout
    assert unexpected_skips(result.stdout) == []


# ------------------------------------------------------------------ conflicts
@pytest.fixture
def conflicting(template_repo: Path, tmp_path: Path) -> Path:
    """A project whose user rewrote the README line that the next release changes too."""
    project = render_old_release(template_repo, tmp_path / "project")
    replace(project / "README.md", README_LINE, USERS_DESCRIPTION)
    commit(project, "Describe the service")
    return project


def test_conflict_is_marked_inline_by_default(conflicting: Path) -> None:
    """Both versions of the line stay in the file, between markers; git shows it unmerged."""
    update(conflicting)

    readme = (conflicting / "README.md").read_text()
    mine, _, theirs = readme.partition("<<<<<<< before updating\n")[2].partition("=======\n")
    assert mine.strip() == USERS_DESCRIPTION
    assert theirs.partition(">>>>>>> after updating")[0].strip() == RENDERED_README_LINE
    assert unmerged(conflicting) == ["README.md"]


def test_conflict_can_be_left_in_a_rej_file(conflicting: Path) -> None:
    """With `conflict="rej"` the file takes the release's line, and the user's change, which no
    longer applies, waits beside it as a patch."""
    update(conflicting, conflict="rej")

    readme = (conflicting / "README.md").read_text()
    assert RENDERED_README_LINE in readme
    assert "<<<<<<<" not in readme
    rejected = (conflicting / "README.md.rej").read_text()
    assert f"-{README_LINE}\n+{USERS_DESCRIPTION}\n" in rejected


# --------------------------------------------------------------------- secret
def test_a_password_given_again_at_update_is_written_nowhere(
    template_repo: Path, tmp_path: Path
) -> None:
    """Without `--defaults`, Copier asks the secret again; whatever is typed is not used."""
    project = render_old_release(template_repo, tmp_path / "project", **PG_ANSWERS)
    env = (project / ".env").read_text()

    update(project, data={"database_password": "typed-at-update"})

    assert (project / ".env").read_text() == env
    assert files_containing(project, "typed-at-update") == []
