"""PgBouncer 1.24.1, built from Debian trixie's source package, cached per machine.

Debian 12 packages PgBouncer 1.18, which keeps no prepared statement in transaction pooling mode
(`max_prepared_statements` came in 1.21). Debian trixie's source package builds here against
Debian 12's libevent, OpenSSL and c-ares, with Debian's patches (security fixes backported to
1.24.1) applied by `dpkg-source`. The source is fetched through a private apt state (a
sources file with one `deb-src` line, lists and caches in a temporary directory): the machine's
own apt sources and lists are left alone. The build deps come from the machine's own packages,
installed with apt-get when missing (as root).

The result is installed under the cache directory (`PGBOUNCER_BUILD_CACHE`, else
`/var/cache/cities-template` as root, else `$XDG_CACHE_HOME/cities-template`), so that the build
costs its minute once per machine. Several processes may ask at once (pytest-xdist workers): one
builds under a file lock, in a temporary directory renamed into place once the binary answers
with the right version; the others wait, then find it.

    python -m bench.pgbouncer_build        # builds if missing; prints the binary's path
"""

import argparse
import contextlib
import fcntl
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

VERSION: Final = "1.24.1"
SUITE: Final = "trixie"
SOURCES: Final = f"deb-src http://deb.debian.org/debian {SUITE} main\n"
SOURCE_PACKAGE: Final = "pgbouncer"
# Debian 12's packages that the build needs (dpkg-dev: dpkg-source, to apply Debian's patches).
BUILD_DEPS: Final = (
    "build-essential",
    "dpkg-dev",
    "pkgconf",
    "libevent-dev",
    "libssl-dev",
    "libc-ares-dev",
)
APT_USER: Final = "_apt"
CACHE_ENV: Final = "PGBOUNCER_BUILD_CACHE"
JOBS: Final = 2
LOG_TAIL_CHARS: Final = 4000


class BuildError(RuntimeError):
    """The build failed; the message says at which step, with the end of its output."""


def cache_root() -> Path:
    """Where builds are kept: `$PGBOUNCER_BUILD_CACHE`, else a machine-wide or per-user cache."""
    if configured := os.environ.get(CACHE_ENV):
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/cities-template")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cities-template"


def prefix(version: str = VERSION, root: Path | None = None) -> Path:
    return (root or cache_root()) / f"pgbouncer-{version}"


def binary_path(version: str = VERSION, root: Path | None = None) -> Path:
    return prefix(version, root) / "bin" / "pgbouncer"


def binary_version(binary: Path | str) -> str | None:
    """`1.24.1` from `pgbouncer --version`'s first line (`PgBouncer 1.24.1`); None if it fails."""
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    found = re.match(r"PgBouncer (\S+)", result.stdout)
    return found.group(1) if result.returncode == 0 and found else None


def cached(version: str = VERSION, root: Path | None = None) -> Path | None:
    """The cached build's binary, if there is one that answers with `version`."""
    binary = binary_path(version, root)
    return binary if binary.exists() and binary_version(binary) == version else None


def ensure(version: str = VERSION, root: Path | None = None, *, force: bool = False) -> Path:
    """The binary of PgBouncer `version`, built first if it is not in the cache."""
    root = root or cache_root()
    if not force and (binary := cached(version, root)):
        return binary
    root.mkdir(parents=True, exist_ok=True)
    with machine_lock(root / f"pgbouncer-{version}.lock"):
        # Another process may have built it while this one waited.
        if not force and (binary := cached(version, root)):
            return binary
        return _build(version, root)


@contextlib.contextmanager
def machine_lock(path: Path) -> Iterator[None]:
    """Hold the lock of file `path` (made if missing) against every process of this machine."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(
    step: str,
    command: Sequence[str | Path],
    log: Path,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run a step of the build, its output appended to `log`; BuildError if it fails."""
    with log.open("a") as output:
        output.write(f"\n$ {' '.join(map(str, command))}\n")
        output.flush()
        try:
            result = subprocess.run(
                [str(part) for part in command],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                check=False,
            )
        except OSError as error:
            msg = f"PgBouncer build: {step} failed: {error}"
            raise BuildError(msg) from error
    if result.returncode != 0:
        tail = log.read_text()[-LOG_TAIL_CHARS:]
        msg = f"PgBouncer build: {step} failed (exit {result.returncode}); log {log}:\n{tail}"
        raise BuildError(msg)


