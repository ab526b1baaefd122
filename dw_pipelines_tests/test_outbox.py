"""Integration tier: `DwIngestionJobQueue` against real databases (PostgreSQL and SQLite).

Every test that takes `queue` runs twice, once per database (`db_url` is parametrized). Time is
controlled through the queue's injectable `clock`; the database is never mocked.
"""

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dw_pipelines.core.commands import DwIngestionCommand
from dw_pipelines.core.db import audit, create_db_engine, outbox, utcnow
from dw_pipelines.core.errors import CommandError, InvalidTransition, JobNotFound, SchemaNotReady
from dw_pipelines.core.outbox import (
    COMPLETED,
    DISPATCHED,
    ENQUEUED,
    FAILED,
    MAX_ERROR_LENGTH,
    PROMOTED,
    STARTED,
    DwIngestionJobQueue,
    OutboxJob,
)
from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR
from dw_pipelines_tests.conftest import make_settings

ORDERS_CSV = SAMPLES_DIR / "orders_2026-11-24.csv"
BUSINESS_DATE = "2026-11-24"
# The fake "now": the day after the business date, with microseconds to check they survive.
T0 = datetime(2026, 11, 25, 8, 0, 0, 123456, tzinfo=UTC)


class FakeClock:
    """The queue's `clock`: returns `now`, which the test moves explicitly."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def command(**overrides: Any) -> dict[str, Any]:
    """A valid command mapping for the shipped `orders` sample; overrides replace fields."""
    return {
        "dataset": "orders",
        "source_uri": str(ORDERS_CSV),
        "business_date": BUSINESS_DATE,
        **overrides,
    }


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def outbox_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        stmt = sa.select(outbox).order_by(outbox.c.created_at, outbox.c.job_id)
        return [dict(r) for r in conn.execute(stmt).mappings()]


def audit_rows(engine: sa.Engine, job_id: str | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(audit).order_by(audit.c.id)
    if job_id is not None:
        stmt = stmt.where(audit.c.job_id == job_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def status_of(engine: sa.Engine, job_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(outbox.c.status).where(outbox.c.job_id == job_id)
        ).scalar_one()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def queue(
    db_url: str, tmp_path: Path, landing_dir: Path, clock: FakeClock
) -> Iterator[DwIngestionJobQueue]:
    """The queue as the CLI and Dagster build it (shipped contracts, landing roots), fake clock."""
    q = build_queue(make_settings(db_url, tmp_path / "dw-home", landing_dir))
    q.clock = clock
    yield q
    q.engine.dispose()


@pytest.fixture
def scratch(queue: DwIngestionJobQueue) -> sa.Table:
    """A table of the caller's own, in the outbox database, to test shared transactions."""
    table = sa.Table(
        "caller_scratch",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("note", sa.String(64), nullable=False),
    )
    table.metadata.create_all(queue.engine)
    return table


def scratch_notes(engine: sa.Engine, table: sa.Table) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table.c.note).order_by(table.c.id)).scalars())


# --- enqueue -------------------------------------------------------------------------------------


def test_enqueue_inserts_one_pending_row_with_the_command_payload_and_an_audit_row(
    queue: DwIngestionJobQueue,
) -> None:
    cmd = DwIngestionCommand.parse(
        command(job_id="job-1", tenant_id="acme", requested_by="alice@example.com")
    )

    result = queue.enqueue(cmd)

    assert result.created is True
    rows = outbox_rows(queue.engine)
    assert len(rows) == 1
    row = rows[0]
    assert row["job_id"] == "job-1"
    assert row["idempotency_key"] == "job-1"
    assert row["tenant_id"] == "acme"
    assert row["dataset"] == "orders"
    assert row["business_date"] == date(2026, 11, 24)
    assert row["status"] == "PENDING"
    assert row["attempts"] == 0
    assert row["payload"] == cmd.to_payload() == json.loads(cmd.model_dump_json())
    assert row["payload"]["source_uri"] == str(ORDERS_CSV)
    assert row["payload"]["format"] == "csv"
    assert row["last_error"] is None
    assert row["dagster_run_id"] is None
    assert row["rows_loaded"] is None
    assert as_utc(row["created_at"]) == as_utc(row["updated_at"]) == T0
    assert as_utc(row["next_attempt_at"]) == T0  # due at once
    assert result.job == OutboxJob.from_row(row)
    assert result.job.command == cmd

    trail = audit_rows(queue.engine)
    assert len(trail) == 1
    event = trail[0]
    assert event["job_id"] == "job-1"
    assert event["event"] == ENQUEUED
    assert event["from_status"] is None
    assert event["to_status"] == "PENDING"
    assert event["attempt"] == 0
    assert event["run_id"] is None
    assert as_utc(event["at"]) == T0
    assert event["details"] == {
        "dataset": "orders",
        "tenant_id": "acme",
        "source_uri": str(ORDERS_CSV),
        "requested_by": "alice@example.com",
    }


