"""Integration tier: the Alembic migrations against empty PostgreSQL and SQLite databases.

`upgrade head` must produce exactly `dw_pipelines.core.db.metadata` (the model the code queries),
keep its version in its own table and be safe to run again.
"""

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from dw_pipelines.core.db import (
    ALEMBIC_VERSION_TABLE,
    OUTBOX_STATUSES,
    audit,
    create_db_engine,
    metadata,
    outbox,
)
from dw_pipelines.core.migrations import alembic_config, current_revision, upgrade

OUTBOX = "dw_ingestion_outbox"
AUDIT = "dw_ingestion_audit"
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on a database with no tables at all."""
    if request.param == "postgresql":
        url = request.getfixturevalue("empty_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'migrations' / 'dw.db'}"
    engine = create_db_engine(url)
    yield engine
    engine.dispose()


def head_revision(engine: sa.Engine) -> str:
    heads = ScriptDirectory.from_config(alembic_config(engine)).get_heads()
    assert len(heads) == 1, f"the migrations have several heads: {heads}"
    return heads[0]


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def schema_diff(engine: sa.Engine) -> list[Any]:
    """Alembic's autogenerate diff between the database and `core.db.metadata`.

    The MigrationContext is given the package's version table name, as `upgrade` uses it, so
    Alembic recognises `dw_pipelines_alembic_version` as its own bookkeeping table instead of
    reporting it as a table missing from the metadata. No other filtering is done: on both
    databases the reflected schema compares clean (types, nullability, server defaults, indexes,
    unique constraints).
    """
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": ALEMBIC_VERSION_TABLE,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        return compare_metadata(context, metadata)


def outbox_values(**overrides: Any) -> dict[str, Any]:
    return {
        "job_id": "job-1",
        "idempotency_key": "job-1",
        "tenant_id": "default",
        "dataset": "orders",
        "business_date": date(2026, 11, 24),
        "payload": {"dataset": "orders"},
        "status": "PENDING",
        "next_attempt_at": NOW,
        "created_at": NOW,
        "updated_at": NOW,
        **overrides,
    }


def test_upgrade_on_an_empty_database_yields_exactly_the_model(empty_engine: sa.Engine) -> None:
    assert table_names(empty_engine) == set()
    assert current_revision(empty_engine) is None

    upgrade(empty_engine)

    assert table_names(empty_engine) == {OUTBOX, AUDIT, ALEMBIC_VERSION_TABLE}
    assert schema_diff(empty_engine) == []


def test_the_comparison_would_notice_a_drifted_schema(empty_engine: sa.Engine) -> None:
    """Guard for the test above: the diff it asserts empty does report real differences."""
    upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_dw_ingestion_outbox_status_updated"))

    diff = schema_diff(empty_engine)

    assert [(d[0], d[1].name) for d in diff] == [
        ("add_index", "ix_dw_ingestion_outbox_status_updated")
    ]


def schema_snapshot(engine: sa.Engine) -> list[tuple]:
    """The schema as the database itself spells it (DDL text), to compare before/after."""
    if engine.dialect.name == "sqlite":
        query = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    else:
        query = """
            SELECT 'column', table_name, column_name,
                   data_type || coalesce('(' || character_maximum_length || ')', '')
                   || ' ' || is_nullable || ' ' || coalesce(column_default, '')
              FROM information_schema.columns WHERE table_schema = 'public'
            UNION ALL
            SELECT 'index', tablename, indexname, indexdef
              FROM pg_indexes WHERE schemaname = 'public'
            UNION ALL
            SELECT 'constraint', conrelid::regclass::text, conname, pg_get_constraintdef(oid)
              FROM pg_constraint WHERE connamespace = 'public'::regnamespace
            ORDER BY 1, 2, 3
        """
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(query))]


def test_upgrade_twice_is_a_no_op(empty_engine: sa.Engine) -> None:
    upgrade(empty_engine)
    before = schema_snapshot(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(outbox.insert().values(**outbox_values()))

    upgrade(empty_engine)

    assert len(before) >= 10  # tables and indexes, at least
    assert schema_snapshot(empty_engine) == before
    assert current_revision(empty_engine) == head_revision(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.execute(sa.select(outbox.c.job_id)).scalars().all() == ["job-1"]
        versions = conn.execute(sa.text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}"))
        assert versions.scalars().all() == [head_revision(empty_engine)]
    assert schema_diff(empty_engine) == []


def test_current_revision_is_the_head(empty_engine: sa.Engine) -> None:
    upgrade(empty_engine)
    head = head_revision(empty_engine)
    assert head == "0003"
    assert current_revision(empty_engine) == head


def test_the_version_is_kept_in_the_packages_own_table(empty_engine: sa.Engine) -> None:
    upgrade(empty_engine)

    names = table_names(empty_engine)
    assert ALEMBIC_VERSION_TABLE == "dw_pipelines_alembic_version"
    assert ALEMBIC_VERSION_TABLE in names
    assert "alembic_version" not in names
    with empty_engine.connect() as conn:
        versions = conn.execute(sa.text(f"SELECT version_num FROM {ALEMBIC_VERSION_TABLE}"))
        assert versions.scalars().all() == [head_revision(empty_engine)]


def test_a_host_applications_alembic_version_table_is_left_alone(
    empty_engine: sa.Engine,
) -> None:
    """A database shared with an application that has its own Alembic history."""
    with empty_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO alembic_version VALUES ('hostapp_42')"))

    upgrade(empty_engine)

    assert current_revision(empty_engine) == head_revision(empty_engine)
    assert {OUTBOX, AUDIT} <= table_names(empty_engine)
    with empty_engine.connect() as conn:
        host = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    assert host == ["hostapp_42"]


def test_claimable_index_is_partial_on_pending_rows(empty_engine: sa.Engine) -> None:
    upgrade(empty_engine)

    indexes = {ix["name"]: ix for ix in sa.inspect(empty_engine).get_indexes(OUTBOX)}
    claimable = indexes["ix_dw_ingestion_outbox_claimable"]
    assert claimable["column_names"] == ["next_attempt_at", "created_at"]
    with empty_engine.connect() as conn:
        if empty_engine.dialect.name == "postgresql":
            definition = conn.execute(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                {"name": "ix_dw_ingestion_outbox_claimable"},
            ).scalar_one()
            assert claimable["dialect_options"]["postgresql_where"] == (
                "((status)::text = 'PENDING'::text)"
            )
        else:
            definition = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"),
                {"name": "ix_dw_ingestion_outbox_claimable"},
            ).scalar_one()
    assert "(next_attempt_at, created_at)" in definition
    normalized = definition.replace("(", "").replace(")", "").replace("::text", "")
    assert normalized.endswith("WHERE status = 'PENDING'"), definition


def test_postgres_uses_the_partial_index_for_the_claim_query(empty_pg_url: str) -> None:
    """The planner can use the partial index for the claim predicate (plan forced by settings)."""
    engine = create_db_engine(empty_pg_url)
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            plan = "\n".join(
                conn.execute(
                    sa.text(
                        "EXPLAIN SELECT job_id FROM dw_ingestion_outbox "
                        "WHERE status = 'PENDING' AND next_attempt_at <= now() "
                        "ORDER BY next_attempt_at, created_at LIMIT 10"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()
    assert "ix_dw_ingestion_outbox_claimable" in plan, plan


@pytest.mark.parametrize("status", OUTBOX_STATUSES)
def test_check_constraint_accepts_every_known_status(empty_engine: sa.Engine, status: str) -> None:
    upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(outbox.insert().values(**outbox_values(status=status)))
    with empty_engine.connect() as conn:
        assert conn.execute(sa.select(outbox.c.status)).scalar_one() == status


@pytest.mark.parametrize("status", ["BOGUS", "pending", ""])
def test_check_constraint_refuses_an_unknown_status(empty_engine: sa.Engine, status: str) -> None:
    upgrade(empty_engine)

    with pytest.raises(sa.exc.IntegrityError) as caught:
        with empty_engine.begin() as conn:
            conn.execute(outbox.insert().values(**outbox_values(status=status)))

    assert "ck_dw_ingestion_outbox_status" in str(caught.value)
    with empty_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() == 0


def test_unique_idempotency_key_is_enforced(empty_engine: sa.Engine) -> None:
    upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(outbox.insert().values(**outbox_values(job_id="a", idempotency_key="k")))

    with pytest.raises(sa.exc.IntegrityError):
        with empty_engine.begin() as conn:
            conn.execute(outbox.insert().values(**outbox_values(job_id="b", idempotency_key="k")))


def test_audit_ids_are_generated_in_insert_order(empty_engine: sa.Engine) -> None:
    """BIGINT ids on Postgres, INTEGER PRIMARY KEY on SQLite: both must auto-increment."""
    upgrade(empty_engine)
    rows = [
        {"job_id": "job-1", "event": event, "attempt": 0, "at": NOW, "details": None}
        for event in ("ENQUEUED", "DISPATCHED", "STARTED")
    ]
    with empty_engine.begin() as conn:
        conn.execute(audit.insert(), rows)
    with empty_engine.connect() as conn:
        result = conn.execute(sa.select(audit.c.id, audit.c.event).order_by(audit.c.id)).all()
    assert [event for _, event in result] == ["ENQUEUED", "DISPATCHED", "STARTED"]
    ids = [id_ for id_, _ in result]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(set(ids))
