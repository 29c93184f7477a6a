"""Database URLs as providers hand them out, checked and made into what asyncpg takes.

Besides `postgresql+asyncpg://user@host:5432/db`, PostgreSQL URLs may have a bare `postgresql://`
or `postgres://` (asyncpg is selected), a Unix socket (`user@/db?host=/var/run/postgresql`), a list
of hosts tried in turn (`user@/db?host=db1:5432&host=db2:5432&target_session_attrs=read-write`),
and libpq's SSL parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`). SQLAlchemy's asyncpg
dialect passes sockets and host lists on as they are; asyncpg takes the SSL parameters as its
`ssl` argument instead (`asyncpg_ssl`).
"""

import errno
import ssl
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

SUPPORTED_DRIVERS: Final = ("postgresql+asyncpg", "sqlite+aiosqlite")
_ASYNC_DRIVERS: Final = {"postgres": "postgresql+asyncpg", "postgresql": "postgresql+asyncpg"}

# libpq's `sslmode` values, from no TLS to a certificate checked against the host name. asyncpg's
# `ssl` takes the same names, and is accepted in the URL in place of `sslmode`.
SSL_MODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq's certificate files: the CA's that signed the server's certificate, the client's own.
SSL_FILES: Final = ("sslrootcert", "sslcert", "sslkey")
_SSL_PARAMETERS: Final = ("sslmode", "ssl", *SSL_FILES)
_ENCRYPTING_SSL_MODES: Final = ("require", "verify-ca", "verify-full")
# Where libpq looks for the CA's certificate when the URL names none.
_DEFAULT_ROOT_CERT: Final = "~/.postgresql/root.crt"


def normalize_database_url(url: str) -> str:
    """`url` with the async driver selected; a `ValueError` says what is wrong with it."""
    return parse_database_url(url).render_as_string(hide_password=False)


def parse_database_url(url: str) -> URL:
    """`url` parsed, with the async driver selected; a `ValueError` says what is wrong with it.

    The messages never repeat the URL: it may hold a password.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        msg = "not a database URL: expected driver://user@host:port/dbname"
        raise ValueError(msg) from None
    drivername = _ASYNC_DRIVERS.get(parsed.drivername, parsed.drivername)
    if drivername not in SUPPORTED_DRIVERS:
        supported = " or ".join(f"{driver}://" for driver in SUPPORTED_DRIVERS)
        msg = f"unsupported database driver {parsed.drivername!r}: use {supported}"
        raise ValueError(msg)
    parsed = parsed.set(drivername=drivername)
    if parsed.get_backend_name() == "postgresql":
        _check_query(parsed)
    return parsed


def _check_query(url: URL) -> None:
    # SQLAlchemy hides the password of `user:password@`, never one in the query.
    if any(key.lower().endswith("password") for key in url.query):
        msg = "the database URL must not contain a password in its query: set DB_PASSWORD instead"
        raise ValueError(msg)
    if "sslmode" in url.query and "ssl" in url.query:
        msg = "give sslmode (libpq's name) or ssl (asyncpg's), not both"
        raise ValueError(msg)
    mode = _ssl_mode(url)
    if mode is not None and mode not in SSL_MODES:
        msg = f"unsupported sslmode {mode!r}: use {' or '.join(SSL_MODES)}"
        raise ValueError(msg)
    if any(_parameter(url, name) for name in SSL_FILES) and mode not in _ENCRYPTING_SSL_MODES:
        msg = "sslrootcert, sslcert and sslkey need sslmode=require, verify-ca or verify-full"
        raise ValueError(msg)
    if _parameter(url, "sslkey") and not _parameter(url, "sslcert"):
        msg = "sslkey needs sslcert, the certificate of that key"
        raise ValueError(msg)


def without_ssl_parameters(url: URL) -> URL:
    """`url` without its SSL parameters, which asyncpg takes as `ssl` (see `asyncpg_ssl`)."""
    return url.difference_update_query(_SSL_PARAMETERS)


def asyncpg_ssl(url: URL) -> str | ssl.SSLContext | None:
    """asyncpg's `ssl` argument for the SSL parameters of a parsed URL; None when it has none.

    A mode alone keeps its name, which asyncpg reads as libpq does (the verify modes check the
    server's certificate against ~/.postgresql/root.crt). With certificate files, a context that
    uses them: it checks the certificate against `sslrootcert` (also for `require`, as libpq does
    when it has a root certificate), and the host name for `verify-full` only.
    """
    mode = _ssl_mode(url)
    root_cert, cert, key = (_parameter(url, name) for name in SSL_FILES)
    if not (root_cert or cert):
        return mode
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = mode == "verify-full"
    if root_cert or mode != "require":
        context.load_verify_locations(cafile=_file(root_cert or _DEFAULT_ROOT_CERT))
    else:
        context.verify_mode = ssl.CERT_NONE
    if cert:
        context.load_cert_chain(_file(cert), _file(key) if key else None)
    return context


def _file(path: str) -> Path:
    """The file at `path`, which must exist: ssl's own error would not say which is missing."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such certificate file", str(file))
    return file


def _ssl_mode(url: URL) -> str | None:
    return _parameter(url, "sslmode") or _parameter(url, "ssl")


def _parameter(url: URL, name: str) -> str | None:
    value = url.query.get(name)
    if isinstance(value, tuple):
        msg = f"{name} must be given once in the database URL"
        raise ValueError(msg)
    return value
