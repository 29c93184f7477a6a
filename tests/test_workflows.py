"""The GitHub Actions workflows: the template repository's, and the one every project gets."""

import json
import re
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import PREPARED_PGBOUNCER_ENV
from .helpers import ROOT, render

TEMPLATE_WORKFLOW = ROOT / ".github/workflows/ci.yml"
PROJECT_WORKFLOW = ".github/workflows/ci.yml"
PROJECT_DEPENDABOT = ".github/dependabot.yml"
VARIANTS = [
    "sqlite-plain",
    "sqlite-scoped",
    "postgresql-plain",
    "postgresql-plain-schema",
    "postgresql-scoped",
    "postgresql-scoped-schema",
]
# What the rendered project's CI runs besides its tests, in both workflows.
PROJECT_CHECKS = ["uv run ruff check", "uv run ruff format --check", "uv run mypy"]
# Maintained actions, pinned to a commit, with its release tag in a comment (Dependabot keeps
# both up to date): `uses: actions/checkout@<40 hex digits> # v1.2.3`.
PINNED_ACTION = re.compile(
    r"^\s*(- )?uses: (actions/checkout|astral-sh/setup-uv)@[0-9a-f]{40} # v\d+\.\d+\.\d+$"
)
# The linters, installed with the template's dev tools.
SCRIPTS = Path(sysconfig.get_path("scripts"))


def load(path: Path) -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load(path.read_text())
    return workflow


def check_workflow(text: str) -> dict[str, Any]:
    """A workflow GitHub can run, with the least it needs: triggers, a read-only token, jobs
    made of steps that use actions pinned to a commit, a checkout that keeps no credentials."""
    uses = [line for line in text.splitlines() if "uses:" in line]
    assert uses
    for line in uses:
        assert PINNED_ACTION.match(line), line
    workflow: dict[str, Any] = yaml.safe_load(text)
    # YAML 1.1 reads the key `on` as True.
    assert workflow.get(True), "no `on:` triggers"
    assert workflow["name"]
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["jobs"]
    for job_id, job in workflow["jobs"].items():
        assert job["runs-on"] == "ubuntu-latest", job_id
        assert "permissions" not in job, job_id
        assert job["steps"], f"{job_id} has no steps"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{job_id}: {step}"
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, job_id
    return workflow


