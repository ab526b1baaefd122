"""`dw_ingestion_job`: one asset job over every dataset's staging and storage assets.

Each run selects the two assets of its dataset. It uses the in-process executor: the steps are
I/O-bound and sequential, and a process per step would cost seconds per run for nothing.
"""

from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from dw_pipelines.defs.log_output import JSON_LOGGING_CONFIG
from dw_pipelines.defs.partitions import business_date_partitions
from dw_pipelines.settings import INGESTION_JOB_NAME


def ingestion_job(
    assets: Sequence[dg.AssetsDefinition],
    run_policy_tags: Mapping[str, str],
    json_logs: bool = False,
) -> "UnresolvedAssetJobDefinition":
    """`run_policy_tags` (the run cap and retry rule) go on the job itself: Dagster adds a job's
    tags to the runs a sensor requests, to `dagster job launch` runs, to launches from the UI and
    to the job's partition backfills (dagster/_daemon/sensor.py `_create_sensor_run`,
    dagster/_cli/job.py, dagster/_core/execution/job_backfill.py `create_backfill_run`). Not to
    backfills launched from the asset graph, which take only the tags given in the dialog.

    `json_logs` (DW_LOG_FORMAT=json): the job's run config turns on `json_lines_logger` (the
    Definitions carry it under Dagster's console logger's name), so a run writes JSON lines."""
    return dg.define_asset_job(
        name=INGESTION_JOB_NAME,
        selection=dg.AssetSelection.assets(*assets),
        partitions_def=business_date_partitions,
        executor_def=dg.in_process_executor,
        tags=dict(run_policy_tags),
        config=JSON_LOGGING_CONFIG if json_logs else None,
        description="Load one outbox job: source file -> staging/<dataset> -> storage/<dataset>.",
    )
