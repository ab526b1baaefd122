"""The code location loads and carries the names other parts rely on."""

import dagster as dg
import pytest

from dw_pipelines.definitions import build_definitions
from dw_pipelines.settings import Settings


@pytest.fixture
def defs(tmp_path) -> dg.Definitions:
    return build_definitions(Settings.from_env({"DW_HOME": str(tmp_path)}))


def test_module_level_definitions_load():
    from dw_pipelines.definitions import defs as module_defs

    assert module_defs.resolve_job_def("dw_ingestion_job") is not None


def test_assets_per_dataset_and_one_ingestion_job(defs):
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {
        "staging/orders",
        "storage/orders",
        "staging/customers",
        "storage/customers",
        "dw/outbox_health",
    }
    job = defs.resolve_job_def("dw_ingestion_job")
    assert job.executor_def.name == "in_process"
    assert job.partitions_def is not None
    assert job.partitions_def.has_partition_key("2026-11-24")
    graph = defs.resolve_asset_graph()
    storage = graph.get(dg.AssetKey(["storage", "orders"]))
    assert dg.AssetKey(["staging", "orders"]) in storage.parent_keys
    assert storage.owners == ["data-platform@example.com"]
    assert storage.group_name == "orders"


def test_the_outbox_sensor_is_named_and_on_by_default(defs):
    sensor = defs.resolve_sensor_def("dw_outbox_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 15
    assert sensor.job_name == "dw_ingestion_job"


def test_sensor_settings_come_from_the_environment(tmp_path):
    settings = Settings.from_env(
        {
            "DW_HOME": str(tmp_path),
            "DW_SENSOR_INTERVAL_SECONDS": "42",
            "DW_SENSOR_DEFAULT_STATUS": "stopped",
        }
    )
    sensor = build_definitions(settings).resolve_sensor_def("dw_outbox_sensor")
    assert sensor.minimum_interval_seconds == 42
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_extra_dataset_contracts_become_assets(tmp_path):
    extra = tmp_path / "contracts"
    extra.mkdir()
    (extra / "invoices.yaml").write_text(
        "name: invoices\nwrite_mode: append\nprimary_key: []\n"
        "columns:\n  - {name: invoice_id, type: int64}\n"
    )
    settings = Settings.from_env({"DW_HOME": str(tmp_path), "DW_DATASETS_PATH": str(extra)})
    keys = build_definitions(settings).resolve_asset_graph().get_all_asset_keys()
    assert dg.AssetKey(["storage", "invoices"]) in keys


def test_database_urls_from_the_environment_stay_env_vars(tmp_path):
    settings = Settings.from_env(
        {"DW_HOME": str(tmp_path), "DW_DATABASE_URL": "postgresql://u:secret@db/dw"}
    )
    resource = build_definitions(settings).resources["dw"]
    assert isinstance(resource.database_url, dg.EnvVar)
    assert resource.database_url.env_var_name == "DW_DATABASE_URL"
