"""The rendered Dockerfile, built and run on a real engine: podman, on a stand-in for the official
Python image (see containers.py). `init-db` and `serve` from the image against the local
PostgreSQL, a plain user, no dev tools and no `.env` inside, and a clean, prompt exit on
`podman stop`. Each variant's image is built once, in one xdist worker."""

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.database import scratch_database
from bench.projects import UV

from .containers import CA_BUNDLE, podman, require_engine, standin_image
from .helpers import (
    PACKAGE,
    TEST_DATABASE_URL,
    VARIANTS,
    free_port,
    render,
    requires_postgresql,
    run,
)
from .postgres import fetch

pytestmark = [pytest.mark.render, pytest.mark.xdist_group("image")]

# The console script, which the image's CMD runs.
CLI = PACKAGE.replace("_", "-")
EXPECTED_CMD = [CLI, "serve", "--host", "0.0.0.0", "--port", "8000"]
DEV_TOOLS = ("pytest", "ruff", "mypy", "httpx", "asgi_lifespan")
# A line only the render's .env has: the image must not hold it.
ENV_MARKER = "# image test: this .env must stay out of the image"

# What the image holds, seen from inside it by its own Python: who runs it, the dev tools it can
# import, every file whose name starts with `.env`, whether uv and the builder's files are there.
INSPECT_SCRIPT = f"""
import importlib.util, json, os, shutil
env_files = []
for top, dirs, files in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    env_files += [os.path.join(top, f) for f in files if f.startswith(".env")]
print(json.dumps({{
    "uid": os.getuid(),
    "dev_tools": [m for m in {list(DEV_TOOLS)!r} if importlib.util.find_spec(m)],
    "env_files": env_files,
    "uv": shutil.which("uv"),
    "build_dir": os.path.exists("/build"),
    "package": importlib.util.find_spec("{PACKAGE}").origin,
}}))
"""


@dataclass(frozen=True)
class Image:
    name: str
    project: Path
    build_seconds: float


@pytest.fixture(scope="session")
def base_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The stand-in Python image, built once per machine; a container must start on it."""
    require_engine()
    name, _ = standin_image(tmp_path_factory.mktemp("standin"))
    started = podman(["run", "--rm", name, "python3", "-c", "print('ok')"], check=False)
    if started.returncode:
        pytest.fail(
            "podman cannot start a container here (.ci/run sets `default_ulimits = []` under "
            f"[containers] in /etc/containers/containers.conf):\n{started.stderr[-2000:]}"
        )
    return name


@pytest.fixture(scope="session")
def image(
    base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Image]]:
    """Render a variant, lock it and build its image, once per session; removed at the end."""
    images: dict[str, Image] = {}

    def build(variant: str) -> Image:
        if variant not in images:
            workdir = tmp_path_factory.mktemp(f"image-{variant}")
            project = render(workdir / "project", **VARIANTS[variant])
            with (project / ".env").open("a") as env_file:
                env_file.write(f"{ENV_MARKER}\n")
            # The README has users commit uv.lock; the Dockerfile installs from it (--locked).
            run([UV, "lock"], project)
            name = f"localhost/cities-template-test-{variant}:{uuid.uuid4().hex[:12]}"
            # This machine's needs, not the Dockerfile's: PyPI through the host's network and
            # its CA bundle, mounted for the build only.
            args = ["build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base_image}"]
            if Path(CA_BUNDLE).exists():
                args += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
            start = time.monotonic()
            podman([*args, "--tag", name, str(project)], timeout=600)
            images[variant] = Image(name, project, time.monotonic() - start)
        return images[variant]

    yield build
    for built in images.values():
        podman(["rmi", "--force", built.name], check=False)


@contextmanager
def container(image: str, command: Sequence[str], env: Mapping[str, str]) -> Iterator[str]:
    """A detached container of `image` on the host's network; its name. Removed at the end."""
    name = f"cities-template-test-{uuid.uuid4().hex[:12]}"
    settings = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
    podman(["run", "--detach", "--name", name, "--network", "host", *settings, image, *command])
    try:
        yield name
    finally:
        podman(["rm", "--force", "--time", "0", name], check=False)


