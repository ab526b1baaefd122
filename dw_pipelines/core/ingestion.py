"""One ingestion job, step by step: start, stage (read, validate, load), promote, complete.

The Dagster assets call these steps; so could any other runner. Each step is safe to repeat:
staging replaces the job's staged rows, promotion replaces (append) or upserts (merge) the job's
storage rows, and the staged rows are only discarded once the outbox says COMPLETED, so re-running
the storage step after a crash promotes the same rows again.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
from dw_pipelines.core.readers import SourceFile, open_source, read_batches
from dw_pipelines.core.validation import DEFAULT_MAX_VALUE_BYTES, conform_batch
from dw_pipelines.core.warehouse import Warehouse


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

    def details(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "batches": self.batches,
            "source_uri": self.source_uri,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class PromoteResult:
    job_id: str
    dataset: str
    write_mode: str
    rows: int
    storage_rows_for_job: int
    seconds: float

    def details(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "write_mode": self.write_mode,
            "storage_rows_for_job": self.storage_rows_for_job,
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
        job = self.queue.get(job_id)
        if dataset is not None and job.dataset != dataset:
            raise InvalidTransition(
                f"job {job_id} belongs to dataset '{job.dataset}', not '{dataset}'"
            )
        job = self.queue.start(job_id, run_id)
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

        def conformed() -> Iterator[pa.RecordBatch]:
            nonlocal batches
            first_row = 1
            for raw in read_batches(source, contract, self.batch_rows):
                batch = conform_batch(raw, contract, source, first_row, self.max_value_bytes)
                first_row += batch.num_rows
                batches += 1
                yield batch

        rows = self.warehouse.load_staging(contract, job.job_id, conformed())
        if rows == 0:
            raise ContractViolation("the file has a header but no data rows", source=source.name)
        self._check_unique_keys(contract, job.job_id, source)
        result = StageResult(
            job_id=job.job_id,
            dataset=job.dataset,
            rows=rows,
            batches=batches,
            source_uri=command.source_uri,
            source_path=str(source.path),
            format=source.format,
            size_bytes=source.size_bytes,
            seconds=time.monotonic() - started,
        )
        self.queue.record_step(job.job_id, run_id, STAGED, result.details())
        return result

    def _check_unique_keys(
        self, contract: DatasetContract, job_id: str, source: SourceFile
    ) -> None:
        duplicate = self.warehouse.find_duplicate_key(contract, job_id)
        if duplicate is None:
            return
        self.warehouse.discard_staging(contract, job_id)
        key = ", ".join(f"{k}={v!r}" for k, v in duplicate.key.items())
        rows = " and ".join(str(r) for r in duplicate.rows)
        lines = [source.line_of_row(r) for r in duplicate.rows]
        where = f"rows {rows}"
        if all(line is not None for line in lines):
            where += f" (lines {' and '.join(str(line) for line in lines)})"
        raise ContractViolation(
            f"duplicate primary key ({key}) on {where}; {duplicate.occurrences} rows share it",
            source=source.name,
            row=duplicate.rows[0],
            line=lines[0],
            column=",".join(contract.primary_key),
        )

    def promote(self, job_id: str, run_id: str, dataset: str | None = None) -> PromoteResult:
        """Atomically write the staged rows into storage, then mark the job COMPLETED.

        The run takes the job first if it does not hold it yet (a re-execution of the storage
        step), but only once it knows there is something to promote.
        """
        started = time.monotonic()
        job = self.queue.get(job_id)
        if dataset is not None and job.dataset != dataset:
            raise InvalidTransition(
                f"job {job_id} belongs to dataset '{job.dataset}', not '{dataset}'"
            )
        contract = self.contracts.get(job.dataset)
        staged = self.warehouse.staged_rows(contract, job_id)
        if staged == 0 and self._last_staged_rows(job_id) != 0:
            # Staging was already discarded (or never loaded): promoting "nothing" would wipe
            # the job's storage rows in append mode.
            raise SourceError(
                f"job {job_id}: no staged rows to promote; materialize staging/{job.dataset} "
                "for this job first"
            )
        self.queue.start(job_id, run_id)
        written = self.warehouse.promote(
            contract, job_id, job.tenant_id, loaded_at=self.queue.clock()
        )
        result = PromoteResult(
            job_id=job_id,
            dataset=job.dataset,
            write_mode=contract.write_mode,
            rows=staged,
            storage_rows_for_job=self.warehouse.storage_rows(contract, job_id),
            seconds=time.monotonic() - started,
        )
        self.queue.record_step(job_id, run_id, PROMOTED, {**result.details(), "written": written})
        self.queue.complete(job_id, run_id, rows_loaded=staged, details=result.details())
        self.warehouse.discard_staging(contract, job_id)
        return result

    def _last_staged_rows(self, job_id: str) -> int | None:
        for event in reversed(self.queue.audit_trail(job_id)):
            if event.event == STAGED:
                return int((event.details or {}).get("rows", -1))
        return None

    def fail(self, job_id: str, run_id: str, error: str) -> OutboxJob:
        """Mark FAILED. Storage is never touched.

        Staging keeps what a failed promotion left (validated rows), so a re-execution of the
        storage step can promote it; invalid loads never commit to staging in the first place.
        """
        return self.queue.fail(job_id, run_id, error)

    def heartbeat(self, run_id: str) -> int:
        return self.queue.heartbeat(run_id)
