"""The README's path for a newcomer, taken literally: render with its first command, put the
project in git and update it as "Updating a project" says."""

import re
import shutil
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, run, unexpected_skips
from .test_update import GIT_IDENTITY, commit, git, replace

README = ROOT / "README.md"
# The pinned Copier of the template's dev environment stands for `uvx copier` (its latest release).
COPIER = str(Path(sys.executable).with_name("copier"))
TEMPLATE_CHANGE = "Changed by a later commit of the template."


def readme_command(starts_with: str) -> str:
    """The README's command line that starts with `starts_with`, without its comment."""
    for line in README.read_text().splitlines():
        if line.startswith(starts_with):
            return re.sub(r"\s+#.*$", "", line).replace("uvx copier", COPIER)
    pytest.fail(f"the README has no command starting with {starts_with!r}")


@pytest.fixture
def template_clone(tmp_path: Path) -> Path:
    """The template's working tree, committed in a repository of its own, as a clone would be."""
    clone = tmp_path / "template"
    clone.mkdir()
    shutil.copy2(ROOT / "copier.yml", clone)
    ignored = shutil.ignore_patterns("__pycache__", "*.py[co]")
    shutil.copytree(ROOT / "template", clone / "template", ignore=ignored)
    git(clone, "init", "--quiet", "--initial-branch=main")
    commit(clone, "The template")
    return clone


@pytest.mark.render
def test_the_readme_render_passes_its_tests_and_updates_as_documented(
    template_clone: Path,
) -> None:
    """The README's first command, then its "Updating a project" commands, word for word."""
    render_and_test = readme_command("uvx copier copy ")
    result = run(["bash", "-c", render_and_test], template_clone, timeout=600)
    project = template_clone.parent / "cities-service"
    assert " passed" in result.stdout
    assert unexpected_skips(result.stdout) == []

    run(["bash", "-c", readme_command("git init && ")], project, env=GIT_IDENTITY)
    replace(
        template_clone / "template/README.md.jinja",
        "\n## Configuration\n",
        f"\n{TEMPLATE_CHANGE}\n\n## Configuration\n",
    )
    commit(template_clone, "A later change")
    update_command = readme_command("uvx copier update --defaults ")
    update = run(["bash", "-c", update_command], project, env=GIT_IDENTITY)

    assert "No git tags found in template; using HEAD as ref" in update.stdout + update.stderr
    assert TEMPLATE_CHANGE in (project / "README.md").read_text()
    assert (
        git(template_clone, "rev-parse", "--short", "HEAD").strip()
        in (project / ".copier-answers.yml").read_text()
    )
