"""The questions: defaults, derived values, validators, and where answers end up."""

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import PG_ANSWER_URL, ROOT, render


def answers(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return loaded


def test_defaults_render_a_sqlite_project(tmp_path: Path) -> None:
    project = render(tmp_path / "p")

    for path in (
        "pyproject.toml",
        "README.md",
        ".gitignore",
        ".env",
        "src/cities_service/main.py",
        "src/cities_service/__main__.py",
        "tests/conftest.py",
        "Dockerfile",
        ".dockerignore",
    ):
        assert (project / path).is_file(), path
    assert answers(project) | {"_commit": None, "_src_path": None} == {
        "_commit": None,
        "_src_path": None,
        "project_name": "Cities Service",
        "package_name": "cities_service",
        "database_url": "sqlite+aiosqlite:///./cities.db",
        "session_style": "plain",
    }
    config = (project / "src/cities_service/core/config.py").read_text()
    assert 'database_url: str = "sqlite+aiosqlite:///./cities.db"' in config
    assert 'db_pooler: Literal["none", "pgbouncer", "pgbouncer-prepared"] = "none"' in config


@pytest.mark.parametrize(
    ("project_name", "package_name"),
    [("Cities Service", "cities_service"), ("  My Cool-Service 2 ", "my_cool_service_2")],
)
def test_package_name_is_derived_from_project_name(
    tmp_path: Path, project_name: str, package_name: str
) -> None:
    project = render(tmp_path / "p", project_name=project_name)

    assert answers(project)["package_name"] == package_name
    assert (project / "src" / package_name / "main.py").is_file()


@pytest.mark.parametrize(
    ("url", "rendered"),
    [
        ("postgres://app@db.internal/cities", "postgresql+asyncpg://app@db.internal/cities"),
        ("postgresql://app@db:5433/cities", "postgresql+asyncpg://app@db:5433/cities"),
        ("postgresql+asyncpg://app@[::1]/cities", "postgresql+asyncpg://app@[::1]/cities"),
        ("sqlite+aiosqlite:////var/lib/cities.db", "sqlite+aiosqlite:////var/lib/cities.db"),
        # Unix sockets: a directory, or Cloud SQL's instance path.
        (
            "postgresql://app@/cities?host=/var/run/postgresql",
            "postgresql+asyncpg://app@/cities?host=/var/run/postgresql",
        ),
        (
            "postgresql+asyncpg://app@/cities?host=/cloudsql/project:region:instance",
            "postgresql+asyncpg://app@/cities?host=/cloudsql/project:region:instance",
        ),
        # A failover list, tried in turn.
        (
            "postgres://app@/cities?host=db1:5432&host=db2:5432&target_session_attrs=read-write",
            "postgresql+asyncpg://app@/cities?host=db1:5432&host=db2:5432&target_session_attrs=read-write",
        ),
        # libpq's SSL parameters, and asyncpg's spelling of the mode.
        (
            "postgresql://app@db/cities?sslmode=require",
            "postgresql+asyncpg://app@db/cities?sslmode=require",
        ),
        (
            "postgresql://app@db/cities?sslmode=verify-full&sslrootcert=/etc/ssl/root.crt",
            "postgresql+asyncpg://app@db/cities?sslmode=verify-full&sslrootcert=/etc/ssl/root.crt",
        ),
        (
            "postgresql://app@db/cities?sslmode=verify-ca&sslcert=~/app.crt&sslkey=~/app.key",
            "postgresql+asyncpg://app@db/cities?sslmode=verify-ca&sslcert=~/app.crt&sslkey=~/app.key",
        ),
        (
            "postgresql+asyncpg://app@db/cities?ssl=prefer",
            "postgresql+asyncpg://app@db/cities?ssl=prefer",
        ),
    ],
)
def test_database_url_is_rendered_with_the_async_driver(
    tmp_path: Path, url: str, rendered: str
) -> None:
    project = render(tmp_path / "p", database_url=url)

    config = (project / "src/cities_service/core/config.py").read_text()
    assert f'database_url: str = "{rendered}"' in config


def test_postgresql_answers_become_setting_defaults(tmp_path: Path) -> None:
    project = render(
        tmp_path / "p",
        database_url=PG_ANSWER_URL,
        pool_size=7,
        max_overflow=0,
        pool_timeout=2.5,
        pool_pre_ping=False,
        db_schema="cities",
        session_style="scoped",
        connection_pooler="pgbouncer-prepared",
    )

    config = (project / "src/cities_service/core/config.py").read_text()
    for line in (
        "db_pool_size: int = Field(default=7,",
        "db_max_overflow: int = Field(default=0,",
        "db_pool_timeout: float = Field(default=2.5,",
        "db_pool_pre_ping: bool = False",
        'db_schema: str = Field(default="cities",',
        'db_pooler: Literal["none", "pgbouncer", "pgbouncer-prepared"] = "pgbouncer-prepared"',
    ):
        assert line in config
    assert "async_scoped_session" in (project / "src/cities_service/core/database.py").read_text()


def test_password_goes_only_to_the_gitignored_env(tmp_path: Path) -> None:
    password = "s3cret'pa$$ w#rd\\"
    project = render(tmp_path / "p", database_url=PG_ANSWER_URL, database_password=password)

    tracked = [path for path in project.rglob("*") if path.is_file() and path.name != ".env"]
    assert all(password not in path.read_text() for path in tracked)
    assert "database_password" not in answers(project)
    env = (project / ".env").read_text()
    assert "DB_PASSWORD='s3cret\\'pa$$ w#rd\\\\'" in env
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    ignored = subprocess.run(["git", "check-ignore", ".env"], cwd=project, check=False)
    assert ignored.returncode == 0, ".env must be gitignored"


TERMINAL_COLUMNS = 80

BAD_ANSWERS = [
    ({"package_name": "1cities"}, "Not a package name"),
    ({"package_name": "Cities"}, "Not a package name"),
    ({"package_name": "my-cities"}, "Not a package name"),
    ({"package_name": "class"}, "Python keyword"),
    ({"package_name": "fastapi"}, "a dependency's name"),
    ({"project_name": "  "}, "must not be empty"),
    ({"database_url": "mysql://app@db/cities"}, "Unsupported: use"),
    ({"database_url": "postgresql+psycopg://app@db/cities"}, "Unsupported: use"),
    ({"database_url": "sqlite:///cities.db"}, "Unsupported: use"),
    ({"database_url": "cities.db"}, "Unsupported: use"),
    ({"database_url": "postgresql://app:hunter2@db/cities"}, "must not contain a password"),
    ({"database_url": "postgresql+asyncpg://app:@db/cities"}, "must not contain a password"),
    (
        {"database_url": "postgresql://app@db/cities?password=hunter2"},
        "must not contain a password",
    ),
    (
        {"database_url": "postgresql://app@db/cities?sslmode=require&PassWord=hunter2"},
        "must not contain a password",
    ),
    (
        {"database_url": "postgresql://app@db/cities?sslpassword=hunter2"},
        "must not contain a password",
    ),
    ({"database_url": "postgresql://app@db1:5432,db2:5432/cities"}, "List several hosts"),
    ({"database_url": "postgresql://app@/cities?host=db1&host=db2"}, "needs its port"),
    ({"database_url": "postgresql://app@/cities?host=db1:5432&host=db2"}, "needs its port"),
    ({"database_url": "postgresql://app@db/cities?sslmode=required"}, "Unsupported sslmode"),
    ({"database_url": "postgresql://app@db/cities?ssl=true"}, "Unsupported sslmode"),
    (
        {"database_url": "postgresql://app@db/cities?sslmode=require&ssl=require"},
        "SSL parameter once",
    ),
    (
        {"database_url": "postgresql://app@db/cities?sslmode=require&sslmode=disable"},
        "SSL parameter once",
    ),
    (
        {"database_url": "postgresql://app@db/cities?sslmode=prefer&sslrootcert=/root.crt"},
        "need sslmode=require, verify-ca or verify-full",
    ),
    (
        {"database_url": "postgresql://app@db/cities?sslrootcert=/root.crt"},
        "need sslmode=require, verify-ca or verify-full",
    ),
    (
        {"database_url": "postgresql://app@db/cities?sslmode=require&sslkey=/k"},
        "sslkey needs sslcert",
    ),
    ({"database_url": "postgresql://app@/cities?host=/run/$(reboot)"}, "Malformed PostgreSQL URL"),
    ({"database_url": "postgresql://app@db/cities?sslmode"}, "Malformed PostgreSQL URL"),
    ({"database_url": "postgresql://db"}, "Malformed PostgreSQL URL"),
    ({"database_url": "postgresql://app@/cities"}, "Malformed PostgreSQL URL"),
    ({"database_url": "postgresql://app@db/cities; DROP TABLE x"}, "must not contain spaces"),
    ({"database_url": "postgresql://app@db/$(reboot)"}, "Malformed PostgreSQL URL"),
    ({"database_url": "sqlite+aiosqlite:///`reboot`.db"}, "Malformed SQLite URL"),
    ({"database_url": "sqlite+aiosqlite://cities.db"}, "Malformed SQLite URL"),
    ({"pool_size": 0}, "pool size must be between 1 and 1000"),
    ({"pool_size": 1001}, "pool size must be between 1 and 1000"),
    ({"max_overflow": -1}, "max overflow must be between 0 and 1000"),
    ({"pool_timeout": 0}, "greater than 0"),
    ({"db_schema": "Cities"}, "Not a valid schema name"),
    ({"db_schema": "1cities"}, "Not a valid schema name"),
    ({"db_schema": "x; DROP TABLE cities"}, "Not a valid schema name"),
    ({"db_schema": 'x"; DROP TABLE cities; --'}, "Not a valid schema name"),
    ({"db_schema": "$(reboot)"}, "Not a valid schema name"),
    ({"db_schema": "a" * 64}, "Not a valid schema name"),
    ({"db_schema": "pg_cities"}, "reserved by PostgreSQL"),
    ({"session_style": "threadlocal"}, "'threadlocal' is not in ['plain', 'scoped']"),
    (
        {"connection_pooler": "pgpool"},
        "'pgpool' is not in ['none', 'pgbouncer', 'pgbouncer-prepared']",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_ANSWERS)
def test_bad_answers_are_refused_with_a_clear_message(
    tmp_path: Path, data: dict[str, Any], message: str
) -> None:
    answers_ = {"database_url": PG_ANSWER_URL} | data

    with pytest.raises(ValueError, match=r"Validation error|Invalid choice") as refused:
        render(tmp_path / "p", **answers_)

    assert message in str(refused.value)
    assert not (tmp_path / "p").exists()
    # Copier shows a validator's message on the prompt's one line.
    _question, _, shown = str(refused.value).partition(": ")
    assert "\n" not in shown
    assert len(shown) <= TERMINAL_COLUMNS or "Invalid choice" in str(refused.value)


def test_every_help_and_choice_fits_an_80_column_terminal() -> None:
    questions = yaml.safe_load((ROOT / "copier.yml").read_text())
    shown = [
        line
        for question in questions.values()
        if isinstance(question, dict)
        for text in [question.get("help", ""), *question.get("choices", {})]
        for line in str(text).splitlines()
    ]

    assert [line for line in shown if len(line) > TERMINAL_COLUMNS] == []