def test_enqueue_accepts_a_mapping_and_file_uri(queue: DwIngestionJobQueue) -> None:
    result = queue.enqueue(command(source_uri=ORDERS_CSV.as_uri(), job_id=None))

    assert result.created is True
    (row,) = outbox_rows(queue.engine)
    assert row["job_id"] == result.job.job_id  # a generated UUID
    assert row["payload"]["source_uri"] == ORDERS_CSV.as_uri()


def test_same_idempotency_key_twice_returns_the_first_job_and_inserts_nothing(
    queue: DwIngestionJobQueue, clock: FakeClock
) -> None:
    first = queue.enqueue(command(idempotency_key="client-key-1"))
    clock.advance(seconds=30)
    # A gateway retry: same key, new generated job id, even a different date.
    second = queue.enqueue(command(idempotency_key="client-key-1", business_date="2026-11-20"))

    assert first.created is True
    assert second.created is False
    assert second.job.job_id == first.job.job_id
    assert second.job == first.job  # the first row, untouched
    rows = outbox_rows(queue.engine)
    assert [r["job_id"] for r in rows] == [first.job.job_id]
    assert rows[0]["business_date"] == date(2026, 11, 24)
    assert as_utc(rows[0]["updated_at"]) == T0
    trail = audit_rows(queue.engine)
    assert [(e["job_id"], e["event"]) for e in trail] == [(first.job.job_id, ENQUEUED)]


def test_same_job_id_twice_is_idempotent_because_the_key_defaults_to_it(
    queue: DwIngestionJobQueue,
) -> None:
    first = queue.enqueue(command(job_id="job-1"))
    second = queue.enqueue(command(job_id="job-1"))

    assert (first.created, second.created) == (True, False)
    assert second.job.job_id == "job-1"
    assert len(outbox_rows(queue.engine)) == 1
    assert [e["event"] for e in audit_rows(queue.engine)] == [ENQUEUED]


def test_same_job_id_with_a_different_idempotency_key_is_refused(
    queue: DwIngestionJobQueue,
) -> None:
    queue.enqueue(command(job_id="job-1", idempotency_key="key-a"))

    with pytest.raises(CommandError) as caught:
        queue.enqueue(command(job_id="job-1", idempotency_key="key-b"))

    assert caught.value.field == "job_id"
    assert "job-1" in str(caught.value)
    rows = outbox_rows(queue.engine)
    assert [(r["job_id"], r["idempotency_key"]) for r in rows] == [("job-1", "key-a")]
    assert [e["event"] for e in audit_rows(queue.engine)] == [ENQUEUED]


# --- enqueue inside the caller's transaction -----------------------------------------------------


def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(
    queue: DwIngestionJobQueue,
) -> None:
    with queue.engine.connect() as conn:
        trans = conn.begin()
        result = queue.enqueue(command(job_id="job-1"), connection=conn)
        assert result.created is True
        # Visible inside the transaction ...
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() == 1
        trans.rollback()

    # ... and gone with it, audit row included.
    assert outbox_rows(queue.engine) == []
    assert audit_rows(queue.engine) == []


def test_enqueue_in_a_committed_transaction_persists(queue: DwIngestionJobQueue) -> None:
    with queue.engine.connect() as conn:
        trans = conn.begin()
        queue.enqueue(command(job_id="job-1"), connection=conn)
        trans.commit()

    assert [r["job_id"] for r in outbox_rows(queue.engine)] == ["job-1"]
    assert [e["event"] for e in audit_rows(queue.engine)] == [ENQUEUED]