def logs(name: str) -> str:
    result = podman(["logs", name], check=False)
    return result.stdout + result.stderr


def wait_until_answering(base_url: str, name: str) -> None:
    """Wait until the app in container `name` answers `GET /health`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        running = podman(["inspect", "--format", "{{.State.Running}}", name]).stdout.strip()
        assert running == "true", f"the container exited:\n{logs(name)}"
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the app did not answer within 30 s:\n{logs(name)}")


def check_cities(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        assert client.get("/health").json() == {"status": "ok"}
        lyon = client.post("/cities", json={"name": "Lyon", "population": 522_250})
        assert lyon.status_code == 201, lyon.text
        assert client.get("/cities/biggest", params={"limit": 1}).json() == [lyon.json()]


def stop_cleanly(name: str) -> None:
    """`podman stop` (SIGTERM, then SIGKILL after 10 s): the app must exit 0 on SIGTERM itself,
    not be killed (exit code 137)."""
    podman(["stop", "--time", "10", name], timeout=30)
    state = json.loads(podman(["inspect", "--format", "{{json .State}}", name]).stdout)
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']} on SIGTERM:\n{logs(name)}"
    assert "Finished server process" in logs(name)


def test_image_runs_the_cli_as_a_plain_user_without_dev_tools_or_env(
    image: Callable[[str], Image],
) -> None:
    built = image("postgresql-plain-schema")
    config = json.loads(podman(["image", "inspect", built.name]).stdout)[0]["Config"]
    assert config["Cmd"] == EXPECTED_CMD
    assert config["User"] == "10001:10001"
    inside = json.loads(podman(["run", "--rm", built.name, "python", "-c", INSPECT_SCRIPT]).stdout)
    assert inside["uid"] == 10001
    assert inside["dev_tools"] == []
    assert inside["env_files"] == []
    assert inside["uv"] is None
    assert not inside["build_dir"]
    # Installed as a package into the environment, not linked to the build's sources.
    assert inside["package"].startswith("/opt/venv/lib/")


@requires_postgresql
def test_postgresql_image_migrates_serves_and_stops(image: Callable[[str], Image]) -> None:
    """`init-db` as a one-off container, then the image's own command (on a free port: the host's
    network is shared) against a database of the test's own; `podman stop` ends it cleanly."""
    assert TEST_DATABASE_URL
    built = image("postgresql-plain-schema")
    with scratch_database(TEST_DATABASE_URL, prefix="img") as url:
        env = {"DATABASE_URL": url}
        init_db = [CLI, "init-db"]
        settings = ["--env", f"DATABASE_URL={url}"]
        migrated = podman(["run", "--rm", "--network", "host", *settings, built.name, *init_db])
        assert "upgraded from revision none to" in migrated.stdout

        port = free_port()
        with container(built.name, [*EXPECTED_CMD[:-1], str(port)], env) as name:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_answering(base_url, name)
            check_cities(base_url)
            # Exec form: the CLI itself is process 1, so SIGTERM reaches it.
            process_1 = podman(["exec", name, "cat", "/proc/1/cmdline"]).stdout.split("\0")
            assert process_1[1:3] == [f"/opt/venv/bin/{CLI}", "serve"], process_1
            assert podman(["exec", name, "id", "-u"]).stdout.strip() == "10001"
            stop_cleanly(name)

        others = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        assert fetch(url, f"{others} AND pid <> pg_backend_pid()")[0][0] == 0


def test_sqlite_image_keeps_its_database_in_data(image: Callable[[str], Image]) -> None:
    """On SQLite the default `./cities.db` lands in /data, the working directory that the app's
    user can write (a volume in production)."""
    built = image("sqlite-plain")
    port = free_port()
    with container(built.name, [*EXPECTED_CMD[:-1], str(port)], {}) as name:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_answering(base_url, name)
        assert "upgraded from revision none to" in podman(["exec", name, CLI, "init-db"]).stdout
        check_cities(base_url)
        assert "cities.db" in podman(["exec", name, "ls", "/data"]).stdout.split()
        stop_cleanly(name)
