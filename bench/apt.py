"""Programs the benchmark runs (wrk, valgrind): found on the PATH, or installed from the
distribution's packages when missing and we may (root, with apt-get)."""

import logging
import os
import shutil
import subprocess

logger = logging.getLogger(__name__)


def find_or_install(program: str) -> str | None:
    """The path of `program`; when it is missing, install its package (of the same name) with
    apt-get if we are root, else None."""
    path = shutil.which(program)
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    logger.info("%s is missing: installing it with apt-get", program)
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", program]):
        if subprocess.run(command, env=env, capture_output=True, check=False).returncode:
            return None
    return shutil.which(program)