def test_enqueue_is_not_visible_to_others_before_the_caller_commits(
    queue: DwIngestionJobQueue, db_url: str
) -> None:
    # A plain engine: on SQLite the package's engines open every transaction with BEGIN
    # IMMEDIATE, which would wait for the caller's write lock instead of reading.
    observer = sa.create_engine(db_url)

    def visible() -> int:
        with observer.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one()

    try:
        with queue.engine.connect() as conn:
            trans = conn.begin()
            queue.enqueue(command(job_id="job-1"), connection=conn)
            assert visible() == 0
            trans.commit()
        assert visible() == 1
    finally:
        observer.dispose()


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_callers_own_insert_and_the_enqueue_share_one_transaction(
    queue: DwIngestionJobQueue, scratch: sa.Table, outcome: str
) -> None:
    with queue.engine.connect() as conn:
        trans = conn.begin()
        conn.execute(scratch.insert().values(note="order 1001 accepted"))
        queue.enqueue(command(job_id="job-1"), connection=conn)
        if outcome == "commit":
            trans.commit()
        else:
            trans.rollback()

    if outcome == "commit":
        assert scratch_notes(queue.engine, scratch) == ["order 1001 accepted"]
        assert [r["job_id"] for r in outbox_rows(queue.engine)] == ["job-1"]
        assert len(audit_rows(queue.engine)) == 1
    else:
        assert scratch_notes(queue.engine, scratch) == []
        assert outbox_rows(queue.engine) == []
        assert audit_rows(queue.engine) == []


def test_duplicate_and_conflicting_enqueues_keep_the_callers_transaction_usable(
    queue: DwIngestionJobQueue, scratch: sa.Table
) -> None:
    """On Postgres a failed statement aborts the transaction; enqueue must not cause one."""
    queue.enqueue(command(job_id="job-1", idempotency_key="key-a"))

    with queue.engine.connect() as conn:
        trans = conn.begin()
        conn.execute(scratch.insert().values(note="before"))
        assert queue.enqueue(command(idempotency_key="key-a"), connection=conn).created is False
        with pytest.raises(CommandError) as caught:
            queue.enqueue(command(job_id="job-1", idempotency_key="key-b"), connection=conn)
        assert caught.value.field == "job_id"
        conn.execute(scratch.insert().values(note="after"))
        assert queue.enqueue(command(job_id="job-2"), connection=conn).created is True
        trans.commit()

    assert scratch_notes(queue.engine, scratch) == ["before", "after"]
    assert [r["job_id"] for r in outbox_rows(queue.engine)] == ["job-1", "job-2"]
    assert [e["job_id"] for e in audit_rows(queue.engine)] == ["job-1", "job-2"]


# --- refused commands ----------------------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    data = command()
    del data[key]
    return data


