"""Per dataset, two assets: `staging/<dataset>` and `storage/<dataset>`.

A run of `dw_ingestion_job` processes one outbox job, named by its `dw/job_id` run tag, for one
business-date partition. The asset bodies only call `core.ingestion`; the wrapper below keeps the
outbox row in step with the run: a permanent error marks the row FAILED at once and stops Dagster
from retrying; any other error is retried by the op's `RetryPolicy`, and marks the row FAILED when
the last retry fails.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.errors import DwError
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.settings import TAG_JOB_ID


def staging_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(["staging", dataset])


def storage_key(dataset: str) -> dg.AssetKey:
    return dg.AssetKey(["storage", dataset])


def job_id_of(context: dg.AssetExecutionContext) -> str:
    job_id = context.run.tags.get(TAG_JOB_ID)
    if not job_id:
        raise dg.Failure(
            description=(
                f"this run has no '{TAG_JOB_ID}' tag, so it does not know which outbox job to "
                "load; launch ingestion through the outbox sensor or tag the run with the job id"
            ),
            allow_retries=False,
        )
    return job_id


@contextmanager
def outbox_bookkeeping(
    context: dg.AssetExecutionContext, dw: DwResource, job_id: str, max_retries: int
) -> Iterator[None]:
    """Translate errors into outbox state and Dagster retry decisions."""
    try:
        yield
    except dg.Failure:
        raise
    except DwError as exc:
        if exc.permanent:
            _mark_failed(context, dw, job_id, str(exc))
            raise dg.Failure(
                description=str(exc),
                metadata={"job_id": job_id, "error_type": type(exc).__name__},
                allow_retries=False,
            ) from exc
        if context.retry_number >= max_retries:
            _mark_failed(context, dw, job_id, f"{type(exc).__name__}: {exc}")
        raise
    except Exception as exc:
        if context.retry_number >= max_retries:
            _mark_failed(context, dw, job_id, f"{type(exc).__name__}: {exc}")
        raise


def _mark_failed(
    context: dg.AssetExecutionContext, dw: DwResource, job_id: str, error: str
) -> None:
    try:
        dw.service.fail(job_id, context.run_id, error)
    except Exception as exc:  # the original error matters more; log why bookkeeping failed
        context.log.error(f"could not mark outbox job {job_id} FAILED: {exc}")


def _owners(contract: DatasetContract) -> list[str]:
    owner = contract.owner or ""
    return [owner] if "@" in owner or owner.startswith("team:") else []


def dataset_assets(
    contract: DatasetContract,
    partitions_def: dg.PartitionsDefinition,
    retry_policy: dg.RetryPolicy,
    warehouse_kind: str,
) -> list[dg.AssetsDefinition]:
    """The staging and storage assets of one dataset."""
    dataset = contract.name
    max_retries = retry_policy.max_retries
    common = {
        "partitions_def": partitions_def,
        "group_name": dataset,
        "owners": _owners(contract),
        "retry_policy": retry_policy,
        "kinds": {warehouse_kind},
    }

    @dg.asset(
        key=staging_key(dataset),
        description=(
            f"Validated rows of one `{dataset}` job, loaded with COPY into dw_staging.{dataset}. "
            f"{contract.description or ''}"
        ).strip(),
        **common,
    )
    def staging_asset(context: dg.AssetExecutionContext, dw: DwResource) -> dg.MaterializeResult:
        job_id = job_id_of(context)
        with outbox_bookkeeping(context, dw, job_id, max_retries):
            job = dw.service.start(job_id, context.run_id, dataset=dataset)
            context.log.info(
                f"job_id={job_id} dataset={dataset} tenant={job.tenant_id} run_id={context.run_id}"
                f" attempt={job.attempts}: staging {job.command.source_uri}"
            )
            result = dw.service.stage(job, context.run_id)
        return dg.MaterializeResult(
            metadata={
                "job_id": job_id,
                "tenant": job.tenant_id,
                "rows": dg.MetadataValue.int(result.rows),
                "source": result.source_uri,
                "format": result.format,
                "bytes": dg.MetadataValue.int(result.size_bytes),
                "duration_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            }
        )

    @dg.asset(
        key=storage_key(dataset),
        deps=[staging_key(dataset)],
        description=(
            f"dw_storage.{dataset}: promoted atomically from staging "
            f"({contract.write_mode}; lineage in _dw_job_id, _dw_tenant_id, _dw_loaded_at)."
        ),
        **common,
    )
    def storage_asset(context: dg.AssetExecutionContext, dw: DwResource) -> dg.MaterializeResult:
        job_id = job_id_of(context)
        with outbox_bookkeeping(context, dw, job_id, max_retries):
            result = dw.service.promote(job_id, context.run_id)
        context.log.info(
            f"job_id={job_id} dataset={dataset} run_id={context.run_id}: "
            f"promoted {result.rows} rows ({result.write_mode}); job COMPLETED"
        )
        return dg.MaterializeResult(
            metadata={
                "job_id": job_id,
                "rows": dg.MetadataValue.int(result.rows),
                "write_mode": result.write_mode,
                "storage_rows_for_job": dg.MetadataValue.int(result.storage_rows_for_job),
                "duration_seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            }
        )

    return [staging_asset, storage_asset]
