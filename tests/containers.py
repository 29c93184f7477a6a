"""Podman for the image tests: the engine's options on this kind of machine, and a stand-in for the
official Python image, built once per machine with debootstrap and kept in podman's image store.

No image registry is reachable here, so `python:3.x-slim` cannot be pulled. The stand-in is a
Debian bookworm with its Python 3.11 (the rendered project supports 3.11+), without Debian's
`EXTERNALLY-MANAGED` marker (official images have none) and with `SSL_CERT_FILE` pointing at its
CA bundle, so that uv trusts the host's bundle mounted there at build time. Nothing of that is in
the rendered Dockerfile.
"""

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import pytest

from bench.pgbouncer_build import machine_lock

# Debian's podman runs here with runc and the cgroupfs manager only (crun fails on the hybrid
# cgroup v1); `.ci/run` also sets `default_ulimits = []` in /etc/containers/containers.conf.
PODMAN: Final = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
TOOLS: Final = ("podman", "runc", "debootstrap")

# Bump the tag when the recipe changes: a machine then builds the new stand-in once.
STANDIN: Final = "localhost/cities-template-python-standin:bookworm-1"
STANDIN_PACKAGES: Final = "python3,python3-venv,python3-pip,python-is-python3,ca-certificates"
CA_BUNDLE: Final = "/etc/ssl/certs/ca-certificates.crt"
# Concurrent xdist workers, or suites, of this machine build the stand-in once.
STANDIN_LOCK: Final = Path(tempfile.gettempdir()) / "cities-template-python-standin.lock"
# podman's builds race each other, and removals of images, in its storage ("identifier is not a
# container", "layer not known": buildah issue 5674, open): one at a time on this machine.
BUILD_LOCK: Final = Path(tempfile.gettempdir()) / "cities-template-podman-build.lock"

# Debian puts debootstrap in /usr/sbin, which is not on every user's PATH.
SBIN_PATH: Final = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing_engine() -> str | None:
    """Why the image tests cannot run here, or None when they can."""
    for tool in TOOLS:
        if shutil.which(tool, path=SBIN_PATH) is None:
            return f"{tool} is not installed (.ci/run installs podman, runc and debootstrap)"
    if os.geteuid() != 0 and not image_exists(STANDIN):
        sudo = shutil.which("sudo")
        check = [sudo or "sudo", "-n", "true"]
        if sudo is None or subprocess.run(check, capture_output=True, check=False).returncode:
            return "building the stand-in base image (debootstrap) needs root or sudo -n"
    return None


def require_engine() -> None:
    """Skip the test without podman and its helpers; in CI, where .ci/run installs them, fail."""
    if reason := missing_engine():
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: in CI the container image tests must run")
        pytest.skip(reason)


def podman(
    args: Sequence[str], *, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run podman with this machine's options; fail the test with its output if it fails."""
    command = [*PODMAN, *args]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check:
        assert result.returncode == 0, (
            f"`{' '.join(command)}` failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def image_exists(name: str) -> bool:
    return podman(["image", "exists", name], check=False).returncode == 0


def as_root(command: Sequence[str]) -> list[str]:
    """`command` as root: directly when we are root, else through sudo without a password."""
    return list(command) if os.geteuid() == 0 else ["sudo", "-n", *command]


def standin_image(workdir: Path) -> tuple[str, float | None]:
    """The stand-in base image's name, and how long building it took (None when it was there)."""
    with machine_lock(STANDIN_LOCK):
        if image_exists(STANDIN):
            return STANDIN, None
        start = time.monotonic()
        _build_standin(workdir / "standin")
        return STANDIN, time.monotonic() - start


def _build_standin(root: Path) -> None:
    debootstrap = shutil.which("debootstrap", path=SBIN_PATH)
    assert debootstrap
    try:
        result = subprocess.run(
            as_root(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={STANDIN_PACKAGES}",
                    "bookworm",
                    str(root),
                ]
            ),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-4000:]}"
        # Official Python images let pip install into their Python; apt's caches stay out.
        cleanup = "rm -f usr/lib/python3*/EXTERNALLY-MANAGED var/cache/apt/archives/*.deb"
        subprocess.run(
            as_root(["sh", "-c", f"cd {root} && {cleanup} && rm -rf var/lib/apt/lists/*"]),
            check=True,
        )
        # The engine mounts its own /dev: the device nodes stay out (a rootless engine could
        # not create them).
        with subprocess.Popen(
            as_root(["tar", "-C", str(root), "--exclude=./dev/*", "-c", "."]),
            stdout=subprocess.PIPE,
        ) as tar:
            imported = subprocess.run(
                [
                    *PODMAN,
                    "import",
                    "--change",
                    f"ENV SSL_CERT_FILE={CA_BUNDLE}",
                    "--change",
                    'CMD ["python3"]',
                    "-",
                    STANDIN,
                ],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        assert tar.returncode == 0, "tar of the stand-in's root failed"
        assert imported.returncode == 0, f"podman import failed:\n{imported.stderr[-4000:]}"
    finally:
        subprocess.run(as_root(["rm", "-rf", str(root)]), check=False)
