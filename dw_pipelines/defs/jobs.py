"""`dw_ingestion_job`: one asset job over every dataset's staging and storage assets.

Each run selects the two assets of its dataset. It uses the in-process executor: the steps are
I/O-bound and sequential, and a process per step would cost seconds per run for nothing.
"""

from collections.abc import Sequence

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from dw_pipelines.defs.partitions import business_date_partitions
from dw_pipelines.settings import INGESTION_JOB_NAME


def ingestion_job(assets: Sequence[dg.AssetsDefinition]) -> "UnresolvedAssetJobDefinition":
    return dg.define_asset_job(
        name=INGESTION_JOB_NAME,
        selection=dg.AssetSelection.assets(*assets),
        partitions_def=business_date_partitions,
        executor_def=dg.in_process_executor,
        description="Load one outbox job: source file -> staging/<dataset> -> storage/<dataset>.",
    )
