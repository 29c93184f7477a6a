"""The GitHub Actions workflows: the template repository's, and the one every project gets."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import ROOT, render

TEMPLATE_WORKFLOW = ROOT / ".github/workflows/ci.yml"
PROJECT_WORKFLOW = ".github/workflows/ci.yml"
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
# Maintained actions, pinned to a major version tag.
PINNED_ACTION = re.compile(r"^(actions/checkout|astral-sh/setup-uv)@v\d+(\.\d+)*$")


def load(path: Path) -> dict[str, Any]:
    workflow: dict[str, Any] = yaml.safe_load(path.read_text())
    return workflow


def check_workflow(workflow: dict[str, Any]) -> None:
    """A workflow GitHub can run: triggers, and jobs made of steps that use pinned actions."""
    # YAML 1.1 reads the key `on` as True.
    assert workflow.get(True), "no `on:` triggers"
    assert workflow["name"]
    assert workflow["jobs"]
    for job_id, job in workflow["jobs"].items():
        assert job["runs-on"] == "ubuntu-latest", job_id
        assert job["steps"], f"{job_id} has no steps"
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{job_id}: {step}"
            if "uses" in step:
                assert PINNED_ACTION.match(step["uses"]), f"{job_id}: {step['uses']}"


def commands(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def matrix(workflow: dict[str, Any]) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = workflow["jobs"]["variants"]["strategy"]["matrix"]["include"]
    return entries


def test_template_workflow_is_valid() -> None:
    check_workflow(load(TEMPLATE_WORKFLOW))


def test_template_workflow_runs_the_suite_with_postgresql() -> None:
    job = load(TEMPLATE_WORKFLOW)["jobs"]["template"]

    assert "uv run pytest" in commands(job)
    assert job["services"]["postgres"]["image"] == "postgres:15"
    assert job["env"]["TEST_DATABASE_URL"].startswith("postgresql+asyncpg://")


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
    workflow = yaml.safe_load(text)
    check_workflow(workflow)
    jobs = workflow["jobs"]
    assert commands(jobs["lint"]) == ["uv sync", *PROJECT_CHECKS]
    assert "uv run pytest" in commands(jobs["test-sqlite"])
    assert "TEST_DATABASE_URL" not in jobs["test-sqlite"].get("env", {})
    assert "uv run pytest" in commands(jobs["test-postgresql"])
    assert jobs["test-postgresql"]["services"]["postgres"]["image"] == "postgres:15"
    assert jobs["test-postgresql"]["env"]["TEST_DATABASE_URL"].startswith("postgresql+asyncpg://")
