"""The transactional outbox and its audit trail: `DwIngestionJobQueue`.

State machine of a row (every change also appends one audit row, in the same transaction)::

    (enqueue) -> PENDING -(sensor claims)-> SENT -(run starts)-> PROCESSING -> COMPLETED
                                             ^                   |  ^    \\-> FAILED (dead letter)
                 (outbox retry: REQUEUED) ---+                   +--+ RETRY_SCHEDULED (same run)

`attempts` counts attempts: the first start makes it 1, each scheduled retry adds one, and a
FAILED row that used its whole budget has `attempts == max_retries + 1`.

Guarantees:

* `enqueue` inside the caller's transaction: the row exists iff the caller commits.
* The same `idempotency_key` twice returns the first job and inserts nothing.
* A claim takes due PENDING rows with `FOR UPDATE SKIP LOCKED` on Postgres, so concurrent sensor
  evaluations never claim the same row; on SQLite the write lock serialises claims.
* A run may (re)start any job that is not in flight elsewhere; only the run that holds the job
  (`dagster_run_id`) may complete or fail it, so a stale run cannot overwrite a newer one.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from dw_pipelines.core.commands import DwIngestionCommand
from dw_pipelines.core.contracts import ContractRegistry
from dw_pipelines.core.db import OUTBOX_STATUSES, as_utc, audit, outbox, utcnow
from dw_pipelines.core.errors import CommandError, InvalidTransition, JobNotFound, SchemaNotReady
from dw_pipelines.core.landing import LandingZone, Source
from dw_pipelines.core.objectstore import ObjectSource

# Audit events. Each names what happened; from/to status are on the audit row.
ENQUEUED = "ENQUEUED"
DISPATCHED = "DISPATCHED"
REDISPATCHED = "REDISPATCHED"
STARTED = "STARTED"
STAGED = "STAGED"
PROMOTED = "PROMOTED"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
RETRY_SCHEDULED = "RETRY_SCHEDULED"
DEAD_LETTERED = "DEAD_LETTERED"
REQUEUED = "REQUEUED"
RECONCILED = "RECONCILED"
IN_FLIGHT_STATUSES = ("SENT", "PROCESSING")

MAX_ERROR_LENGTH = 4000


@dataclass(frozen=True)
class OutboxJob:
    """A snapshot of one outbox row."""

    job_id: str
    idempotency_key: str
    tenant_id: str
    dataset: str
    business_date: date
    payload: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    dagster_run_id: str | None
    rows_loaded: int | None
    created_at: datetime
    updated_at: datetime
    heartbeat_at: datetime | None = None
    source_size_bytes: int | None = None  # at enqueue time (None: unknown)

    @property
    def command(self) -> DwIngestionCommand:
        """The stored command, validated again: rows may come from non-Python gateways."""
        return DwIngestionCommand.parse(self.payload)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "OutboxJob":
        return cls(
            job_id=row["job_id"],
            idempotency_key=row["idempotency_key"],
            tenant_id=row["tenant_id"],
            dataset=row["dataset"],
            business_date=row["business_date"],
            payload=dict(row["payload"]),
            status=row["status"],
            attempts=row["attempts"],
            next_attempt_at=as_utc(row["next_attempt_at"]),
            last_error=row["last_error"],
            dagster_run_id=row["dagster_run_id"],
            rows_loaded=row["rows_loaded"],
            created_at=as_utc(row["created_at"]),
            updated_at=as_utc(row["updated_at"]),
            heartbeat_at=as_utc(row["heartbeat_at"]),
            source_size_bytes=row.get("source_size_bytes"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "idempotency_key": self.idempotency_key,
            "tenant_id": self.tenant_id,
            "dataset": self.dataset,
            "business_date": self.business_date.isoformat(),
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat(),
            "last_error": self.last_error,
            "dagster_run_id": self.dagster_run_id,
            "rows_loaded": self.rows_loaded,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat() if self.heartbeat_at else None,
            "source_size_bytes": self.source_size_bytes,
            "payload": self.payload,
        }


def source_size(source: Source) -> int | None:
    """A checked source's size in bytes: its HEAD for an object, a stat for a file."""
    if isinstance(source, ObjectSource):
        return source.info.size_bytes
    try:
        return source.stat().st_size
    except OSError:
        return None


