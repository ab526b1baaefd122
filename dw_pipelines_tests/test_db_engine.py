"""The Postgres engines: one pool for the outbox and a warehouse in the same database, and the
ping before handing out a connection that sat idle (one the server dropped is replaced)."""

import time

import pytest
import sqlalchemy as sa

from dw_pipelines.core import db
from dw_pipelines.core.db import create_db_engine
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings


def _backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(admin: sa.Engine, pid: int) -> None:
    with admin.connect() as conn:
        assert conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
        for _ in range(100):  # the backend is gone a moment after the signal
            alive = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
            ).scalar_one()
            if not alive:
                return
            time.sleep(0.02)
    raise AssertionError(f"backend {pid} still alive")


def _count_pings(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    real_ping = engine.dialect.do_ping

    def counted(dbapi_connection) -> bool:
        pings.append(1)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_an_idle_connection_the_server_dropped_is_replaced(
    pg_url: str, pg_admin: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_db_engine(pg_url)
    try:
        pid = _backend_pid(engine)
        _terminate(pg_admin, pid)  # a restart or failover while the connection sat in the pool
        monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has now been idle "long"
        pings = _count_pings(engine, monkeypatch)
        assert _backend_pid(engine) != pid  # the ping found it dead; a new one served the query
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_a_connection_in_use_a_moment_ago_is_not_pinged(
    pg_url: str, pg_admin: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_db_engine(pg_url)
    try:
        pings = _count_pings(engine, monkeypatch)
        pids = {_backend_pid(engine) for _ in range(10)}
        assert len(pids) == 1 and pings == []  # ten checkouts, one connection, no round trip
        # The trade-off, shown: a connection the server dropped within the idle window fails its
        # one statement, and the pool replaces it for the next.
        _terminate(pg_admin, pids.pop())
        with pytest.raises(sa.exc.OperationalError):
            _backend_pid(engine)
        assert _backend_pid(engine) > 0
    finally:
        engine.dispose()


def test_outbox_and_warehouse_in_one_postgres_database_share_one_engine(
    pg_url: str, tmp_path, landing_dir
) -> None:
    service = build_service(make_settings(pg_url, tmp_path / "home", landing_dir))
    try:
        assert service.warehouse.engine is service.queue.engine
    finally:
        dispose(service)


def test_a_warehouse_elsewhere_keeps_its_own_engine(
    pg_url: str, sqlite_url: str, tmp_path, landing_dir
) -> None:
    warehouse_url = f"sqlite:///{tmp_path / 'wh' / 'warehouse.db'}"
    settings = make_settings(pg_url, tmp_path / "home", landing_dir, DW_WAREHOUSE_URL=warehouse_url)
    service = build_service(settings)
    try:
        assert service.warehouse.engine is not service.queue.engine
        assert service.warehouse.engine.dialect.name == "sqlite"
    finally:
        dispose(service)
    sqlite_service = build_service(make_settings(sqlite_url, tmp_path / "home2", landing_dir))
    try:  # SQLite attaches the warehouse schemas on connect: its own engine, same file
        assert sqlite_service.warehouse.engine is not sqlite_service.queue.engine
    finally:
        dispose(sqlite_service)