def lint(workflow: Path, *configs: Path) -> None:
    """actionlint finds no error in `workflow`, and zizmor (offline, its default persona)
    nothing of medium severity or above in it and `configs` (e.g. Dependabot's): a finding may
    only be suppressed in the file, with the reason on the same line."""
    # Without shellcheck and pyflakes, which actionlint runs when it finds them: the result
    # must not depend on what else the machine has installed.
    actionlint = [SCRIPTS / "actionlint", "-no-color", "-shellcheck=", "-pyflakes=", workflow]
    result = subprocess.run(actionlint, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    paths = [workflow, *configs]
    zizmor = [SCRIPTS / "zizmor", "--offline", "--format=json", "--min-severity=medium", *paths]
    result = subprocess.run(zizmor, capture_output=True, text=True, check=False)
    findings = [describe(finding) for finding in json.loads(result.stdout)]
    assert not findings, "\n".join(findings)
    for path in paths:
        for line in path.read_text().splitlines():
            if "zizmor: ignore" in line:
                assert re.search(r"zizmor: ignore\[[\w,-]+\]\s*\S", line), f"no reason: {line}"


def describe(finding: dict[str, Any]) -> str:
    """A zizmor finding (of its JSON output) as `path:line: audit (severity): what`."""
    where = finding["locations"][0]
    path = where["symbolic"]["key"]["Local"]["verbatim_path"]
    line = where["concrete"]["location"]["start_point"]["row"] + 1
    severity = finding["determinations"]["severity"]
    return f"{path}:{line}: {finding['ident']} ({severity}): {finding['desc']}"


def commands(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def matrix(workflow: dict[str, Any]) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = workflow["jobs"]["variants"]["strategy"]["matrix"]["include"]
    return entries


def test_template_workflow_is_valid() -> None:
    check_workflow(TEMPLATE_WORKFLOW.read_text())
    lint(TEMPLATE_WORKFLOW)


def test_template_workflow_caches_nothing() -> None:
    """It also runs on release tags: no run may restore what another run cached."""
    for job in load(TEMPLATE_WORKFLOW)["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("astral-sh/setup-uv@"):
                assert step["with"]["enable-cache"] is False


def test_template_workflow_runs_the_suite_with_postgresql() -> None:
    job = load(TEMPLATE_WORKFLOW)["jobs"]["template"]

    assert "uv run pytest" in commands(job)
    assert job["services"]["postgres"]["image"] == "postgres:15"
    assert job["env"]["TEST_DATABASE_URL"].startswith("postgresql+asyncpg://")
    # The scale-out tests start PgBouncers of their own, and run in CI, never skipped.
    assert any("apt-get install" in c and "pgbouncer" in c for c in commands(job))
    # The tests of prepared statements through PgBouncer take the runner's own package there.
    assert job["env"][PREPARED_PGBOUNCER_ENV] == "/usr/sbin/pgbouncer"


def test_template_workflow_matrix_names_every_variant() -> None:
    entries = matrix(load(TEMPLATE_WORKFLOW))

    assert [entry["variant"] for entry in entries] == VARIANTS
    for entry in entries:
        database = entry["database_url"].partition(":")[0].partition("+")[0]
        schema = "-schema" if entry["db_schema"] else ""
        assert entry["variant"] == f"{database}-{entry['session_style']}{schema}"


def test_template_workflow_checks_each_rendered_variant() -> None:
    job = load(TEMPLATE_WORKFLOW)["jobs"]["variants"]
    render_step, *checks = commands(job)

    assert render_step.startswith("uvx copier copy --defaults --vcs-ref HEAD")
    for answer in ("database_url", "session_style", "db_schema"):
        assert f"--data {answer}=${{{{ matrix.{answer} }}}}" in render_step
    assert checks[:4] == ["uv sync", *PROJECT_CHECKS]
    on_postgresql = job["steps"][-1]
    assert on_postgresql["run"] == "uv run pytest"
    assert on_postgresql["env"]["TEST_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert job["services"]["postgres"]["image"] == "postgres:15"


@pytest.mark.parametrize(
    "answers", matrix(load(TEMPLATE_WORKFLOW)), ids=lambda answers: answers["variant"]
)
def test_every_variant_gets_a_valid_workflow(tmp_path: Path, answers: dict[str, str]) -> None:
    data = {key: value for key, value in answers.items() if key != "variant"}
    project = render(tmp_path / "project", **data)

    text = (project / PROJECT_WORKFLOW).read_text()
    assert "{%" not in text
    assert not re.search(r"(?<!\$)\{\{", text), "a Jinja expression was left unrendered"
    assert "${{ github.workflow }}" in text, "GitHub's expressions must survive rendering"
    jobs = check_workflow(text)["jobs"]
    lint(project / PROJECT_WORKFLOW, project / PROJECT_DEPENDABOT)
    assert commands(jobs["lint"]) == ["uv sync", *PROJECT_CHECKS]
    for job_id in ("lint", "test-sqlite", "test-postgresql"):
        install = jobs[job_id]["steps"][2]
        assert install["run"] == "uv sync", job_id
        assert install["env"]["UV_LOCKED"] == "${{ hashFiles('uv.lock') != '' }}", job_id
    assert commands(jobs["test-sqlite"]) == ["uv sync", "uv run pytest"]
    assert "TEST_DATABASE_URL" not in jobs["test-sqlite"].get("env", {})
    assert commands(jobs["test-postgresql"]) == ["uv sync", "uv run pytest"]
    assert jobs["test-postgresql"]["services"]["postgres"]["image"] == "postgres:15"
    assert jobs["test-postgresql"]["env"]["TEST_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert jobs["test-lowest"]["env"] == {"UV_RESOLUTION": "lowest-direct"}
    assert commands(jobs["test-lowest"]) == ["uv sync", "uv run pytest"]


def test_projects_get_dependabot_for_dependencies_and_actions(tmp_path: Path) -> None:
    project = render(tmp_path / "project")

    config = yaml.safe_load((project / PROJECT_DEPENDABOT).read_text())
    updates = {update["package-ecosystem"]: update for update in config["updates"]}
    assert set(updates) == {"uv", "github-actions"}
    for update in updates.values():
        assert update["directory"] == "/"
        assert update["schedule"]["interval"] == "weekly"