@dataclass(frozen=True)
class AuditEvent:
    id: int
    job_id: str
    run_id: str | None
    event: str
    from_status: str | None
    to_status: str | None
    attempt: int
    at: datetime
    details: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job_id": self.job_id,
            "run_id": self.run_id,
            "event": self.event,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "attempt": self.attempt,
            "at": self.at.isoformat(),
            "details": self.details,
        }


@dataclass(frozen=True)
class OutboxHealth:
    counts: dict[str, int]  # every status, zero included
    oldest_pending_at: datetime | None
    recent_failures: list[OutboxJob]  # newest first
    at: datetime  # when it was read

    @property
    def oldest_pending_age_seconds(self) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (self.at - self.oldest_pending_at).total_seconds())


@dataclass(frozen=True)
class EnqueueResult:
    job: OutboxJob
    created: bool  # False: the idempotency key was already known; `job` is the first one


class DwIngestionJobQueue:
    """The outbox API used by gateways (enqueue), the sensor (claim) and runs (transitions).

    Args:
        engine: the outbox database.
        contracts: known datasets; commands for other datasets are refused.
        landing: where sources may live; None skips the source check (trusted callers only).
        clock: returns the current UTC time; injectable for tests.
    """

    def __init__(
        self,
        engine: Engine,
        contracts: ContractRegistry,
        landing: LandingZone | None,
        clock: Callable[[], datetime] = utcnow,
    ):
        self.engine = engine
        self.contracts = contracts
        self.landing = landing
        self.clock = clock
        self._is_postgres = engine.dialect.name == "postgresql"

    # ----------------------------------------------------------------------------- enqueue

    def validate(self, command: DwIngestionCommand | Mapping[str, Any]) -> DwIngestionCommand:
        """Parse and check a command against the contracts and landing roots."""
        return self._checked(command)[0]

    def _checked(
        self, command: DwIngestionCommand | Mapping[str, Any]
    ) -> tuple[DwIngestionCommand, int | None]:
        """The parsed command and its source's size (None without a landing check)."""
        parsed = DwIngestionCommand.parse(command)
        parsed.check_business_date(self.clock().date())
        self.contracts.get(parsed.dataset)
        if self.landing is None:
            return parsed, None
        source = self.landing.check_command_source(parsed.source_uri)
        return parsed, source_size(source)

    def enqueue(
        self,
        command: DwIngestionCommand | Mapping[str, Any],
        connection: Connection | None = None,
    ) -> EnqueueResult:
        """Insert a PENDING row for `command` (or return the job already holding its key).

        Args:
            command: the command, or a mapping with its fields.
            connection: the caller's connection; the row is then part of the caller's
                transaction and disappears if the caller rolls back. Without it, the row is
                committed before this returns.

        Raises:
            CommandError: the command is refused; `.field` names the offending field.
        """
        return self.enqueue_many([command], connection)[0]

    def enqueue_many(
        self,
        commands: Sequence[DwIngestionCommand | Mapping[str, Any]],
        connection: Connection | None = None,
    ) -> list[EnqueueResult]:
        """`enqueue` for a batch, in three statements: all or nothing, results in order.

        Raises:
            CommandError: a command is refused; with several commands `.field` starts with its
                index, e.g. `[3].business_date`; nothing is inserted.
        """
        parsed = []
        sizes: dict[str, int | None] = {}
        for index, command in enumerate(commands):
            try:
                checked, size = self._checked(command)
            except CommandError as exc:
                if len(commands) == 1:
                    raise
                raise CommandError(f"[{index}].{exc.field}", exc.reason) from None
            parsed.append(checked)
            sizes.setdefault(checked.job_id, size)
        if not parsed:
            return []
        with self._connection(connection) as conn:
            return self._insert_many(conn, parsed, sizes)

    def _insert_many(
        self,
        conn: Connection,
        commands: list[DwIngestionCommand],
        sizes: Mapping[str, int | None] | None = None,
    ) -> list[EnqueueResult]:
        now = self.clock()
        fresh: dict[str, DwIngestionCommand] = {}  # first command per idempotency key
        for command in commands:
            fresh.setdefault(command.idempotency_key, command)
        rows = [
            {
                "job_id": c.job_id,
                "idempotency_key": c.idempotency_key,
                "tenant_id": c.tenant_id,
                "dataset": c.dataset,
                "business_date": c.business_date,
                "payload": c.to_payload(),
                "status": "PENDING",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
                "source_size_bytes": (sizes or {}).get(c.job_id),
            }
            for c in fresh.values()
        ]
        # ON CONFLICT DO NOTHING (not try/except IntegrityError) keeps the caller's transaction
        # usable on Postgres, where a failed statement aborts the whole transaction.
        insert = postgresql.insert if self._is_postgres else sqlite.insert
        # executemany with RETURNING: SQLAlchemy sends it as a few multi-row INSERTs from one
        # cached statement ("insertmanyvalues"), not one round trip per row.
        inserted = {
            row["job_id"]: OutboxJob.from_row(row)
            for row in conn.execute(
                insert(outbox).on_conflict_do_nothing().returning(*outbox.c), rows
            ).mappings()
        }
        self._audit_many(
            conn,
            [
                _audit_values(c.job_id, None, ENQUEUED, None, "PENDING", 0, now, {
                    "dataset": c.dataset,
                    "tenant_id": c.tenant_id,
                    "source_uri": c.source_uri,
                    "requested_by": c.requested_by,
                })
                for c in fresh.values()
                if c.job_id in inserted
            ],
        )  # fmt: skip
        known_keys = [c.idempotency_key for c in fresh.values() if c.job_id not in inserted]
        existing = {}
        if known_keys:
            existing = {
                row["idempotency_key"]: OutboxJob.from_row(row)
                for row in conn.execute(
                    sa.select(outbox).where(outbox.c.idempotency_key.in_(known_keys))
                ).mappings()
            }
        results = []
        for command in commands:
            first = fresh[command.idempotency_key]
            job = inserted.get(first.job_id)
            if job is not None:
                # The first command with this key inserted it; later ones in the batch dedupe.
                results.append(EnqueueResult(job, created=first is command))
                continue
            job = existing.get(command.idempotency_key)
            if job is None:
                raise CommandError(
                    "job_id", f"'{command.job_id}' already exists with a different idempotency_key"
                )
            results.append(EnqueueResult(job, created=False))
        return results

    # ------------------------------------------------------------------------------ sensor

    def claim_due(self, limit: int, held_datasets: Sequence[str] = ()) -> list[OutboxJob]:
        """Move up to `limit` due PENDING rows, oldest first, to SENT and return them.

        Rows of `held_datasets` (datasets whose contract is broken) stay PENDING: they are
        claimed once the contract is fixed.
        """
        now = self.clock()
        with self._connection(None) as conn:
            candidates = (
                sa.select(outbox.c.job_id)
                .where(outbox.c.status == "PENDING", outbox.c.next_attempt_at <= now)
                .order_by(outbox.c.next_attempt_at, outbox.c.created_at, outbox.c.job_id)
                .limit(limit)
            )
            if held_datasets:
                candidates = candidates.where(outbox.c.dataset.not_in(list(held_datasets)))
            if self._is_postgres:
                candidates = candidates.with_for_update(skip_locked=True)
            job_ids = list(conn.execute(candidates).scalars())
            if not job_ids:
                return []
            rows = (
                conn.execute(
                    outbox.update()
                    .where(outbox.c.job_id.in_(job_ids), outbox.c.status == "PENDING")
                    .values(status="SENT", updated_at=now)
                    .returning(*outbox.c)
                )
                .mappings()
                .all()
            )
            jobs = sorted(
                (OutboxJob.from_row(r) for r in rows),
                key=lambda j: (j.next_attempt_at, j.created_at, j.job_id),
            )
            self._audit_many(
                conn,
                [
                    _audit_values(
                        j.job_id, None, DISPATCHED, "PENDING", "SENT", j.attempts, now, None
                    )
                    for j in jobs
                ],
            )
            return jobs

    def sent_before(
        self, cutoff: datetime, limit: int, held_datasets: Sequence[str] = ()
    ) -> list[OutboxJob]:
        """SENT rows untouched since `cutoff`: candidates whose run may never have been created
        (rows of `held_datasets` are left until their contract is fixed)."""
        query = (
            sa.select(outbox)
            .where(outbox.c.status == "SENT", outbox.c.updated_at <= cutoff)
            .order_by(outbox.c.updated_at, outbox.c.job_id)
            .limit(limit)
        )
        if held_datasets:
            query = query.where(outbox.c.dataset.not_in(list(held_datasets)))
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [OutboxJob.from_row(r) for r in rows]

    def note_redispatched(self, job_ids: Sequence[str]) -> None:
        """Audit a re-request of SENT rows and restart their grace period."""
        if not job_ids:
            return
        now = self.clock()
        with self._connection(None) as conn:
            rows = conn.execute(
                outbox.update()
                .where(outbox.c.job_id.in_(list(job_ids)), outbox.c.status == "SENT")
                .values(updated_at=now)
                .returning(outbox.c.job_id, outbox.c.attempts)
            ).all()
            self._audit_many(
                conn,
                [
                    _audit_values(job_id, None, REDISPATCHED, "SENT", "SENT", attempts, now, None)
                    for job_id, attempts in rows
                ],
            )

    # -------------------------------------------------------------------------------- runs

    def start(
        self,
        job_id: str,
        run_id: str,
        current: OutboxJob | None = None,
        dataset: str | None = None,
    ) -> OutboxJob:
        """The run `run_id` takes the job: PROCESSING, attempts + 1, fresh heartbeat.

        A no-op when the run already holds it (an op retry, or the next step of the same run).
        Any other run takes it over (UI re-execution, backfill, manual retry): the newest run
        is the one the row follows. `current`: the row as the caller has just read it (when the
        run holds it already, nothing is read again). `dataset`: refuse a job of another
        dataset (a run aimed at another dataset's assets).
        """
        if current is not None and current.job_id == job_id and _held_by(current, run_id):
            _check_dataset(current, dataset)
            return current

        def held(row: OutboxJob) -> bool:  # read under the row lock
            _check_dataset(row, dataset)
            return _held_by(row, run_id)

        def details(row: OutboxJob) -> dict[str, Any] | None:
            if row.dagster_run_id and row.dagster_run_id != run_id:
                return {"previous_run_id": row.dagster_run_id}
            return None

        return self._transition(
            job_id,
            run_id,
            STARTED,
            to_status="PROCESSING",
            allowed_from=("PENDING", "SENT", "PROCESSING", "COMPLETED", "FAILED"),
            attempt_increment=1,
            changes={
                "dagster_run_id": run_id,
                "last_error": None,
                "rows_loaded": None,
                "heartbeat_at": self.clock(),
            },
            require_run=False,
            details=details,
            unless=held,
        )

    def schedule_retry(
        self, job_id: str, run_id: str, error: str, delay_seconds: float, retry_number: int
    ) -> OutboxJob:
        """A transient failure the run will retry itself after `delay_seconds`."""
        return self._transition(
            job_id,
            run_id,
            RETRY_SCHEDULED,
            to_status="PROCESSING",
            allowed_from=("PROCESSING",),
            attempt_increment=1,
            changes={
                "last_error": error[:MAX_ERROR_LENGTH],
                "next_attempt_at": self.clock() + timedelta(seconds=delay_seconds),
            },
            details={
                "error": error[:MAX_ERROR_LENGTH],
                "delay_seconds": round(delay_seconds, 3),
                "retry_number": retry_number,
            },
        )

    def dead_letter(self, job_id: str, run_id: str, error: str, attempts: int) -> OutboxJob:
        """Retries exhausted: FAILED, the dead-letter state, kept until an operator acts."""
        return self._transition(
            job_id,
            run_id,
            DEAD_LETTERED,
            to_status="FAILED",
            allowed_from=("PROCESSING",),
            changes={"last_error": error[:MAX_ERROR_LENGTH]},
            details={"error": error[:MAX_ERROR_LENGTH], "attempts": attempts},
        )

    def requeue(
        self, job_id: str, run_id: str, operator: str, *, allow_completed: bool = False
    ) -> OutboxJob:
        """Manual reprocessing: reset the bookkeeping and hand the job to run `run_id`.

        The sensor cannot re-dispatch a job (its run key is used up), so the caller launches
        `run_id` itself; the row waits for it in SENT.
        """
        allowed = ("FAILED", "COMPLETED") if allow_completed else ("FAILED",)
        current = self.get(job_id)
        return self._transition(
            job_id,
            run_id,
            REQUEUED,
            to_status="SENT",
            allowed_from=allowed,
            attempt_increment=-current.attempts,
            changes={
                "dagster_run_id": run_id,
                "last_error": None,
                "rows_loaded": None,
                "next_attempt_at": self.clock(),
                "heartbeat_at": None,
            },
            details={
                "operator": operator,
                "previous_status": current.status,
                "previous_run_id": current.dagster_run_id,
                "previous_attempts": current.attempts,
                "previous_error": current.last_error,
            },
            require_run=False,
        )

    def claim_for_launch(self, job_id: str, run_id: str, operator: str) -> OutboxJob:
        """Take a PENDING job out of the sensor's reach for a launch by hand as run `run_id`.

        Idempotent: a job already SENT to `run_id` is returned as it is. Jobs that already ran
        go through `requeue` (`outbox retry`) instead.
        """
        current = self.get(job_id)
        if current.status == "SENT" and current.dagster_run_id == run_id:
            return current
        if current.status != "PENDING":
            raise InvalidTransition(
                f"job {job_id} is {current.status}, not PENDING; "
                "reprocess it with `dw-pipelines outbox retry` instead"
            )
        return self._transition(
            job_id,
            run_id,
            DISPATCHED,
            to_status="SENT",
            allowed_from=("PENDING",),
            changes={"dagster_run_id": run_id},
            details={"manual": True, "operator": operator},
            require_run=False,
        )

    def reconcile(self, job_id: str, run_id: str | None, to_status: str, reason: str) -> OutboxJob:
        """The reconciler settles an in-flight row whose run ended without writing back."""
        changes: dict[str, Any] = {}
        if to_status == "FAILED":
            changes["last_error"] = reason[:MAX_ERROR_LENGTH]
        return self._transition(
            job_id,
            run_id,
            RECONCILED,
            to_status=to_status,
            allowed_from=IN_FLIGHT_STATUSES,
            changes=changes,
            details={"reason": reason[:MAX_ERROR_LENGTH], "run_id": run_id},
            require_run=False,
        )

    def heartbeat(self, run_id: str) -> int:
        """Refresh the heartbeat of every PROCESSING row held by `run_id`; returns rows touched."""
        with self._connection(None) as conn:
            return conn.execute(
                outbox.update()
                .where(outbox.c.dagster_run_id == run_id, outbox.c.status == "PROCESSING")
                .values(heartbeat_at=self.clock())
            ).rowcount

    def record_step(self, job_id: str, run_id: str, event: str, details: dict[str, Any]) -> None:
        """Audit a step inside PROCESSING (e.g. STAGED) without changing the status."""
        self._transition(
            job_id,
            run_id,
            event,
            to_status="PROCESSING",
            allowed_from=("PROCESSING",),
            details=details,
        )

    def complete(
        self,
        job_id: str,
        run_id: str,
        rows_loaded: int,
        details: dict[str, Any],
        steps: Sequence[tuple[str, dict[str, Any]]] = (),
    ) -> OutboxJob:
        """COMPLETED, audited after `steps` (event, details: e.g. PROMOTED) in one transaction."""
        return self._transition(
            job_id,
            run_id,
            COMPLETED,
            to_status="COMPLETED",
            allowed_from=("PROCESSING",),
            changes={"rows_loaded": rows_loaded, "last_error": None},
            details=details,
            steps=steps,
        )

    def fail(
        self,
        job_id: str,
        run_id: str | None,
        error: str,
        details: dict[str, Any] | None = None,
        *,
        require_run: bool = True,
    ) -> OutboxJob:
        """FAILED with `last_error`. The sensor fails rows it cannot dispatch with run_id=None."""
        return self._transition(
            job_id,
            run_id,
            FAILED,
            to_status="FAILED",
            allowed_from=("PENDING", "SENT", "PROCESSING"),
            changes={"last_error": error[:MAX_ERROR_LENGTH]},
            details={"error": error[:MAX_ERROR_LENGTH], **(details or {})},
            require_run=require_run,
        )

    # ------------------------------------------------------------------------------ reads

    def get(self, job_id: str) -> OutboxJob:
        with self._read() as conn:
            return self._get(conn, job_id)

    def list_jobs(self, status: str | None = None, limit: int = 100) -> list[OutboxJob]:
        stmt = sa.select(outbox).order_by(outbox.c.created_at.desc(), outbox.c.job_id).limit(limit)
        if status:
            stmt = stmt.where(outbox.c.status == status.upper())
        with self._read() as conn:
            return [OutboxJob.from_row(r) for r in conn.execute(stmt).mappings()]

    def audit_trail(self, job_id: str) -> list[AuditEvent]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(audit).where(audit.c.job_id == job_id).order_by(audit.c.id)
            ).mappings()
            return [
                AuditEvent(
                    id=r["id"],
                    job_id=r["job_id"],
                    run_id=r["run_id"],
                    event=r["event"],
                    from_status=r["from_status"],
                    to_status=r["to_status"],
                    attempt=r["attempt"],
                    at=as_utc(r["at"]),
                    details=r["details"],
                )
                for r in rows
            ]

    def in_flight(self, limit: int) -> list[OutboxJob]:
        """SENT and PROCESSING rows, least recently touched first (the reconciler's input)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(outbox)
                .where(outbox.c.status.in_(IN_FLIGHT_STATUSES))
                .order_by(outbox.c.updated_at, outbox.c.job_id)
                .limit(limit)
            ).mappings()
            return [OutboxJob.from_row(r) for r in rows]

    def jobs_for_partition(
        self, dataset: str, business_date: date, statuses: Sequence[str]
    ) -> list[OutboxJob]:
        """A partition's jobs in the given statuses, in enqueue order (backfills)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(outbox)
                .where(
                    outbox.c.dataset == dataset,
                    outbox.c.business_date == business_date,
                    outbox.c.status.in_(list(statuses)),
                )
                .order_by(outbox.c.created_at, outbox.c.job_id)
            ).mappings()
            return [OutboxJob.from_row(r) for r in rows]

    def jobs_held_by(self, run_ids: Sequence[str], dataset: str) -> list[OutboxJob]:
        """PROCESSING jobs of `dataset` held by any of `run_ids`, in enqueue order."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(outbox)
                .where(
                    outbox.c.dataset == dataset,
                    outbox.c.status == "PROCESSING",
                    outbox.c.dagster_run_id.in_(list(run_ids)),
                )
                .order_by(outbox.c.created_at, outbox.c.job_id)
            ).mappings()
            return [OutboxJob.from_row(r) for r in rows]

    def prune_completed(self, older_than: datetime, batch_size: int = 1000) -> int:
        """Delete COMPLETED rows last updated before `older_than`, in small batches.

        FAILED rows (dead letters) and the audit trail are kept. Small batches keep each delete's
        locks and WAL short on a busy queue table.
        """
        total = 0
        while True:
            with self._connection(None) as conn:
                batch = (
                    sa.select(outbox.c.job_id)
                    .where(outbox.c.status == "COMPLETED", outbox.c.updated_at < older_than)
                    .limit(batch_size)
                )
                if self._is_postgres:
                    batch = batch.with_for_update(skip_locked=True)
                job_ids = list(conn.execute(batch).scalars())
                if not job_ids:
                    return total
                conn.execute(
                    outbox.delete().where(
                        outbox.c.job_id.in_(job_ids), outbox.c.status == "COMPLETED"
                    )
                )
                total += len(job_ids)

    def count_by_status(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)
            ).all()
        return {status: count for status, count in rows}

    def health(self, recent_failures: int = 5) -> "OutboxHealth":
        """The queue at a glance (the UI's outbox health asset): rows per status, the oldest
        PENDING row's enqueue time, and the most recent failures with their errors."""
        with self._read() as conn:
            counts = dict(
                conn.execute(
                    sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)
                ).all()
            )
            oldest = conn.execute(
                sa.select(sa.func.min(outbox.c.created_at)).where(outbox.c.status == "PENDING")
            ).scalar_one_or_none()
            failed = conn.execute(
                sa.select(outbox)
                .where(outbox.c.status == "FAILED")
                .order_by(outbox.c.updated_at.desc(), outbox.c.job_id)
                .limit(recent_failures)
            ).mappings()
            failures = [OutboxJob.from_row(r) for r in failed]
        return OutboxHealth(
            counts={status: counts.get(status, 0) for status in OUTBOX_STATUSES},
            oldest_pending_at=as_utc(oldest) if oldest is not None else None,
            recent_failures=failures,
            at=self.clock(),
        )

    # --------------------------------------------------------------------------- internals

    def _transition(
        self,
        job_id: str,
        run_id: str | None,
        event: str,
        *,
        to_status: str,
        allowed_from: Sequence[str],
        attempt_increment: int = 0,
        changes: Mapping[str, Any] | None = None,
        details: dict[str, Any] | Callable[[OutboxJob], dict[str, Any] | None] | None = None,
        require_run: bool = True,
        steps: Sequence[tuple[str, dict[str, Any]]] = (),
        unless: Callable[[OutboxJob], bool] | None = None,
    ) -> OutboxJob:
        """Move the job to `to_status` and audit it; `steps` are audited first, as steps inside
        the current status (what `record_step` writes), in the same transaction. `unless` and a
        callable `details` see the row as read under its lock: when `unless` is true, the row is
        returned unchanged."""
        now = self.clock()
        with self._connection(None) as conn:
            select = sa.select(outbox).where(outbox.c.job_id == job_id)
            if self._is_postgres:
                select = select.with_for_update()
            row = conn.execute(select).mappings().first()
            if row is None:
                raise JobNotFound(job_id)
            current = OutboxJob.from_row(row)
            if unless is not None and unless(current):
                return current
            if callable(details):
                details = details(current)
            if current.status not in allowed_from:
                raise InvalidTransition(
                    f"job {job_id}: cannot go from {current.status} to {to_status} ({event})"
                )
            if require_run and current.dagster_run_id != run_id:
                raise InvalidTransition(
                    f"job {job_id}: run {run_id} no longer holds the job "
                    f"(held by run {current.dagster_run_id})"
                )
            attempts = current.attempts + attempt_increment
            update = (
                outbox.update()
                .where(outbox.c.job_id == job_id)
                .values(status=to_status, attempts=attempts, updated_at=now, **(changes or {}))
            )
            # The row as updated, without reading it again (SQLite has RETURNING from 3.35).
            returning = conn.dialect.update_returning
            updated = conn.execute(update.returning(*outbox.c) if returning else update)
            row = updated.mappings().one() if returning else None
            self._audit_many(
                conn,
                [
                    *(
                        _audit_values(
                            job_id, run_id, step, current.status, current.status, attempts, now, d
                        )
                        for step, d in steps
                    ),
                    _audit_values(
                        job_id, run_id, event, current.status, to_status, attempts, now, details
                    ),
                ],
            )
            return OutboxJob.from_row(row) if row is not None else self._get(conn, job_id)

    def _get(self, conn: Connection, job_id: str) -> OutboxJob:
        row = conn.execute(sa.select(outbox).where(outbox.c.job_id == job_id)).mappings().first()
        if row is None:
            raise JobNotFound(job_id)
        return OutboxJob.from_row(row)

    @staticmethod
    def _audit_many(conn: Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(audit.insert(), rows)

    @contextmanager
    def _connection(self, connection: Connection | None) -> Iterator[Connection]:
        """Use the caller's connection as is, or run in our own committed transaction."""
        try:
            if connection is not None:
                yield connection
            else:
                with self.engine.begin() as conn:
                    yield conn
        except sa.exc.OperationalError as exc:
            _raise_if_schema_missing(exc)
            raise
        except sa.exc.ProgrammingError as exc:
            _raise_if_schema_missing(exc)
            raise

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._connection(None) as conn:
            yield conn


def _held_by(job: OutboxJob, run_id: str) -> bool:
    return job.status == "PROCESSING" and job.dagster_run_id == run_id


def _check_dataset(job: OutboxJob, dataset: str | None) -> None:
    if dataset is not None and job.dataset != dataset:
        raise InvalidTransition(
            f"job {job.job_id} belongs to dataset '{job.dataset}', not '{dataset}'"
        )


def _audit_values(
    job_id: str,
    run_id: str | None,
    event: str,
    from_status: str | None,
    to_status: str | None,
    attempt: int,
    at: datetime,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "run_id": run_id,
        "event": event,
        "from_status": from_status,
        "to_status": to_status,
        "attempt": attempt,
        "at": at,
        "details": details,
    }


def _raise_if_schema_missing(exc: sa.exc.DBAPIError) -> None:
    text = str(exc.orig).lower()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        raise SchemaNotReady(str(exc.orig).splitlines()[0]) from exc


def redispatch_cutoff(now: datetime, after_seconds: int) -> datetime:
    return now - timedelta(seconds=after_seconds)