def missing_build_deps() -> list[str]:
    """The build deps that dpkg does not list as installed."""
    if not shutil.which("dpkg-query"):
        msg = "PgBouncer build: needs a Debian-like system (dpkg-query, apt-get)"
        raise BuildError(msg)
    missing = []
    for package in BUILD_DEPS:
        result = subprocess.run(
            ["dpkg-query", "--show", "--showformat=${db:Status-Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.stdout.strip() != "installed":
            missing.append(package)
    return missing


def _install_build_deps(log: Path) -> None:
    missing = missing_build_deps()
    if not missing:
        return
    if os.geteuid() != 0:
        packages = " ".join(missing)
        msg = f"PgBouncer build: install its build deps first: sudo apt-get install {packages}"
        raise BuildError(msg)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get update", ["apt-get", "update", "-q"], log, env=env)
    _run("installing build deps", ["apt-get", "install", "-y", "-q", *missing], log, env=env)


def _fetch_source(version: str, work: Path, log: Path) -> Path:
    """Debian's source package of `version` in `work/source`, through a private apt state; its
    `.dsc`. apt checks the files against the signed index of the suite."""
    apt = work / "apt"
    lists, cache = apt / "lists", apt / "cache"
    source = work / "source"
    for directory in (lists / "partial", cache / "archives" / "partial", source):
        directory.mkdir(parents=True)
    if os.geteuid() == 0 and _has_user(APT_USER):
        # apt downloads as its own user when run as root: let it write there.
        work.chmod(0o755)
        for directory in (lists / "partial", cache / "archives" / "partial", source):
            shutil.chown(directory, APT_USER)
    sources = apt / "sources.list"
    sources.write_text(SOURCES)
    options = [
        f"-oDir::Etc::SourceList={sources}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={lists}",
        f"-oDir::Cache={cache}",
        # The machine's own installed packages play no part in fetching a source package.
        "-oDir::State::status=/dev/null",
    ]
    _run(f"apt-get update ({SUITE} sources only)", ["apt-get", *options, "update", "-q"], log)
    _run(
        f"apt-get source {SOURCE_PACKAGE}",
        ["apt-get", *options, "source", "--download-only", "-q", SOURCE_PACKAGE],
        log,
        cwd=source,
    )
    descriptions = sorted(source.glob(f"{SOURCE_PACKAGE}_{version}-*.dsc"))
    if not descriptions:
        found = ", ".join(path.name for path in source.iterdir()) or "nothing"
        msg = f"PgBouncer build: {SUITE} has no {SOURCE_PACKAGE} {version} (downloaded: {found})"
        raise BuildError(msg)
    return descriptions[-1]


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _build(version: str, root: Path) -> Path:
    final = prefix(version, root)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".pgbouncer-{version}-build-", dir=root))
    log = work / "build.log"
    try:
        _install_build_deps(log)
        description = _fetch_source(version, work, log)
        tree = work / "tree"
        # The upstream tarball with Debian's patches (security fixes, among others) applied.
        _run("dpkg-source -x", ["dpkg-source", "-x", description, tree], log, cwd=work)
        # Configured for its final place, installed in a staging copy of it, renamed into place.
        _run("configure", ["./configure", f"--prefix={final}"], log, cwd=tree)
        _run("make", ["make", f"-j{JOBS}"], log, cwd=tree)
        stage = work / "stage"
        _run("make install", ["make", "install", f"DESTDIR={stage}"], log, cwd=tree)
        staged = stage / final.relative_to(final.anchor)
        built = binary_version(staged / "bin" / "pgbouncer")
        if built != version:
            msg = f"PgBouncer build: the binary says version {built}, not {version}; log {log}"
            raise BuildError(msg)
        shutil.copy(log, staged / "build.log")
        (staged / "SOURCE").write_text(f"Debian {SUITE}: {description.name}\n")
        if final.exists():  # a build that no longer answers (forced, or broken): replaced
            shutil.rmtree(final)
        staged.chmod(0o755)
        staged.rename(final)
    except BaseException:
        # Keep the log of a failed build beside the cache, for whoever reads the error.
        with contextlib.suppress(OSError):
            shutil.copy(log, root / f"pgbouncer-{version}-failed-build.log")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    sys.stderr.write(f"Built PgBouncer {version} in {elapsed:.0f} s: {final}\n")
    return final / "bin" / "pgbouncer"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pgbouncer_build",
        description=f"Build PgBouncer {VERSION} from Debian {SUITE}'s source package (cached); "
        "print its binary's path.",
    )
    parser.add_argument("--cache-dir", type=Path, help=f"default: {cache_root()} (${CACHE_ENV})")
    parser.add_argument("--force", action="store_true", help="build again even if cached")
    options = parser.parse_args(argv)
    try:
        binary = ensure(VERSION, options.cache_dir, force=options.force)
    except BuildError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    sys.stdout.write(f"{binary}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
