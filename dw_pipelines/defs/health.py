"""The queue's state in the UI, without SQL: the `dw/outbox_health` asset and freshness checks.

`dw_outbox_health` (a sensor, so it launches no runs) reads the outbox every
`DW_HEALTH_INTERVAL_SECONDS` and records:

* an observation of `dw/outbox_health` with the rows per status, the age of the oldest PENDING
  row and the latest failures (each linked to its run), so the asset's page charts the queue;
* the `freshness` check of every `storage/<dataset>` whose contract sets `freshness`.

The freshness checks are declared on the storage assets, so an operator can also run one from the
UI ("Execute" on the check), which runs the storage step with only that check selected.
"""

from collections.abc import Sequence

import dagster as dg

from dw_pipelines.core.contracts import ContractRegistry, DatasetContract
from dw_pipelines.core.outbox import OutboxHealth
from dw_pipelines.core.quality import markdown_table
from dw_pipelines.defs.assets import freshness_result
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.settings import Settings

HEALTH_SENSOR_NAME = "dw_outbox_health"
OUTBOX_HEALTH_KEY = dg.AssetKey(["dw", "outbox_health"])

outbox_health_asset = dg.AssetSpec(
    key=OUTBOX_HEALTH_KEY,
    group_name="operations",
    description=(
        "dw_ingestion_outbox at a glance, observed by the dw_outbox_health sensor: jobs per "
        "status, the age of the oldest PENDING job, and the latest failures with their runs."
    ),
    kinds={"postgres"},
)


def health_metadata(health: OutboxHealth) -> dict[str, object]:
    metadata: dict[str, object] = {
        status.lower(): dg.MetadataValue.int(count) for status, count in health.counts.items()
    }
    age = health.oldest_pending_age_seconds
    metadata["oldest_pending_age_seconds"] = dg.MetadataValue.float(
        round(age, 1) if age is not None else 0.0
    )
    rows = [
        (job.job_id, job.dataset, job.tenant_id, job.updated_at.isoformat(), job.last_error)
        for job in health.recent_failures
    ]
    metadata["latest_failures"] = dg.MetadataValue.md(
        markdown_table(["job_id", "dataset", "tenant", "failed_at", "last_error"], rows)
        if rows
        else "No FAILED jobs."
    )
    for index, job in enumerate(health.recent_failures, start=1):
        if job.dagster_run_id:
            metadata[f"failure_{index}_run"] = dg.MetadataValue.dagster_run(job.dagster_run_id)
    return metadata


def health_sensor(settings: Settings, contracts: ContractRegistry) -> dg.SensorDefinition:
    watched: Sequence[DatasetContract] = [c for c in contracts if c.freshness_max_age_hours]

    @dg.sensor(
        name=HEALTH_SENSOR_NAME,
        minimum_interval_seconds=settings.health_interval_seconds,
        default_status=dg.DefaultSensorStatus[settings.sensor_default_status],
        description=(
            "Records the outbox's state as an observation of dw/outbox_health and evaluates "
            "the freshness checks of storage assets; launches no runs."
        ),
    )
    def dw_outbox_health(context: dg.SensorEvaluationContext, dw: DwResource) -> dg.SensorResult:
        health = dw.queue.health()
        events: list = [
            dg.AssetObservation(asset_key=OUTBOX_HEALTH_KEY, metadata=health_metadata(health))
        ]
        for contract in watched:
            result = freshness_result(dw, contract)
            events.append(
                dg.AssetCheckEvaluation(
                    asset_key=result.asset_key,
                    check_name=result.check_name,
                    passed=result.passed,
                    metadata=result.metadata,
                    severity=result.severity,
                    description=result.description,
                )
            )
        context.log.info(
            "outbox: "
            + ", ".join(f"{s}={n}" for s, n in health.counts.items())
            + f"; freshness evaluated for {len(watched)} dataset(s)"
        )
        return dg.SensorResult(asset_events=events)

    return dw_outbox_health
