"""Per dataset, two assets: `staging/<dataset>` and `storage/<dataset>`.

Which outbox jobs a run loads:

* a run tagged `dw/job_id` (the sensor, `dw-pipelines outbox retry`, UI re-executions, which
  inherit tags) loads that job;
* an untagged run of a partition (a UI backfill or "Materialize" of a business date) re-loads
  every settled (COMPLETED or FAILED) job of that dataset and date, in enqueue order; jobs still
  in flight belong to their own runs. Its storage step promotes the jobs its staging step took.

The asset bodies only call `core.ingestion`; `_guarded` keeps the outbox row in step with the run:

* permanent error: FAILED at once, no retry;
* transient error: `RETRY_SCHEDULED` and a Dagster retry after a capped, jittered exponential
  delay (`core.retry`); when the budget is used up: FAILED, audited `DEAD_LETTERED`.
"""

import datetime as dt
from collections.abc import Callable, Iterator
from typing import TypeVar

import dagster as dg

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.errors import DwError, is_permanent
from dw_pipelines.core.retry import RetryPolicy
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.settings import TAG_DATASET, TAG_JOB_ID

T = TypeVar("T")
SETTLED_STATUSES = ("COMPLETED", "FAILED")


def staging_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(["staging", dataset])


def storage_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(["storage", dataset])


def log_fields(job_id: str, dataset: str | None, tenant: str | None, run_id: str | None) -> str:
    """The key=value prefix every worker log line starts with, so logs can be searched and
    parsed by job, dataset, tenant and run (unknown fields are left out)."""
    fields = {"job_id": job_id, "dataset": dataset, "tenant": tenant, "run_id": run_id}
    return " ".join(f"{k}={v}" for k, v in fields.items() if v)


