"""Engines and the outbox/audit tables (SQLAlchemy Core), identical on SQLite and Postgres.

The tables here are the *model*; the Alembic migrations in `core/migrations` create them, and a test
checks that `upgrade head` yields exactly this metadata on both databases.
"""

import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

OUTBOX_STATUSES = ("PENDING", "SENT", "PROCESSING", "COMPLETED", "FAILED")
TERMINAL_STATUSES = ("COMPLETED", "FAILED")

# Tables a host application may share the database with are kept apart by name.
ALEMBIC_VERSION_TABLE = "dw_pipelines_alembic_version"

metadata = sa.MetaData()

# BIGINT ids do not auto-increment on SQLite; INTEGER PRIMARY KEY does (and is 64-bit there).
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

outbox = sa.Table(
    "dw_ingestion_outbox",
    metadata,
    sa.Column("job_id", sa.String(128), primary_key=True),
    sa.Column("idempotency_key", sa.String(255), nullable=False),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("dataset", sa.String(63), nullable=False),
    sa.Column("business_date", sa.Date(), nullable=False),
    sa.Column("payload", Json, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Timestamp, nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("dagster_run_id", sa.String(64), nullable=True),
    sa.Column("rows_loaded", sa.BigInteger(), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # Refreshed by the run that holds a PROCESSING job; a stale beat means the run died.
    sa.Column("heartbeat_at", Timestamp, nullable=True),
    # The source's size when the job was enqueued (a local file's stat, an object's HEAD), for
    # the run's pod size class; NULL for rows enqueued before the column existed.
    sa.Column("source_size_bytes", sa.BigInteger(), nullable=True),
    sa.UniqueConstraint("idempotency_key", name="uq_dw_ingestion_outbox_idempotency_key"),
    sa.CheckConstraint(
        "status IN ('PENDING', 'SENT', 'PROCESSING', 'COMPLETED', 'FAILED')",
        name="ck_dw_ingestion_outbox_status",
    ),
    # The claim query scans only claimable rows, in due order.
    sa.Index(
        "ix_dw_ingestion_outbox_claimable",
        "next_attempt_at",
        "created_at",
        postgresql_where=sa.text("status = 'PENDING'"),
        sqlite_where=sa.text("status = 'PENDING'"),
    ),
    sa.Index("ix_dw_ingestion_outbox_status_updated", "status", "updated_at"),
    sa.Index("ix_dw_ingestion_outbox_dataset_date", "dataset", "business_date"),
)

audit = sa.Table(
    "dw_ingestion_audit",
    metadata,
    sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("from_status", sa.String(16), nullable=True),
    sa.Column("to_status", sa.String(16), nullable=True),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("details", Json, nullable=True),
    sa.Index("ix_dw_ingestion_audit_job_id", "job_id", "id"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything this package stores is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_db_engine(url: str) -> Engine:
    """An engine for the outbox database or the warehouse.

    SQLite files get WAL and a busy timeout because the daemon and run processes write the same
    file; their parent directory is created so the embedded default needs no set-up.
    """
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        if sa_url.database and sa_url.database != ":memory:":
            Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(sa_url, connect_args={"timeout": 60})
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (BEGIN IMMEDIATE below).
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    options = {}
    if sa_url.get_driver_name() in ("psycopg", "psycopg2"):
        # Nothing here stores hstore; without this each engine's first connection looks the type up.
        options["use_native_hstore"] = False
    engine = sa.create_engine(sa_url, pool_size=2, max_overflow=4, **options)
    _ping_idle_connections(engine)
    return engine


# A pooled connection idle for at least this long is pinged before it is handed out, so one the
# server dropped meanwhile (a restart, a failover, an idle timeout) is replaced, not used. One
# checked in a moment ago was just working: a run's steps check a connection out about twenty
# times within a second, and pinging each (SQLAlchemy's `pool_pre_ping`) cost a round trip apiece.
PING_AFTER_IDLE_SECONDS = 1.0
_CHECKED_IN_AT = "dw_checked_in_at"


def _ping_idle_connections(engine: Engine) -> None:
    dialect = engine.dialect

    def checked_in(_dbapi_connection, record) -> None:
        if record is not None:
            record.info[_CHECKED_IN_AT] = time.monotonic()

    def checked_out(dbapi_connection, record, _proxy) -> None:
        checked_in_at = record.info.pop(_CHECKED_IN_AT, None)
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
            return  # a new connection, or one in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                # As `pool_pre_ping` does: drop every pooled connection older than now, then
                # the pool connects anew for this checkout.
                raise sa.exc.InvalidatePoolError(str(exc)) from exc
            raise

    sa.event.listen(engine, "checkin", checked_in)  # pool events; they outlive `dispose()`
    sa.event.listen(engine, "checkout", checked_out)


def _sqlite_on_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_on_begin(connection) -> None:
    # Take the write lock up front: two writers never deadlock upgrading a read lock.
    connection.exec_driver_sql("BEGIN IMMEDIATE")
