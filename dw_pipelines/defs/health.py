"""The queue's state in the UI, without SQL: the `dw/outbox_health` asset, its check that every
contract file is usable, and the freshness checks.

`dw_outbox_health` (a sensor, so it launches no runs) reads the outbox every
`DW_HEALTH_INTERVAL_SECONDS` and records:

* an observation of `dw/outbox_health` with the rows per status, the age of the oldest PENDING
  row and the latest failures (each linked to its run), so the asset's page charts the queue;
* the `contracts_valid` check of `dw/outbox_health`: fails (naming each refused file, field and
  reason) while a contract file in the shipped folder or `DW_DATASETS_PATH` cannot be used;
* the `freshness` check of every `storage/<dataset>` whose contract sets `freshness`.

Refused contract files are also listed in the asset's definition metadata when the code location
loads, so they show before the sensor's first tick. The checks are declared on their assets, so
an operator can also run one from the UI ("Execute" on the check).
"""

from collections.abc import Callable, Sequence

import dagster as dg

from dw_pipelines.core.contracts import ContractRegistry, DatasetContract
from dw_pipelines.core.outbox import OutboxHealth
from dw_pipelines.core.quality import FRESHNESS, markdown_table
from dw_pipelines.defs.assets import describe, freshness_result, storage_key
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.services import load_contracts
from dw_pipelines.settings import Settings

HEALTH_SENSOR_NAME = "dw_outbox_health"
OUTBOX_HEALTH_KEY = dg.AssetKey(["dw", "outbox_health"])
CONTRACTS_CHECK = "contracts_valid"


def outbox_health_asset(contracts: ContractRegistry) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=OUTBOX_HEALTH_KEY,
        group_name="operations",
        description=(
            "dw_ingestion_outbox at a glance, observed by the dw_outbox_health sensor: jobs per "
            "status, the age of the oldest PENDING job, and the latest failures with their runs. "
            f"Its {CONTRACTS_CHECK} check fails while a dataset contract file cannot be used."
        ),
        kinds={"postgres"},
        metadata={"contract_errors": dg.MetadataValue.md(contract_problems_markdown(contracts))},
    )


def contract_problems_markdown(contracts: ContractRegistry) -> str:
    rows = [
        (p.dataset or "", str(p.path or ""), field or "(file)", reason)
        for p in contracts.problems
        for field, reason in p.problems
    ]
    rows += [("", str(d), "(folder)", "does not exist") for d in contracts.missing_directories]
    if not rows:
        return "Every dataset contract file is valid."
    return markdown_table(["dataset", "file", "field", "reason"], rows, width=None)


def contracts_result(contracts: ContractRegistry) -> dg.AssetCheckResult:
    """The verdict of `contracts_valid` on the given contracts."""
    broken = contracts.broken_datasets
    missing = [str(d) for d in contracts.missing_directories]
    passed = not contracts.problems and not missing
    if passed:
        description = f"All {len(contracts)} dataset contracts are valid."
    else:
        parts = []
        if broken:
            parts.append(
                f"{len(contracts.problems)} contract file(s) refused, dataset(s) "
                + ", ".join(broken)
                + " cannot be loaded (their PENDING jobs wait)"
            )
        if missing:
            parts.append("contract folder(s) missing: " + ", ".join(missing))
        description = "; ".join(parts) + ". Details: `dw-pipelines datasets check`."
    return dg.AssetCheckResult(
        asset_key=OUTBOX_HEALTH_KEY,
        check_name=CONTRACTS_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "result": description,
            "broken_datasets": ", ".join(broken),
            "valid_datasets": dg.MetadataValue.int(len(contracts)),
            "errors": dg.MetadataValue.md(contract_problems_markdown(contracts)),
        },
    )


@dg.asset_check(
    asset=OUTBOX_HEALTH_KEY,
    name=CONTRACTS_CHECK,
    description=(
        "Every dataset contract file (shipped and DW_DATASETS_PATH) can be used. Evaluated by "
        "the dw_outbox_health sensor, and on demand."
    ),
)
def contracts_check(dw: DwResource) -> dg.AssetCheckResult:
    return contracts_result(load_contracts(dw.settings()))


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


def _evaluated(
    key: dg.AssetKey, name: str, dw: DwResource, evaluate: Callable[[], dg.AssetCheckResult]
) -> dg.AssetCheckResult:
    """The check's verdict, or a failed one saying why it could not be reached."""
    try:
        return evaluate()
    except Exception as exc:  # e.g. the warehouse is unreachable right now
        reason = f"could not run: {dw.service.redact(describe(exc))}"
        return dg.AssetCheckResult(
            asset_key=key,
            check_name=name,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=reason,
            metadata={"result": reason},
        )


def health_sensor(settings: Settings, contracts: ContractRegistry) -> dg.SensorDefinition:
    watched: Sequence[DatasetContract] = [c for c in contracts if c.freshness_max_age_hours]

    @dg.sensor(
        name=HEALTH_SENSOR_NAME,
        minimum_interval_seconds=settings.health_interval_seconds,
        default_status=dg.DefaultSensorStatus[settings.sensor_default_status],
        description=(
            "Records the outbox's state as an observation of dw/outbox_health and evaluates "
            "its contracts_valid check and the freshness checks of storage assets; launches "
            "no runs."
        ),
    )
    def dw_outbox_health(context: dg.SensorEvaluationContext, dw: DwResource) -> dg.SensorResult:
        health = dw.queue.health()
        events: list = [
            dg.AssetObservation(asset_key=OUTBOX_HEALTH_KEY, metadata=health_metadata(health))
        ]
        # The contract files as they are now (what enqueue and runs read), not as the code
        # location loaded them. Each check on its own: one that cannot run must not cost the
        # others their evaluation.
        checks = [
            _evaluated(
                OUTBOX_HEALTH_KEY,
                CONTRACTS_CHECK,
                dw,
                lambda: contracts_result(load_contracts(dw.settings())),
            )
        ]
        checks += [
            _evaluated(
                storage_key(contract.name),
                FRESHNESS,
                dw,
                lambda contract=contract: freshness_result(dw, contract),
            )
            for contract in watched
        ]
        for result in checks:
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
            + f"; freshness evaluated for {len(watched)} dataset(s); "
            + checks[0].description
        )
        return dg.SensorResult(asset_events=events)

    return dw_outbox_health