def describe(exc: BaseException) -> str:
    """One line for `last_error`: our messages as they are, others with their type."""
    if isinstance(exc, DwError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _guarded(
    context: dg.AssetExecutionContext,
    dw: DwResource,
    job_id: str,
    policy: RetryPolicy,
    action: Callable[[], T],
) -> T:
    """Run one job's step; turn its errors into outbox state and a Dagster retry decision."""
    run_id = context.run_id
    try:
        return action()
    except dg.Failure:
        raise
    except Exception as exc:
        error = dw.service.redact(describe(exc))
        if is_permanent(exc):
            _record(context, lambda: dw.service.fail(job_id, run_id, error))
            raise dg.Failure(
                description=error,
                metadata={"job_id": job_id, "error_type": type(exc).__name__},
                allow_retries=False,
            ) from exc
        retry_number = context.retry_number
        if retry_number < policy.max_retries:
            delay = policy.delay(retry_number)
            _record(
                context,
                lambda: dw.queue.schedule_retry(job_id, run_id, error, delay, retry_number + 1),
            )
            context.log.warning(
                f"{log_fields(job_id, None, None, run_id)} transient error, "
                f"retry {retry_number + 1} of {policy.max_retries} in {delay:.1f}s: {error}"
            )
            raise dg.RetryRequested(max_retries=policy.max_retries, seconds_to_wait=delay) from exc
        attempts = retry_number + 1
        _record(context, lambda: dw.queue.dead_letter(job_id, run_id, error, attempts))
        raise dg.Failure(
            description=f"retries exhausted after {attempts} attempts: {error}",
            metadata={"job_id": job_id, "attempts": attempts},
            allow_retries=False,
        ) from exc


def _record(context: dg.AssetExecutionContext, write: Callable[[], object]) -> None:
    try:
        write()
    except Exception as exc:  # the original error matters more; the reconciler repairs the row
        context.log.error(f"could not record the failure in the outbox: {describe(exc)}")


def _tagged_job(context: dg.AssetExecutionContext) -> str | None:
    return context.run.tags.get(TAG_JOB_ID) or None


def _job_is_for(
    context: dg.AssetExecutionContext, dw: DwResource, job_id: str, dataset: str
) -> bool:
    """Whether the tagged job loads `dataset` (the run's dw/dataset tag, else the outbox row)."""
    tagged_dataset = context.run.tags.get(TAG_DATASET)
    if tagged_dataset:
        return tagged_dataset == dataset
    return dw.queue.get(job_id).dataset == dataset


def _partition_date(context: dg.AssetExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key)


def _owners(contract: DatasetContract) -> list[str]:
    owner = contract.owner or ""
    return [owner] if "@" in owner or owner.startswith("team:") else []


def dataset_assets(
    contract: DatasetContract,
    partitions_def: dg.PartitionsDefinition,
    policy: RetryPolicy,
    warehouse_kind: str,
) -> list[dg.AssetsDefinition]:
    """The staging and storage assets of one dataset."""
    dataset = contract.name
    common = {
        "partitions_def": partitions_def,
        "group_name": dataset,
        "owners": _owners(contract),
        "kinds": {warehouse_kind},
        # A run launched for the whole job (e.g. `dagster job launch`) materializes only the
        # tagged job's dataset; the other datasets' steps yield nothing.
        "output_required": False,
    }

    @dg.asset(
        key=staging_key(dataset),
        description=(
            f"Validated rows of `{dataset}` jobs, loaded with COPY into dw_staging.{dataset}. "
            f"{contract.description or ''}"
        ).strip(),
        **common,
    )
    def staging_asset(
        context: dg.AssetExecutionContext, dw: DwResource
    ) -> Iterator[dg.MaterializeResult]:
        tagged = _tagged_job(context)
        if tagged and not _job_is_for(context, dw, tagged, dataset):
            return  # a whole-job launch: this dataset has nothing to do (storage is skipped)
        if tagged:
            job_ids = [tagged]
        else:
            settled = dw.queue.jobs_for_partition(
                dataset, _partition_date(context), SETTLED_STATUSES
            )
            job_ids = [job.job_id for job in settled]
            context.log.info(
                f"partition {context.partition_key}: re-loading {len(job_ids)} settled "
                f"{dataset} job(s): {', '.join(job_ids) or 'none'}"
            )
        results, failures = [], []
        for job_id in job_ids:

            def stage(job_id: str = job_id):
                job = dw.service.start(job_id, context.run_id, dataset=dataset)
                context.log.info(
                    f"{log_fields(job_id, dataset, job.tenant_id, context.run_id)} "
                    f"attempt={job.attempts}: staging {job.command.source_uri}"
                )
                return job, dw.service.stage(job, context.run_id)

            try:
                results.append(_guarded(context, dw, job_id, policy, stage))
            except dg.Failure as failure:
                if tagged:
                    raise
                failures.append(f"{job_id}: {failure.description}")
        if failures:
            raise dg.Failure(
                description=f"{len(failures)} job(s) failed: " + "; ".join(failures),
                allow_retries=False,
            )
        yield dg.MaterializeResult(metadata=_staging_metadata(results))

    @dg.asset(
        key=storage_key(dataset),
        deps=[staging_key(dataset)],
        description=(
            f"dw_storage.{dataset}: promoted atomically from staging "
            f"({contract.write_mode}; lineage in _dw_job_id, _dw_tenant_id, _dw_loaded_at)."
        ),
        **common,
    )
    def storage_asset(
        context: dg.AssetExecutionContext, dw: DwResource
    ) -> Iterator[dg.MaterializeResult]:
        tagged = _tagged_job(context)
        if tagged and not _job_is_for(context, dw, tagged, dataset):
            return
        if tagged:
            job_ids = [tagged]
        else:
            # The jobs this run's staging step took (or its parent's, when re-executed).
            holders = [context.run_id]
            parent = context.run.tags.get("dagster/parent_run_id")
            if parent:
                holders.append(parent)
            job_ids = [job.job_id for job in dw.queue.jobs_held_by(holders, dataset)]
        results = []
        for job_id in job_ids:

            def promote(job_id: str = job_id):
                return dw.service.promote(job_id, context.run_id, dataset=dataset)

            result = _guarded(context, dw, job_id, policy, promote)
            context.log.info(
                f"{log_fields(job_id, dataset, result.tenant_id, context.run_id)} "
                f"promoted {result.rows} rows ({result.write_mode}); job COMPLETED"
            )
            results.append(result)
        yield dg.MaterializeResult(
            metadata={
                "jobs": dg.MetadataValue.int(len(results)),
                "job_id": ", ".join(r.job_id for r in results),
                "rows": dg.MetadataValue.int(sum(r.rows for r in results)),
                "write_mode": contract.write_mode,
                "inserted": dg.MetadataValue.int(sum(r.inserted for r in results)),
                "deleted": dg.MetadataValue.int(sum(r.deleted for r in results)),
                "duration_seconds": dg.MetadataValue.float(
                    float(round(sum(r.seconds for r in results), 3))
                ),
            }
        )

    return [staging_asset, storage_asset]


def _staging_metadata(results: list) -> dict[str, object]:
    jobs = [job for job, _ in results]
    staged = [result for _, result in results]
    return {
        "jobs": dg.MetadataValue.int(len(staged)),
        "job_id": ", ".join(job.job_id for job in jobs),
        "tenant": ", ".join(sorted({job.tenant_id for job in jobs})),
        "rows": dg.MetadataValue.int(sum(r.rows for r in staged)),
        "source": ", ".join(r.source_uri for r in staged),
        "format": ", ".join(sorted({r.format for r in staged})),
        "bytes": dg.MetadataValue.int(sum(r.size_bytes for r in staged)),
        "duration_seconds": dg.MetadataValue.float(float(round(sum(r.seconds for r in staged), 3))),
    }
