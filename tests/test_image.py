"""The rendered Dockerfile, built and run on a real engine: podman, on a stand-in for the official
Python image (see containers.py). `init-db` and `serve` from the image against the local
PostgreSQL, a plain user, no dev tools and no `.env` inside, and a clean, prompt exit on
`podman stop`. One test per variant: each image is built once, whichever xdist worker runs it."""

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from bench.database import scratch_database
from bench.pgbouncer_build import machine_lock
from bench.projects import UV

from .containers import BUILD_LOCK, CA_BUNDLE, podman, require_engine, standin_image
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

pytestmark = pytest.mark.render

# The console script, which the image's CMD runs.
CLI = PACKAGE.replace("_", "-")
EXPECTED_CMD = [CLI, "serve", "--host", "0.0.0.0", "--port", "8000"]
DEV_TOOLS = ("pytest", "ruff", "mypy", "httpx", "asgi_lifespan")

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


@contextmanager
def built_image(variant: str, base_image: str, workdir: Path) -> Iterator[str]:
    """Render a variant, lock it and build its image on the stand-in; the image's name, removed
    at the end."""
    project = render(workdir / "project", **VARIANTS[variant])
    assert (project / ".env").is_file(), "the render writes a .env, which the image must not hold"
    # The README has users commit uv.lock; the Dockerfile installs from it (--locked).
    run([UV, "lock"], project)
    name = f"localhost/cities-template-test-{variant}:{uuid.uuid4().hex[:12]}"
    # This machine's needs, not the Dockerfile's: PyPI through the host's network and its CA
    # bundle, mounted for the build only.
    args = ["build", "--network", "host", "--build-arg", f"PYTHON_IMAGE={base_image}"]
    if Path(CA_BUNDLE).exists():
        args += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    with machine_lock(BUILD_LOCK):
        podman([*args, "--tag", name, str(project)], timeout=600)
    try:
        yield name
    finally:
        with machine_lock(BUILD_LOCK):
            podman(["rmi", "--force", name], check=False)


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


def check_contents(image: str) -> None:
    """The image's command and user, and what it holds: no dev tools, no uv, no `.env`, no
    build directory; the package installed into the virtual environment."""
    config = json.loads(podman(["image", "inspect", image]).stdout)[0]["Config"]
    assert config["Cmd"] == EXPECTED_CMD
    assert config["User"] == "10001:10001"
    inside = json.loads(podman(["run", "--rm", image, "python", "-c", INSPECT_SCRIPT]).stdout)
    assert inside["uid"] == 10001
    assert inside["dev_tools"] == []
    assert inside["env_files"] == []
    assert inside["uv"] is None
    assert not inside["build_dir"]
    assert inside["package"].startswith("/opt/venv/lib/")


@requires_postgresql
def test_postgresql_image(base_image: str, tmp_path: Path) -> None:
    """`init-db` as a one-off container, then the image's own command (on a free port: the host's
    network is shared) against a database of the test's own; `podman stop` ends it cleanly and
    leaves no connection."""
    assert TEST_DATABASE_URL
    with (
        built_image("postgresql-plain-schema", base_image, tmp_path) as image,
        scratch_database(TEST_DATABASE_URL, prefix="img") as url,
    ):
        check_contents(image)
        settings = ["--env", f"DATABASE_URL={url}"]
        migrated = podman(["run", "--rm", "--network", "host", *settings, image, CLI, "init-db"])
        assert "upgraded from revision none to" in migrated.stdout

        port = free_port()
        with container(image, [*EXPECTED_CMD[:-1], str(port)], {"DATABASE_URL": url}) as name:
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


def test_sqlite_image(base_image: str, tmp_path: Path) -> None:
    """On SQLite the default `./cities.db` lands in /data, the working directory, which the app's
    user can write (a volume in production)."""
    with built_image("sqlite-plain", base_image, tmp_path) as image:
        check_contents(image)
        port = free_port()
        with container(image, [*EXPECTED_CMD[:-1], str(port)], {}) as name:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_answering(base_url, name)
            assert "upgraded from revision none" in podman(["exec", name, CLI, "init-db"]).stdout
            check_cities(base_url)
            assert "cities.db" in podman(["exec", name, "ls", "/data"]).stdout.split()
            stop_cleanly(name)
