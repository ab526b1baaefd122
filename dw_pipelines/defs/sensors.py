"""`dw_outbox_sensor`: the outbox relay. Claims due PENDING rows and requests one run per job.

`dw_outbox_reconciler` (below) settles in-flight rows whose run ended without writing back.

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
from datetime import timedelta

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from dw_pipelines.core.contracts import ContractRegistry, DatasetContract
from dw_pipelines.core.db import utcnow
from dw_pipelines.core.errors import InvalidTransition
from dw_pipelines.core.logs import log_extra, log_fields
from dw_pipelines.core.outbox import DwIngestionJobQueue, OutboxJob, redispatch_cutoff
from dw_pipelines.core.reconcile import COMPLETE, FAIL_DEAD_RUN, Decision, RunInfo, decide
from dw_pipelines.defs.assets import load_check_keys, staging_key, storage_key
from dw_pipelines.defs.k8s import k8s_config_tag
from dw_pipelines.defs.partitions import business_date_partitions
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.settings import SENSOR_NAME, TAG_DATASET, TAG_JOB_ID, TAG_TENANT, Settings


def run_tags(job: OutboxJob, settings: Settings) -> dict[str, str]:
    """Tags of a job's run: which job, dataset and tenant (concurrency limits key on the last
    two), its Kubernetes pod settings, and the run cap and retry rule (`Settings.run_policy_tags`;
    the ingestion job carries them too, for runs made without this function: backfills of the
    job, a launch from the UI)."""
    return {
        TAG_JOB_ID: job.job_id,
        TAG_DATASET: job.dataset,
        TAG_TENANT: job.tenant_id,
        **k8s_config_tag(job),
        **settings.run_policy_tags,
    }


def run_request_for(job: OutboxJob, contract: DatasetContract, settings: Settings) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=job.job_id,
        partition_key=job.business_date.isoformat(),
        asset_selection=[staging_key(job.dataset), storage_key(job.dataset)],
        asset_check_keys=load_check_keys(contract),
        tags=run_tags(job, settings),
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
        # Jobs of a dataset whose contract is broken wait, PENDING, until the file is fixed:
        # a typo in a contract must not dead-letter its jobs (nor touch any other dataset's).
        held = contracts.broken_datasets
        stale = queue.sent_before(
            redispatch_cutoff(utcnow(), settings.sensor_redispatch_after_seconds),
            settings.sensor_batch_size,
            held,
        )
        orphans = jobs_without_runs(context.instance, stale)
        if orphans:
            queue.note_redispatched([j.job_id for j in orphans])
            context.log.warning(
                "re-requesting SENT jobs that have no run: " + ", ".join(j.job_id for j in orphans)
            )
        claimed = queue.claim_due(max(settings.sensor_batch_size - len(orphans), 0), held)
        if held:
            context.log.warning(
                "holding the PENDING jobs of dataset(s) with a broken contract: "
                + ", ".join(held)
                + " (see `dw-pipelines datasets check`)"
            )
        requests = []
        for job in [*orphans, *claimed]:
            problem = _undispatchable(job, contracts)
            if problem:
                queue.fail(job.job_id, None, problem, require_run=False)
                context.log.error(
                    f"{log_fields(job.job_id, job.dataset, job.tenant_id, None)} {problem}",
                    extra=log_extra(
                        "job_refused", job_id=job.job_id, dataset=job.dataset, tenant=job.tenant_id
                    ),
                )
                continue
            requests.append(run_request_for(job, contracts.get(job.dataset), settings))
            context.log.info(
                f"{log_fields(job.job_id, job.dataset, job.tenant_id, None)} run requested",
                extra=log_extra(
                    "run_requested", job_id=job.job_id, dataset=job.dataset, tenant=job.tenant_id
                ),
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


RECONCILER_NAME = "dw_outbox_reconciler"
RECONCILE_BATCH = 500


def reconciler_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=RECONCILER_NAME,
        minimum_interval_seconds=settings.reconcile_interval_seconds,
        default_status=dg.DefaultSensorStatus[settings.sensor_default_status],
        description=(
            "Settles SENT/PROCESSING outbox rows whose Dagster run succeeded, failed, was "
            "canceled or died (no heartbeat for "
            f"{settings.reconcile_after_seconds}s) without writing back."
        ),
    )
    def dw_outbox_reconciler(context: dg.SensorEvaluationContext, dw: DwResource) -> dg.SkipReason:
        queue = dw.queue
        rows = queue.in_flight(RECONCILE_BATCH)
        runs = runs_by_job(context.instance, rows)
        now = utcnow()
        stale_after = timedelta(seconds=settings.reconcile_after_seconds)
        settled = []
        for job in rows:
            decision = decide(job, runs.get(job.job_id, []), now, stale_after)
            if decision is None:
                continue
            try:
                apply_decision(context.instance, queue, decision)
            except InvalidTransition:
                continue  # the row moved on since we read it: nothing to settle
            settled.append(f"{job.job_id}: {decision.action}")
            context.log.warning(
                f"{log_fields(job.job_id, job.dataset, job.tenant_id, decision.run_id)} "
                f"{decision.action}: {decision.reason}",
                extra=log_extra(
                    "reconciled",
                    job_id=job.job_id,
                    dataset=job.dataset,
                    tenant=job.tenant_id,
                    run_id=decision.run_id,
                ),
            )
        return dg.SkipReason(
            f"checked {len(rows)} in-flight job(s); settled {len(settled)}"
            + (": " + "; ".join(settled) if settled else "")
        )

    return dw_outbox_reconciler


def runs_by_job(
    instance: dg.DagsterInstance, jobs: Sequence[OutboxJob]
) -> dict[str, list[RunInfo]]:
    """Every Dagster run of the given jobs, in one run-storage query."""
    if not jobs:
        return {}
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={TAG_JOB_ID: [job.job_id for job in jobs]})
    )
    found: dict[str, list[RunInfo]] = {}
    for record in records:
        run = record.dagster_run
        found.setdefault(run.tags[TAG_JOB_ID], []).append(
            RunInfo(run.run_id, run.status.value, record.create_timestamp.timestamp())
        )
    return found


def apply_decision(
    instance: dg.DagsterInstance, queue: DwIngestionJobQueue, decision: Decision
) -> None:
    if decision.action == COMPLETE:
        queue.reconcile(decision.job_id, decision.run_id, "COMPLETED", decision.reason)
        return
    if decision.action == FAIL_DEAD_RUN and decision.run_id:
        run = instance.get_run_by_id(decision.run_id)
        if run is not None and run.status == dg.DagsterRunStatus.STARTED:
            # Frees the run's concurrency slot and shows the truth in the UI.
            instance.report_run_failed(run, decision.reason)
    queue.reconcile(decision.job_id, decision.run_id, "FAILED", decision.reason)
