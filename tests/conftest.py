"""Fixtures shared by the template's tests."""

from collections.abc import Callable
from pathlib import Path

import pytest

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
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache per worker: the variants share their third-party modules' analysis."""
    return tmp_path_factory.mktemp("mypy-cache")
