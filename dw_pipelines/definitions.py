"""The `dw_pipelines` code location: assembles `Definitions` and nothing else.

Contracts are read when the code location loads (each dataset becomes two assets), so adding a
dataset file to `DW_DATASETS_PATH` takes effect on the next reload of the code location. A
contract file that cannot be used leaves out its own dataset only: the location loads with every
other one, logs a warning per refused file, and the `contracts_valid` check of
`dw/outbox_health` shows it in the UI.
"""

import logging

import dagster as dg
import sqlalchemy as sa

from dw_pipelines.core import logs
from dw_pipelines.defs.assets import dataset_assets
from dw_pipelines.defs.health import contracts_check, health_sensor, outbox_health_asset
from dw_pipelines.defs.jobs import ingestion_job
from dw_pipelines.defs.log_output import LOGGER_KEY, json_lines_logger
from dw_pipelines.defs.partitions import business_date_partitions
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.defs.sensors import outbox_sensor, reconciler_sensor
from dw_pipelines.services import load_contracts
from dw_pipelines.settings import Settings

_log = logging.getLogger("dw_pipelines")


def build_definitions(settings: Settings) -> dg.Definitions:
    json_logs = settings.log_format == "json"
    # The code server's and the run's own loggers (contract warnings, warehouse notes).
    logs.configure(settings.log_format)
    contracts = load_contracts(settings)
    for problem in contracts.problems:
        _log.warning("dataset '%s' left out of the code location: %s", problem.dataset, problem)
    for folder in contracts.missing_directories:
        _log.warning("dataset contract folder %s does not exist (DW_DATASETS_PATH)", folder)
    backend = sa.make_url(settings.warehouse_url).get_backend_name()
    warehouse_kind = {"postgresql": "postgres"}.get(backend, backend)  # the UI's icon names
    assets = [
        asset
        for contract in contracts
        for asset in dataset_assets(
            contract, business_date_partitions, settings.retry_policy, warehouse_kind
        )
    ]
    job = ingestion_job(assets, settings.run_policy_tags, json_logs=json_logs)
    # URLs taken from the environment stay EnvVars: resolved at run time, hidden in the UI.
    resource = DwResource(
        database_url=dg.EnvVar("DW_DATABASE_URL") if settings.database_url_from_env else None,
        warehouse_url=dg.EnvVar("DW_WAREHOUSE_URL") if settings.warehouse_url_from_env else None,
    )
    return dg.Definitions(
        assets=[*assets, outbox_health_asset(contracts)],
        asset_checks=[contracts_check],
        jobs=[job],
        sensors=[
            outbox_sensor(job, settings, contracts),
            reconciler_sensor(settings),
            health_sensor(settings, contracts),
        ],
        resources={"dw": resource},
        loggers={LOGGER_KEY: json_lines_logger} if json_logs else None,
    )


defs = build_definitions(Settings.from_env())
