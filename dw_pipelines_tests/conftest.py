"""Shared fixtures: a real PostgreSQL (never skipped), fresh databases, settings and environment.

PostgreSQL comes from `DW_TEST_DATABASE_URL` (any database on the server; `.ci/run` sets it) or,
when that is unset, from a throwaway server started with the `pgserver` package. If neither
works the session fails: the Postgres tests never skip themselves into green.

Each test that asks for `pg_url` gets its own database cloned from a migrated template, so tests
never see each other's rows. Databases are named after a random session prefix and dropped.
"""

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dw_pipelines.core.db import create_db_engine
from dw_pipelines.core.migrations import upgrade
from dw_pipelines.settings import SAMPLES_DIR, Settings, normalize_database_url

# The tests configure the worker explicitly; a developer's own DW_* settings must not leak in.
_KEEP = {"DW_TEST_DATABASE_URL", "DW_DAGSTER_HELM_DIR", "DW_TEST_CACHE"}
for _name in [n for n in os.environ if n.startswith("DW_") and n not in _KEEP]:
    del os.environ[_name]

SESSION_PREFIX = f"dwtest_{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server's maintenance database."""
    configured = os.environ.get("DW_TEST_DATABASE_URL")
    if configured:
        yield normalize_database_url(configured)
        return
    try:
        import pgserver
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("set DW_TEST_DATABASE_URL or install the dev extra (pgserver)")
    data_dir = tempfile.mkdtemp(prefix="dw-pgserver-")
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield normalize_database_url(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_admin(pg_server_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(pg_server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {engine.url.render_as_string()} is not reachable: {exc}")
    yield engine
    with engine.connect() as conn:
        names = (
            conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"),
                {"p": f"{SESSION_PREFIX}%"},
            )
            .scalars()
            .all()
        )
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def database_url(server_url: str, name: str) -> str:
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def create_database(admin: sa.Engine, name: str, template: str | None = None) -> None:
    with admin.connect() as conn:
        clause = f' TEMPLATE "{template}"' if template else ""
        conn.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))


@pytest.fixture(scope="session")
def pg_template(pg_admin: sa.Engine, pg_server_url: str) -> str:
    """A database with the outbox schema migrated; cloned per test."""
    name = f"{SESSION_PREFIX}_tmpl"
    create_database(pg_admin, name)
    engine = create_db_engine(database_url(pg_server_url, name))
    upgrade(engine)
    engine.dispose()
    return name


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def pg_url(pg_admin: sa.Engine, pg_server_url: str, pg_template: str) -> str:
    """A fresh, migrated PostgreSQL database for this test."""
    name = f"{SESSION_PREFIX}_{next(_counter)}"
    create_database(pg_admin, name, template=pg_template)
    return database_url(pg_server_url, name)


@pytest.fixture
def empty_pg_url(pg_admin: sa.Engine, pg_server_url: str) -> str:
    """A fresh PostgreSQL database with nothing in it (for migration tests)."""
    name = f"{SESSION_PREFIX}_{next(_counter)}"
    create_database(pg_admin, name)
    return database_url(pg_server_url, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database (the embedded default's layout)."""
    url = f"sqlite:///{tmp_path / 'dw-home' / 'dw.db'}"
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Run the test on both databases the outbox supports."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return request.getfixturevalue(fixture)


@pytest.fixture
def landing_dir(tmp_path: Path) -> Path:
    path = tmp_path / "landing"
    path.mkdir()
    return path


def make_settings(url: str, home: Path, landing_dir: Path, **overrides) -> Settings:
    env = {
        "DW_HOME": str(home),
        "DW_DATABASE_URL": url,
        "DW_LANDING_ROOT": os.pathsep.join([str(landing_dir), str(SAMPLES_DIR)]),
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return Settings.from_env(env)


@pytest.fixture
def dw_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, landing_dir: Path):
    """Point the worker's environment at a database; returns a function(url, **env) -> Settings.

    Dagster resources, sensors and subprocesses read settings from the environment, so tests
    that go through Dagster configure it here (monkeypatch restores it afterwards).
    """

    def configure(url: str, **extra: object) -> Settings:
        env = {
            "DW_HOME": str(tmp_path / "dw-home"),
            "DW_DATABASE_URL": url,
            "DW_LANDING_ROOT": os.pathsep.join([str(landing_dir), str(SAMPLES_DIR)]),
            **{k: str(v) for k, v in extra.items()},
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return Settings.from_env()

    return configure
