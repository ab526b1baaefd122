"""One ingestion job, step by step: start, stage (read, validate, load), promote, complete.

The Dagster assets call these steps; so could any other runner. Each step is safe to repeat:
staging replaces the job's staged rows, promotion replaces (append) or upserts (merge) the job's
storage rows, and the staged rows are only discarded once the outbox says COMPLETED, so re-running
the storage step after a crash promotes the same rows again.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, quote_plus

import pyarrow as pa

from dw_pipelines.core.contracts import ContractRegistry, DatasetContract
from dw_pipelines.core.errors import (
    CommandError,
    ContractViolation,
    InvalidTransition,
    SourceError,
)
from dw_pipelines.core.landing import LandingZone
from dw_pipelines.core.outbox import PROMOTED, STAGED, DwIngestionJobQueue, OutboxJob
from dw_pipelines.core.readers import (
    DEFAULT_BLOCK_BYTES,
    ColumnReport,
    SourceFile,
    open_source,
    read_batches,
)
from dw_pipelines.core.validation import (
    DEFAULT_MAX_VALUE_BYTES,
    KeyTracker,
    conform_batch,
    conformed_keys,
)
from dw_pipelines.core.warehouse import Warehouse

PREVIEW_ROWS = 5


@dataclass(frozen=True)
class StageResult:
    job_id: str
    dataset: str
    rows: int
    batches: int
    source_uri: str
    source_path: str
    format: str
    size_bytes: int
    seconds: float
    # Identifies the version of the file that was read: size and mtime of a local file; size,
    # ETag, Last-Modified (and version id) of an object.
    fingerprint: dict[str, Any] = field(default_factory=dict)
    # Compared with the job's previous STAGED fingerprint: None on the first load.
    source_changed: bool | None = None
    # The file's first rows as loaded (for the UI's preview; never written to the audit trail).
    preview: tuple[dict[str, Any], ...] = ()
    # What the contract's column policies did, by the file's column names: columns left out
    # (`extra_columns: ignore`, file order) and columns loaded as NULL (`missing_columns: null`,
    # contract order).
    ignored_columns: tuple[str, ...] = ()
    missing_columns: tuple[str, ...] = ()

    def details(self) -> dict[str, Any]:
        details = {
            "rows": self.rows,
            "batches": self.batches,
            "source_uri": self.source_uri,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
            "fingerprint": self.fingerprint,
        }
        if self.source_changed is not None:
            details["source_changed"] = self.source_changed
        if self.ignored_columns:
            details["ignored_columns"] = list(self.ignored_columns)
        if self.missing_columns:
            details["missing_columns"] = list(self.missing_columns)
        return details


@dataclass(frozen=True)
class PromoteResult:
    job_id: str
    dataset: str
    tenant_id: str
    write_mode: str
    rows: int  # staged rows promoted
    inserted: int  # rows written to storage (merge: new and changed rows)
    deleted: int  # rows removed first (append: the job's previous load; merge: changed rows)
    seconds: float
    strategy: str = "insert"  # how storage was written: append "insert"; merge "in-place"/"rewrite"
    schema_version: int | None = None  # the dataset's schema version storage had (core.evolution)
    # merge: staged rows left unapplied because a job enqueued later had already written the key
    kept_newer: int = 0
    loaded_at: datetime | None = None  # the load's `_dw_loaded_at` (and its `_dw_loads` row)

    def details(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "write_mode": self.write_mode,
            "strategy": self.strategy,
            "schema_version": self.schema_version,
            "inserted": self.inserted,
            "deleted": self.deleted,
            **({"kept_newer": self.kept_newer} if self.kept_newer else {}),
            "seconds": round(self.seconds, 3),
        }


def check_consistent(job: OutboxJob, contracts: ContractRegistry) -> None:
    """A row written straight into the outbox must say the same thing in its columns and its
    command, about a dataset this deployment knows (raises `CommandError`, a permanent error)."""
    command = job.command  # validates the stored payload again
    if command.dataset != job.dataset:
        raise CommandError(
            "dataset",
            f"the command says '{command.dataset}' but the outbox row says '{job.dataset}'",
        )
    if command.tenant_id != job.tenant_id:
        raise CommandError(
            "tenant_id",
            f"the command says '{command.tenant_id}' but the outbox row says '{job.tenant_id}'",
        )
    contracts.get(job.dataset)


def _raise_if_duplicate(keys: KeyTracker, contract: DatasetContract, source: SourceFile) -> None:
    # The tracker keeps key hashes only; on a repeated hash it re-reads the keys from the file.
    duplicate = keys.first_duplicate(lambda: conformed_keys(source, contract))
    if duplicate is None:
        return
    key_values, rows, occurrences = duplicate
    key = ", ".join(f"{contract.column(k).source}={v!r}" for k, v in key_values.items())
    lines = [source.line_of_row(r) for r in rows]
    where = f"rows {' and '.join(str(r) for r in rows)}"
    if all(line is not None for line in lines):
        where += f" (lines {' and '.join(str(line) for line in lines)})"
    raise ContractViolation(
        f"duplicate primary key ({key}) on {where}; {occurrences} rows share it",
        source=source.name,
        row=rows[0],
        line=lines[0],
        column=",".join(contract.column(k).source for k in contract.primary_key),
        warehouse_column=",".join(contract.primary_key),
    )


class IngestionService:
    def __init__(
        self,
        queue: DwIngestionJobQueue,
        warehouse: Warehouse,
        contracts: ContractRegistry,
        landing: LandingZone,
        batch_rows: int = 65_536,
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
    ):
        self.queue = queue
        self.warehouse = warehouse
        self.contracts = contracts
        self.landing = landing
        self.batch_rows = batch_rows
        self.max_value_bytes = max_value_bytes

    def start(self, job_id: str, run_id: str, dataset: str | None = None) -> OutboxJob:
        """The run takes the job (PROCESSING), or keeps it if it already holds it.

        `dataset` guards against a run aimed at another dataset's assets.
        """
        job = self.queue.start(job_id, run_id, dataset=dataset)
        # Checked once the run holds the job, so that a bad row ends FAILED by this run.
        check_consistent(job, self.contracts)
        return job

    def stage(self, job: OutboxJob, run_id: str) -> StageResult:
        """Read the source streaming, validate every batch, load staging; check primary keys."""
        started = time.monotonic()
        command = job.command
        contract = self.contracts.get(job.dataset)
        source = open_source(self.landing.resolve(command.source_uri), command.format, contract.csv)
        batches = 0
        keys = KeyTracker(contract.primary_key)
        columns = ColumnReport()
        preview: list[dict[str, Any]] = []

        def conformed() -> Iterator[pa.RecordBatch]:
            nonlocal batches
            first_row = 1
            # A block must hold the largest row a file may have (rows up to ~2 values' limit).
            block_bytes = max(DEFAULT_BLOCK_BYTES, 2 * self.max_value_bytes)
            for raw in read_batches(source, contract, self.batch_rows, block_bytes, columns):
                batch = conform_batch(raw, contract, source, first_row, self.max_value_bytes)
                first_row += batch.num_rows
                batches += 1
                keys.add(batch)
                if not preview:
                    preview.extend(batch.slice(0, PREVIEW_ROWS).to_pylist())
                yield batch
            if first_row == 1:
                raise ContractViolation(
                    "the file has no data rows (a header, an empty JSON array or blank lines only)",
                    source=source.name,
                )
            # Raised inside the stream, so the staging load is rolled back with it.
            _raise_if_duplicate(keys, contract, source)

        rows = self.warehouse.load_staging(
            contract, job.job_id, conformed(), size_hint=source.size_bytes
        )
        previous = self._previous_fingerprint(job.job_id)
        result = StageResult(
            job_id=job.job_id,
            dataset=job.dataset,
            rows=rows,
            batches=batches,
            source_uri=command.source_uri,
            source_path=source.location,
            format=source.format,
            size_bytes=source.size_bytes,
            seconds=time.monotonic() - started,
            fingerprint=source.fingerprint,
            source_changed=None if previous is None else previous != source.fingerprint,
            preview=tuple(preview),
            ignored_columns=columns.ignored,
            missing_columns=columns.missing,
        )
        self.queue.record_step(job.job_id, run_id, STAGED, result.details())
        return result

    def _previous_fingerprint(self, job_id: str) -> dict[str, Any] | None:
        """The source fingerprint of the job's last STAGED event, if any (a rerun)."""
        for event in reversed(self.queue.audit_trail(job_id)):
            if event.event == STAGED and (event.details or {}).get("fingerprint"):
                return event.details["fingerprint"]
        return None

    def promote(
        self, job_id: str, run_id: str, dataset: str | None = None, keep_staging: bool = False
    ) -> PromoteResult:
        """Atomically write the staged rows into storage, then mark the job COMPLETED.

        The run takes the job first if it does not hold it yet (a re-execution of the storage
        step), but only once it knows there is something to promote. `keep_staging` leaves the
        staged rows for checks that compare storage with them; call `discard_staging` after.
        """
        started = time.monotonic()
        job = self.queue.get(job_id)
        if dataset is not None and job.dataset != dataset:
            raise InvalidTransition(
                f"job {job_id} belongs to dataset '{job.dataset}', not '{dataset}'"
            )
        contract = self.contracts.get(job.dataset)
        if not self.warehouse.has_staged_rows(contract, job_id):
            # Staging was already discarded (or never loaded; empty files never stage): promoting
            # "nothing" would wipe the job's storage rows in append mode.
            raise SourceError(
                f"job {job_id}: no staged rows to promote; materialize staging/{job.dataset} "
                "for this job first"
            )
        self.queue.start(job_id, run_id, current=job)
        loaded_at = self.queue.clock()
        counts = self.warehouse.promote(
            contract,
            job_id,
            job.tenant_id,
            loaded_at=loaded_at,
            enqueued_at=job.created_at,
        )
        result = PromoteResult(
            job_id=job_id,
            dataset=job.dataset,
            tenant_id=job.tenant_id,
            write_mode=contract.write_mode,
            rows=counts.rows,
            inserted=counts.inserted,
            deleted=counts.deleted,
            seconds=time.monotonic() - started,
            strategy=counts.strategy,
            schema_version=self.warehouse.schema_version(contract),
            kept_newer=counts.kept_newer,
            loaded_at=loaded_at,
        )
        # PROMOTED and COMPLETED in one outbox transaction: the storage write has committed.
        self.queue.complete(
            job_id,
            run_id,
            rows_loaded=counts.rows,
            details=result.details(),
            steps=[(PROMOTED, result.details())],
        )
        if not keep_staging:
            self.warehouse.discard_staging(contract, job_id)
        return result

    def discard_staging(self, job_id: str, dataset: str) -> None:
        self.warehouse.discard_staging(self.contracts.get(dataset), job_id)

    def fail(self, job_id: str, run_id: str, error: str) -> OutboxJob:
        """Mark FAILED. Storage is never touched.

        Staging keeps what a failed promotion left (validated rows), so a re-execution of the
        storage step can promote it; invalid loads never commit to staging in the first place.
        """
        return self.queue.fail(job_id, run_id, error)

    def redact(self, text: str) -> str:
        """`text` without the database passwords (driver errors may quote connection strings)."""
        for url in (self.queue.engine.url, self.warehouse.engine.url):
            password = url.password
            if password:
                for form in {password, quote(password, safe=""), quote_plus(password)}:
                    text = text.replace(form, "***")
        return text

    def heartbeat(self, run_id: str) -> int:
        return self.queue.heartbeat(run_id)
