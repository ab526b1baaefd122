"""`dw_outbox_sensor`: the outbox relay. Claims due PENDING rows and requests one run per job.

Crash safety, at every point of a tick:

* The claim (PENDING -> SENT) commits inside the evaluation. If the daemon dies before it records
  the tick's run requests, those rows are SENT with no run. Later ticks look for SENT rows older
  than `DW_SENSOR_REDISPATCH_AFTER_SECONDS` that have no run (one batched run-storage query) and
  request them again, so no row is lost.
* Every request carries `run_key = job_id`. The daemon never creates a second run for a key this
  sensor already used (in any run status), so a re-request, a resumed tick or a row forced back to
  PENDING cannot launch a job twice.
"""

from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from dw_pipelines.core.contracts import ContractRegistry
from dw_pipelines.core.db import utcnow
from dw_pipelines.core.outbox import OutboxJob, redispatch_cutoff
from dw_pipelines.defs.assets import staging_key, storage_key
from dw_pipelines.defs.partitions import business_date_partitions
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.settings import SENSOR_NAME, TAG_DATASET, TAG_JOB_ID, TAG_TENANT, Settings


def run_request_for(job: OutboxJob) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=job.job_id,
        partition_key=job.business_date.isoformat(),
        asset_selection=[staging_key(job.dataset), storage_key(job.dataset)],
        tags={TAG_JOB_ID: job.job_id, TAG_DATASET: job.dataset, TAG_TENANT: job.tenant_id},
    )


def jobs_without_runs(instance: dg.DagsterInstance, jobs: Sequence[OutboxJob]) -> list[OutboxJob]:
    """The jobs for which no Dagster run exists at all (one query for the whole batch)."""
    if not jobs:
        return []
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={TAG_JOB_ID: [job.job_id for job in jobs]})
    )
    with_runs = {record.dagster_run.tags.get(TAG_JOB_ID) for record in records}
    return [job for job in jobs if job.job_id not in with_runs]


def outbox_sensor(
    job: "UnresolvedAssetJobDefinition", settings: Settings, contracts: ContractRegistry
) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus[settings.sensor_default_status],
        description=(
            "Polls dw_ingestion_outbox for due PENDING jobs (oldest first, at most "
            f"{settings.sensor_batch_size} per tick), marks them SENT and requests one "
            "dw_ingestion_job run per job with run_key = job_id."
        ),
    )
    def dw_outbox_sensor(
        context: dg.SensorEvaluationContext, dw: DwResource
    ) -> dg.SensorResult | dg.SkipReason:
        queue = dw.queue
        stale = queue.sent_before(
            redispatch_cutoff(utcnow(), settings.sensor_redispatch_after_seconds),
            settings.sensor_batch_size,
        )
        orphans = jobs_without_runs(context.instance, stale)
        if orphans:
            queue.note_redispatched([j.job_id for j in orphans])
            context.log.warning(
                "re-requesting SENT jobs that have no run: " + ", ".join(j.job_id for j in orphans)
            )
        claimed = queue.claim_due(max(settings.sensor_batch_size - len(orphans), 0))
        requests = []
        for job in [*orphans, *claimed]:
            problem = _undispatchable(job, contracts)
            if problem:
                queue.fail(job.job_id, None, problem, require_run=False)
                context.log.error(f"job_id={job.job_id} dataset={job.dataset}: {problem}")
                continue
            requests.append(run_request_for(job))
            context.log.info(
                f"job_id={job.job_id} dataset={job.dataset} tenant={job.tenant_id}: run requested"
            )
        if not requests:
            return dg.SkipReason("no due PENDING jobs in dw_ingestion_outbox")
        return dg.SensorResult(run_requests=requests)

    return dw_outbox_sensor


def _undispatchable(job: OutboxJob, contracts: ContractRegistry) -> str | None:
    """Why the job cannot become a run (so it fails cleanly instead of failing the whole tick)."""
    if job.dataset not in contracts:
        return f"dataset: unknown dataset '{job.dataset}' (its contract is no longer deployed)"
    key = job.business_date.isoformat()
    if not business_date_partitions.has_partition_key(key):
        return f"business_date: {key} is not a partition of the ingestion assets"
    return None