REFUSED: dict[str, tuple[Callable[[Path, Path], dict[str, Any]], str]] = {
    "unknown dataset": (lambda landing, outside: command(dataset="invoices"), "dataset"),
    "missing dataset key": (lambda landing, outside: _without("dataset"), "dataset"),
    "unknown format": (lambda landing, outside: command(format="xml"), "format"),
    "format not inferable": (
        lambda landing, outside: command(source_uri=str(landing / "orders.txt")),
        "format",
    ),
    "missing source file": (
        lambda landing, outside: command(source_uri=str(landing / "missing.csv")),
        "source_uri",
    ),
    "missing source_uri key": (lambda landing, outside: _without("source_uri"), "source_uri"),
    "source outside landing roots": (
        lambda landing, outside: command(source_uri=str(outside)),
        "source_uri",
    ),
    "symlink escaping landing roots": (
        lambda landing, outside: command(source_uri=str(landing / "link.csv")),
        "source_uri",
    ),
    "dot-dot escaping landing roots": (
        lambda landing, outside: command(source_uri=str(landing / ".." / "outside" / "orders.csv")),
        "source_uri",
    ),
    "directory as source": (
        lambda landing, outside: command(source_uri=str(landing / "subdir.csv")),
        "source_uri",
    ),
    "remote scheme": (
        lambda landing, outside: command(source_uri="s3://bucket/orders.csv"),
        "source_uri",
    ),
    "malformed date": (
        lambda landing, outside: command(business_date="24.11.2026"),
        "business_date",
    ),
    "impossible date": (
        lambda landing, outside: command(business_date="2026-02-30"),
        "business_date",
    ),
    # The fake clock says 2026-11-25.
    "future date": (lambda landing, outside: command(business_date="2026-11-26"), "business_date"),
    "date before the first partition": (
        lambda landing, outside: command(business_date="2019-12-31"),
        "business_date",
    ),
    "bad job id": (lambda landing, outside: command(job_id="no spaces allowed"), "job_id"),
    "bad tenant": (lambda landing, outside: command(tenant_id="../etc"), "tenant_id"),
    "unknown field": (lambda landing, outside: command(priority="high"), "priority"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_command_is_refused_naming_the_field_and_nothing_is_inserted(
    queue: DwIngestionJobQueue, landing_dir: Path, tmp_path: Path, case: str
) -> None:
    outside = tmp_path / "outside" / "orders.csv"
    outside.parent.mkdir()
    outside.write_bytes(ORDERS_CSV.read_bytes())
    (landing_dir / "link.csv").symlink_to(outside)
    (landing_dir / "subdir.csv").mkdir()
    make, field = REFUSED[case]

    with pytest.raises(CommandError) as caught:
        queue.enqueue(make(landing_dir, outside))

    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert outbox_rows(queue.engine) == []
    assert audit_rows(queue.engine) == []


def test_outside_landing_roots_refusal_does_not_repeat_the_field(
    queue: DwIngestionJobQueue, tmp_path: Path
) -> None:
    outside = tmp_path / "outside" / "orders.csv"
    outside.parent.mkdir()
    outside.write_bytes(ORDERS_CSV.read_bytes())

    with pytest.raises(CommandError) as caught:
        queue.enqueue(command(source_uri=str(outside)))

    assert caught.value.field == "source_uri"
    assert "outside the landing roots" in caught.value.reason
    assert not caught.value.reason.startswith("source_uri"), str(caught.value)


def test_future_date_is_refused_by_the_real_clock_too(queue: DwIngestionJobQueue) -> None:
    queue.clock = utcnow
    future = (utcnow().date() + timedelta(days=2)).isoformat()
    with pytest.raises(CommandError) as caught:
        queue.enqueue(command(business_date=future))
    assert caught.value.field == "business_date"
    assert "future" in caught.value.reason
    assert outbox_rows(queue.engine) == []


# --- claim_due -----------------------------------------------------------------------------------


def enqueue_at(queue: DwIngestionJobQueue, clock: FakeClock, job_ids: list[str]) -> None:
    """Enqueue `job_ids` in this order, one second apart (so the first is the oldest)."""
    for job_id in job_ids:
        queue.enqueue(command(job_id=job_id))
        clock.advance(seconds=1)


def test_claim_due_takes_the_oldest_first_up_to_the_limit(
    queue: DwIngestionJobQueue, clock: FakeClock
) -> None:
    # Reverse alphabetical, so "oldest first" cannot pass by sorting on job_id.
    enqueue_at(queue, clock, ["job-d", "job-c", "job-b", "job-a"])
    claim_time = clock.advance(minutes=5)

    claimed = queue.claim_due(2)

    assert [j.job_id for j in claimed] == ["job-d", "job-c"]
    assert all(j.status == "SENT" for j in claimed)
    assert all(j.updated_at == claim_time for j in claimed)
    assert {r["job_id"]: r["status"] for r in outbox_rows(queue.engine)} == {
        "job-d": "SENT",
        "job-c": "SENT",
        "job-b": "PENDING",
        "job-a": "PENDING",
    }
    dispatched = [e for e in audit_rows(queue.engine) if e["event"] == DISPATCHED]
    assert [(e["job_id"], e["from_status"], e["to_status"]) for e in dispatched] == [
        ("job-d", "PENDING", "SENT"),
        ("job-c", "PENDING", "SENT"),
    ]
    assert all(as_utc(e["at"]) == claim_time and e["attempt"] == 0 for e in dispatched)

    assert [j.job_id for j in queue.claim_due(10)] == ["job-b", "job-a"]
    assert queue.claim_due(10) == []
    assert queue.count_by_status() == {"SENT": 4}
    assert Counter(e["event"] for e in audit_rows(queue.engine)) == {ENQUEUED: 4, DISPATCHED: 4}


def test_claim_due_skips_rows_not_yet_due(queue: DwIngestionJobQueue, clock: FakeClock) -> None:
    queue.enqueue(command(job_id="due-now"))
    clock.advance(hours=1)
    queue.enqueue(command(job_id="due-later"))  # next_attempt_at = T0 + 1h
    clock.now = T0 + timedelta(minutes=10)

    assert [j.job_id for j in queue.claim_due(10)] == ["due-now"]
    assert status_of(queue.engine, "due-later") == "PENDING"
    assert queue.claim_due(10) == []

    clock.now = T0 + timedelta(hours=1)  # exactly due
    assert [j.job_id for j in queue.claim_due(10)] == ["due-later"]


def test_claim_due_on_an_empty_outbox_returns_nothing(queue: DwIngestionJobQueue) -> None:
    assert queue.claim_due(10) == []
    assert audit_rows(queue.engine) == []


def test_concurrent_claimers_never_claim_the_same_row(
    queue: DwIngestionJobQueue, db_url: str
) -> None:
    """4 claimers, each with its own engine, drain 200 rows; every row is claimed exactly once.

    On Postgres this exercises FOR UPDATE SKIP LOCKED, on SQLite the BEGIN IMMEDIATE write lock.
    """
    queue.clock = utcnow
    with queue.engine.begin() as conn:
        for i in range(200):
            queue.enqueue(command(job_id=f"job-{i:03d}"), connection=conn)

    barrier = threading.Barrier(4)
    claimed: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def claimer(index: int) -> None:
        q = DwIngestionJobQueue(create_db_engine(db_url), queue.contracts, None)
        try:
            barrier.wait(timeout=30)
            while batch := q.claim_due(25):
                claimed[index].extend(j.job_id for j in batch)
        except BaseException as exc:
            errors.append(exc)
        finally:
            q.engine.dispose()

    threads = [threading.Thread(target=claimer, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a claimer hung"
    assert errors == []

    everything = [job_id for ids in claimed for job_id in ids]
    duplicates = [job_id for job_id, n in Counter(everything).items() if n > 1]
    assert duplicates == []
    assert len(everything) == 200
    assert set(everything) == {f"job-{i:03d}" for i in range(200)}
    assert queue.count_by_status() == {"SENT": 200}
    dispatched = Counter(e["job_id"] for e in audit_rows(queue.engine) if e["event"] == DISPATCHED)
    assert len(dispatched) == 200
    assert set(dispatched.values()) == {1}


def test_claim_skips_a_row_locked_by_another_transaction_without_waiting(
    pg_url: str, tmp_path: Path, landing_dir: Path
) -> None:
    """Postgres only: FOR UPDATE SKIP LOCKED. A lock_timeout turns a regression into an error."""
    clock = FakeClock(T0)
    queue = build_queue(make_settings(pg_url, tmp_path / "dw-home", landing_dir))
    queue.clock = clock
    claimer_engine = sa.create_engine(
        pg_url, connect_args={"options": "-c lock_timeout=3000 -c statement_timeout=10000"}
    )
    claimer = DwIngestionJobQueue(claimer_engine, queue.contracts, None, clock=clock)
    locker = sa.create_engine(pg_url)
    try:
        enqueue_at(queue, clock, [f"job-{i}" for i in range(5)])
        clock.advance(minutes=1)
        with locker.connect() as lock_conn:
            lock_trans = lock_conn.begin()
            oldest = lock_conn.execute(
                sa.select(outbox.c.job_id)
                .order_by(outbox.c.next_attempt_at, outbox.c.created_at)
                .limit(1)
                .with_for_update()
            ).scalar_one()
            assert oldest == "job-0"

            started = time.monotonic()
            claimed = claimer.claim_due(10)
            elapsed = time.monotonic() - started

            assert [j.job_id for j in claimed] == ["job-1", "job-2", "job-3", "job-4"]
            assert elapsed < 2.5, f"claim_due waited {elapsed:.1f}s on the locked row"
            lock_trans.rollback()

        assert status_of(queue.engine, "job-0") == "PENDING"
        assert [j.job_id for j in claimer.claim_due(10)] == ["job-0"]
    finally:
        queue.engine.dispose()
        claimer_engine.dispose()
        locker.dispose()


# --- transitions ---------------------------------------------------------------------------------


def trail_summary(queue: DwIngestionJobQueue, job_id: str) -> list[tuple]:
    return [
        (e.event, e.from_status, e.to_status, e.attempt, e.run_id)
        for e in queue.audit_trail(job_id)
    ]


def test_start_then_complete_by_the_holding_run(
    queue: DwIngestionJobQueue, clock: FakeClock
) -> None:
    queue.enqueue(command(job_id="job-1"))
    clock.advance(seconds=10)
    queue.claim_due(1)
    start_time = clock.advance(seconds=10)

    started = queue.start("job-1", "run-1")

    assert started.status == "PROCESSING"
    assert started.attempts == 1
    assert started.dagster_run_id == "run-1"
    assert started.updated_at == start_time
    assert queue.get("job-1") == started

    clock.advance(seconds=10)
    with pytest.raises(InvalidTransition, match="run-2"):
        queue.complete("job-1", "run-2", rows_loaded=99, details={"rows": 99})
    unchanged = queue.get("job-1")
    assert unchanged == started  # the refused transition changed nothing
    assert len(queue.audit_trail("job-1")) == 3

    done = queue.complete("job-1", "run-1", rows_loaded=3, details={"rows": 3})

    assert done.status == "COMPLETED"
    assert done.rows_loaded == 3
    assert done.attempts == 1
    assert done.dagster_run_id == "run-1"
    assert done.last_error is None
    assert trail_summary(queue, "job-1") == [
        (ENQUEUED, None, "PENDING", 0, None),
        (DISPATCHED, "PENDING", "SENT", 0, None),
        (STARTED, "SENT", "PROCESSING", 1, "run-1"),
        (COMPLETED, "PROCESSING", "COMPLETED", 1, "run-1"),
    ]
    assert queue.audit_trail("job-1")[-1].details == {"rows": 3}
    # COMPLETED is terminal for complete/fail.
    with pytest.raises(InvalidTransition):
        queue.complete("job-1", "run-1", rows_loaded=3, details={})
    with pytest.raises(InvalidTransition):
        queue.fail("job-1", "run-1", "late failure")


def test_start_refuses_another_datasets_job_and_changes_nothing(
    queue: DwIngestionJobQueue,
) -> None:
    queue.enqueue(command(job_id="job-1"))
    before = queue.get("job-1")

    with pytest.raises(InvalidTransition, match="belongs to dataset 'orders', not 'events'"):
        queue.start("job-1", "run-1", dataset="events")

    assert queue.get("job-1") == before
    assert [e.event for e in queue.audit_trail("job-1")] == [ENQUEUED]
    assert queue.start("job-1", "run-1", dataset="orders").status == "PROCESSING"


def test_start_by_the_holding_run_is_a_no_op_and_a_takeover_names_the_previous_run(
    queue: DwIngestionJobQueue, clock: FakeClock
) -> None:
    queue.enqueue(command(job_id="job-1"))
    first = queue.start("job-1", "run-1")
    clock.advance(seconds=10)

    again = queue.start("job-1", "run-1")  # an op retry, or the run's next step
    same = queue.start("job-1", "run-1", current=first)  # with the row the caller read

    assert again == first and same == first  # attempts, updated_at: untouched
    assert [e.event for e in queue.audit_trail("job-1")] == [ENQUEUED, STARTED]
    with pytest.raises(InvalidTransition, match="not 'events'"):
        queue.start("job-1", "run-1", current=first, dataset="events")

    taken = queue.start("job-1", "run-2", current=first)  # a re-execution takes it over
    assert (taken.dagster_run_id, taken.attempts) == ("run-2", 2)
    assert queue.audit_trail("job-1")[-1].details == {"previous_run_id": "run-1"}
    assert queue.audit_trail("job-1")[1].details is None  # the first start took it from no run


def test_complete_audits_the_steps_before_it_in_one_transaction(
    queue: DwIngestionJobQueue,
) -> None:
    queue.enqueue(command(job_id="job-1"))
    queue.start("job-1", "run-1")

    queue.complete(
        "job-1", "run-1", rows_loaded=3, details={"rows": 3}, steps=[(PROMOTED, {"rows": 3})]
    )

    assert trail_summary(queue, "job-1")[-2:] == [
        (PROMOTED, "PROCESSING", "PROCESSING", 1, "run-1"),
        (COMPLETED, "PROCESSING", "COMPLETED", 1, "run-1"),
    ]
    promoted, completed = queue.audit_trail("job-1")[-2:]
    assert promoted.details == {"rows": 3} and promoted.at == completed.at
    # A refused completion audits none of its steps either.
    queue.enqueue(command(job_id="job-2"))
    queue.start("job-2", "run-1")
    with pytest.raises(InvalidTransition):
        queue.complete("job-2", "run-9", rows_loaded=1, details={}, steps=[(PROMOTED, {})])
    assert PROMOTED not in [e.event for e in queue.audit_trail("job-2")]


def test_fail_records_the_error_and_a_retry_run_takes_over(
    queue: DwIngestionJobQueue, clock: FakeClock
) -> None:
    queue.enqueue(command(job_id="job-1"))
    queue.start("job-1", "run-1")

    with pytest.raises(InvalidTransition):
        queue.fail("job-1", "run-other", "not mine")
    failed = queue.fail("job-1", "run-1", "orders_2026-11-24.csv, row 2: boom")

    assert failed.status == "FAILED"
    assert failed.last_error == "orders_2026-11-24.csv, row 2: boom"
    assert failed.attempts == 1

    retried = queue.start("job-1", "run-2")
    assert retried.status == "PROCESSING"
    assert retried.attempts == 2
    assert retried.dagster_run_id == "run-2"
    assert retried.last_error is None
    # The first run is stale now: it may neither complete nor fail the job.
    with pytest.raises(InvalidTransition):
        queue.complete("job-1", "run-1", rows_loaded=1, details={})
    with pytest.raises(InvalidTransition):
        queue.fail("job-1", "run-1", "stale")

    assert trail_summary(queue, "job-1") == [
        (ENQUEUED, None, "PENDING", 0, None),
        (STARTED, "PENDING", "PROCESSING", 1, "run-1"),
        (FAILED, "PROCESSING", "FAILED", 1, "run-1"),
        (STARTED, "FAILED", "PROCESSING", 2, "run-2"),
    ]
    assert queue.audit_trail("job-1")[2].details == {"error": "orders_2026-11-24.csv, row 2: boom"}


def test_fail_without_a_run_and_truncates_long_errors(queue: DwIngestionJobQueue) -> None:
    queue.enqueue(command(job_id="job-1"))
    queue.claim_due(1)

    failed = queue.fail("job-1", None, "x" * (MAX_ERROR_LENGTH + 500))

    assert failed.status == "FAILED"
    assert failed.last_error == "x" * MAX_ERROR_LENGTH
    assert failed.dagster_run_id is None
    assert trail_summary(queue, "job-1")[-1] == (FAILED, "SENT", "FAILED", 0, None)


def test_complete_before_start_is_refused(queue: DwIngestionJobQueue) -> None:
    queue.enqueue(command(job_id="job-1"))
    with pytest.raises(InvalidTransition, match="PENDING"):
        queue.complete("job-1", "run-1", rows_loaded=1, details={})
    assert queue.get("job-1").status == "PENDING"
    assert [e.event for e in queue.audit_trail("job-1")] == [ENQUEUED]


@pytest.mark.parametrize(
    "operation",
    [
        lambda q: q.start("nope", "run-1"),
        lambda q: q.complete("nope", "run-1", rows_loaded=1, details={}),
        lambda q: q.fail("nope", "run-1", "boom"),
        lambda q: q.get("nope"),
    ],
    ids=["start", "complete", "fail", "get"],
)
def test_unknown_job_raises_job_not_found(
    queue: DwIngestionJobQueue, operation: Callable[[DwIngestionJobQueue], Any]
) -> None:
    with pytest.raises(JobNotFound) as caught:
        operation(queue)
    assert caught.value.job_id == "nope"
    assert audit_rows(queue.engine) == []


def test_list_jobs_is_newest_first_and_filters_by_status(
    queue: DwIngestionJobQueue, clock: FakeClock
) -> None:
    enqueue_at(queue, clock, ["job-a", "job-b", "job-c"])
    queue.claim_due(1)  # job-a -> SENT

    assert [j.job_id for j in queue.list_jobs()] == ["job-c", "job-b", "job-a"]
    assert [j.job_id for j in queue.list_jobs(status="pending")] == ["job-c", "job-b"]
    assert [j.job_id for j in queue.list_jobs(status="SENT")] == ["job-a"]
    assert [j.job_id for j in queue.list_jobs(limit=1)] == ["job-c"]


# --- schema not migrated -------------------------------------------------------------------------


@pytest.fixture(params=["postgresql", "sqlite"])
def unmigrated_queue(
    request: pytest.FixtureRequest, tmp_path: Path, landing_dir: Path
) -> Iterator[DwIngestionJobQueue]:
    """A queue on a database where `db upgrade` never ran."""
    if request.param == "postgresql":
        url = request.getfixturevalue("empty_pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'never-migrated' / 'dw.db'}"
    q = build_queue(make_settings(url, tmp_path / "dw-home", landing_dir))
    q.clock = FakeClock(T0)
    yield q
    q.engine.dispose()


MIGRATED_OPERATIONS: dict[str, Callable[[DwIngestionJobQueue], Any]] = {
    "enqueue": lambda q: q.enqueue(command(job_id="job-1")),
    "claim_due": lambda q: q.claim_due(10),
    "list_jobs": lambda q: q.list_jobs(),
    "audit_trail": lambda q: q.audit_trail("job-1"),
    "count_by_status": lambda q: q.count_by_status(),
    "start": lambda q: q.start("job-1", "run-1"),
    "fail": lambda q: q.fail("job-1", "run-1", "boom"),
    "note_redispatched": lambda q: q.note_redispatched(["job-1"]),
}


@pytest.mark.parametrize("operation", list(MIGRATED_OPERATIONS))
def test_missing_tables_raise_schema_not_ready_with_the_fix(
    unmigrated_queue: DwIngestionJobQueue, operation: str
) -> None:
    with pytest.raises(SchemaNotReady) as caught:
        MIGRATED_OPERATIONS[operation](unmigrated_queue)
    assert "dw-pipelines db upgrade" in str(caught.value)
    assert "dw_ingestion_" in str(caught.value)  # names the missing table


@pytest.mark.parametrize(
    "operation",
    [lambda q: q.get("job-1"), lambda q: q.sent_before(T0, 10)],
    ids=["get", "sent_before"],
)
def test_missing_tables_raise_schema_not_ready_for_reads_too(
    unmigrated_queue: DwIngestionJobQueue, operation: Callable[[DwIngestionJobQueue], Any]
) -> None:
    with pytest.raises(SchemaNotReady, match="dw-pipelines db upgrade"):
        operation(unmigrated_queue)


def test_enqueue_records_the_source_size_for_the_run_pod(queue: DwIngestionJobQueue) -> None:
    from dw_pipelines.defs.k8s import size_class

    job = queue.enqueue(command()).job
    size = Path(command()["source_uri"]).stat().st_size
    assert queue.get(job.job_id).source_size_bytes == size
    assert outbox_rows(queue.engine)[0]["source_size_bytes"] == size
    # Rows from before the column (NULL) are sized where the sensor runs, as before.
    with queue.engine.begin() as conn:
        conn.execute(outbox.update().values(source_size_bytes=None))
    old = queue.get(job.job_id)
    assert old.source_size_bytes is None and size_class(old) == "small"
    with queue.engine.begin() as conn:
        conn.execute(outbox.update().values(source_size_bytes=5 << 30))
    assert size_class(queue.get(job.job_id)) == "large"  # a 5 GB object
