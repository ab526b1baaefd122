"""Full ingestion runs of `dw_ingestion_job` (in-process, a real Dagster instance) against a
PostgreSQL outbox and warehouse: write modes, idempotent re-runs, validation failures, audit.
"""

import datetime as dt
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR, TAG_JOB_ID

UTC = dt.UTC


@pytest.fixture
def env(pg_url: str, dw_env):
    settings = dw_env(pg_url, DW_RETRY_MAX_RETRIES=0)
    service = build_service(settings)
    job = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    with dg.instance_for_test() as instance:
        yield settings, service, job, instance
    dispose(service)


def enqueue(service, dataset: str, source: Path | str, date: str = "2026-11-24", **extra):
    command = {"dataset": dataset, "source_uri": str(source), "business_date": date, **extra}
    job = service.queue.enqueue(command).job
    service.queue.claim_due(100)  # as the sensor would: PENDING -> SENT
    return job


def run(job_def, instance, outbox_job, tags=None) -> dg.ExecuteInProcessResult:
    dataset = outbox_job.dataset
    return job_def.execute_in_process(
        instance=instance,
        partition_key=outbox_job.business_date.isoformat(),
        tags={TAG_JOB_ID: outbox_job.job_id, **(tags or {})},
        asset_selection=[dg.AssetKey(["staging", dataset]), dg.AssetKey(["storage", dataset])],
        raise_on_error=False,
    )


def storage(service, dataset: str, order_by: str) -> list[dict]:
    with service.warehouse.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(f"SELECT * FROM dw_storage.{dataset} ORDER BY {order_by}")
            ).mappings()
        ]


def without_loaded_at(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "_dw_loaded_at"} for r in rows]


def test_append_job_loads_exact_rows_with_lineage_and_metadata(env):
    _, service, job_def, instance = env
    job = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv", tenant_id="acme")

    result = run(job_def, instance, job)

    assert result.success
    row = service.queue.get(job.job_id)
    assert (row.status, row.rows_loaded, row.attempts) == ("COMPLETED", 6, 1)
    assert row.dagster_run_id == result.run_id
    rows = storage(service, "orders", "order_id")
    assert [r["order_id"] for r in rows] == [1001, 1002, 1003, 1004, 1005, 1006]
    first, second, third, fourth = rows[:4]
    assert first["amount"] == Decimal("19.99") and first["currency"] == "EUR"
    assert first["note"] is None  # unquoted empty field -> NULL
    assert third["note"] == ""  # quoted empty string stays a string
    assert second["note"] == "gift wrap, red ribbon" and second["is_gift"] is True
    assert fourth["is_gift"] is None and fourth["note"] == "Größe: XL"
    assert third["created_at"] == dt.datetime(2026, 11, 24, 9, 45, tzinfo=UTC)  # +01:00 -> UTC
    assert fourth["created_at"] == dt.datetime(2026, 11, 24, 11, 0, tzinfo=UTC)  # naive = UTC
    assert rows[5]["note"] == 'said "thanks"'
    assert {r["_dw_job_id"] for r in rows} == {job.job_id}
    assert {r["_dw_tenant_id"] for r in rows} == {"acme"}
    assert all(r["_dw_loaded_at"].tzinfo is not None for r in rows)
    # Staging is scratch: emptied once the job is COMPLETED.
    assert service.warehouse.staged_rows(service.contracts.get("orders"), job.job_id) == 0

    materializations = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert set(materializations) == {"staging/orders", "storage/orders"}
    staged = materializations["staging/orders"]
    assert staged["rows"].value == 6
    assert staged["job_id"].value == job.job_id
    assert staged["source"].value.endswith("orders_2026-11-24.csv")
    assert staged["duration_seconds"].value >= 0
    assert materializations["storage/orders"]["rows"].value == 6
    assert materializations["storage/orders"]["write_mode"].value == "append"
    # Log lines start with the same searchable fields.
    fields = f"job_id={job.job_id} dataset=orders tenant=acme run_id={result.run_id}"
    messages = [record.user_message for record in instance.all_logs(result.run_id)]
    tagged = [message for message in messages if message.startswith(fields)]
    assert len(tagged) == 3, messages  # staging, staged, promoted
    assert "staged 6 rows" in tagged[1] and "promoted 6 rows" in tagged[2]


def test_rerunning_a_job_leaves_storage_identical(env):
    _, service, job_def, instance = env
    job = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv")
    other = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-25.jsonl", "2026-11-25")
    assert run(job_def, instance, job).success
    assert run(job_def, instance, other).success
    before = storage(service, "orders", "order_id")

    again = run(job_def, instance, job)

    assert again.success
    after = storage(service, "orders", "order_id")
    assert len(after) == 10
    assert without_loaded_at(after) == without_loaded_at(before)
    row = service.queue.get(job.job_id)
    assert (row.status, row.attempts, row.dagster_run_id) == ("COMPLETED", 2, again.run_id)


def test_merge_upserts_by_key_and_keeps_tenants_apart(env):
    _, service, job_def, instance = env
    first = enqueue(service, "customers", SAMPLES_DIR / "customers.csv", tenant_id="a")
    assert run(job_def, instance, first).success
    other_tenant = enqueue(service, "customers", SAMPLES_DIR / "customers.csv", tenant_id="b")
    assert run(job_def, instance, other_tenant).success
    update = enqueue(
        service,
        "customers",
        SAMPLES_DIR / "customers_2026-11-25.parquet",
        "2026-11-25",
        tenant_id="a",
    )

    result = run(job_def, instance, update)

    assert result.success
    rows = storage(service, "customers", "_dw_tenant_id, customer_id")
    tenant_a = {r["customer_id"]: r for r in rows if r["_dw_tenant_id"] == "a"}
    tenant_b = {r["customer_id"]: r for r in rows if r["_dw_tenant_id"] == "b"}
    assert sorted(tenant_a) == [1, 2, 3, 4, 5, 6]  # 2 and 4 updated, 6 inserted
    assert sorted(tenant_b) == [1, 2, 3, 4, 5]  # untouched by tenant a's update
    assert tenant_a[2]["name"] == "Grace Brewster Hopper"
    assert tenant_a[2]["lifetime_value"] == Decimal("362.00")
    assert tenant_a[2]["_dw_job_id"] == update.job_id
    assert tenant_a[4]["email"] == "linus@example.org" and tenant_a[4]["is_active"] is True
    assert tenant_a[1]["_dw_job_id"] == first.job_id  # not in the update file
    assert tenant_a[6]["lifetime_value"] is None
    assert tenant_b[2]["name"] == "Grace Hopper"
    assert tenant_a[3]["name"] == "김민준"
    assert service.queue.get(update.job_id).rows_loaded == 3

    # Re-running the update is idempotent.
    before = without_loaded_at(storage(service, "customers", "_dw_tenant_id, customer_id"))
    assert run(job_def, instance, update).success
    after = without_loaded_at(storage(service, "customers", "_dw_tenant_id, customer_id"))
    assert after == before


def test_a_validation_error_fails_the_job_cleanly_and_writes_nothing(env):
    _, service, job_def, instance = env
    good = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv")
    assert run(job_def, instance, good).success
    bad = enqueue(service, "orders", SAMPLES_DIR / "orders_bad.csv", "2026-11-25")

    result = run(job_def, instance, bad)

    assert not result.success
    row = service.queue.get(bad.job_id)
    assert row.status == "FAILED"
    assert row.last_error == (
        "orders_bad.csv, line 3, row 2, column 'amount': value 'twelve' is not a valid "
        "decimal(12,2)"
    )
    contract = service.contracts.get("orders")
    assert service.warehouse.storage_rows(contract, bad.job_id) == 0
    assert service.warehouse.staged_rows(contract, bad.job_id) == 0
    assert service.warehouse.storage_rows(contract) == 6  # the other job is unaffected
    assert service.queue.get(good.job_id).status == "COMPLETED"
    # A permanent error is not retried, and storage was never attempted.
    step_events = {e.step_key: e for e in result.all_events if e.is_step_failure}
    assert list(step_events) == ["staging__orders"]
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_duplicate_primary_key_in_file_names_both_rows(env, landing_dir: Path):
    _, service, job_def, instance = env
    source = landing_dir / "dupes.csv"
    header = (SAMPLES_DIR / "orders_2026-11-24.csv").read_text().splitlines()[0]
    body = [
        "1,1,2026-11-24,1.00,EUR,paid,false,2026-11-24T08:00:00Z,",
        "2,1,2026-11-24,2.00,EUR,paid,false,2026-11-24T08:00:00Z,",
        "1,1,2026-11-24,3.00,EUR,paid,false,2026-11-24T08:00:00Z,",
    ]
    source.write_text("\n".join([header, *body]) + "\n")
    job = enqueue(service, "orders", source)

    assert not run(job_def, instance, job).success

    row = service.queue.get(job.job_id)
    assert row.status == "FAILED"
    assert "duplicate primary key (order_id=1) on rows 1 and 3 (lines 2 and 4)" in row.last_error
    assert row.last_error.startswith("dupes.csv, line 2, row 1, column 'order_id'")
    assert service.warehouse.storage_rows(service.contracts.get("orders"), job.job_id) == 0


def test_audit_trail_of_a_good_and_a_bad_job(env):
    _, service, job_def, instance = env
    good = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv")
    bad = enqueue(service, "orders", SAMPLES_DIR / "orders_bad.csv", "2026-11-25")
    good_run = run(job_def, instance, good)
    bad_run = run(job_def, instance, bad)

    def trail(job_id):
        return [
            (e.event, e.from_status, e.to_status, e.attempt, e.run_id)
            for e in service.queue.audit_trail(job_id)
        ]

    assert trail(good.job_id) == [
        ("ENQUEUED", None, "PENDING", 0, None),
        ("DISPATCHED", "PENDING", "SENT", 0, None),
        ("STARTED", "SENT", "PROCESSING", 1, good_run.run_id),
        ("STAGED", "PROCESSING", "PROCESSING", 1, good_run.run_id),
        ("PROMOTED", "PROCESSING", "PROCESSING", 1, good_run.run_id),
        ("COMPLETED", "PROCESSING", "COMPLETED", 1, good_run.run_id),
    ]
    assert trail(bad.job_id) == [
        ("ENQUEUED", None, "PENDING", 0, None),
        ("DISPATCHED", "PENDING", "SENT", 0, None),
        ("STARTED", "SENT", "PROCESSING", 1, bad_run.run_id),
        ("FAILED", "PROCESSING", "FAILED", 1, bad_run.run_id),
    ]
    failed = service.queue.audit_trail(bad.job_id)[-1]
    assert "line 3" in failed.details["error"]
    staged = service.queue.audit_trail(good.job_id)[3]
    assert staged.details["rows"] == 6 and staged.details["format"] == "csv"


def test_promoting_again_without_staged_rows_is_refused_and_storage_kept(env):
    _, service, job_def, instance = env
    job = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-24.csv")
    assert run(job_def, instance, job).success

    # Materialize only storage/orders for the job: staging was discarded on completion, so an
    # append promotion would otherwise delete the job's rows.
    result = job_def.execute_in_process(
        instance=instance,
        partition_key=job.business_date.isoformat(),
        tags={TAG_JOB_ID: job.job_id},
        asset_selection=[dg.AssetKey(["storage", "orders"])],
        raise_on_error=False,
    )

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "no staged rows to promote" in failure.step_failure_data.error.message
    assert service.warehouse.storage_rows(service.contracts.get("orders"), job.job_id) == 6
    # The job's data is intact, so its row stays COMPLETED.
    assert service.queue.get(job.job_id).status == "COMPLETED"


def test_an_untagged_run_of_an_empty_partition_loads_nothing(env):
    _, service, job_def, instance = env
    result = job_def.execute_in_process(
        instance=instance,
        partition_key="2026-11-24",
        asset_selection=[dg.AssetKey(["staging", "orders"]), dg.AssetKey(["storage", "orders"])],
        raise_on_error=False,
    )
    assert result.success
    staged = result.asset_materializations_for_node("staging__orders")[0].metadata
    assert staged["jobs"].value == 0 and staged["rows"].value == 0
    assert service.warehouse.storage_rows(service.contracts.get("orders")) == 0


def test_a_run_of_another_datasets_assets_does_nothing(env):
    _, service, job_def, instance = env
    job = enqueue(service, "customers", SAMPLES_DIR / "customers.csv")
    result = job_def.execute_in_process(
        instance=instance,
        partition_key=job.business_date.isoformat(),
        tags={TAG_JOB_ID: job.job_id},
        asset_selection=[dg.AssetKey(["staging", "orders"]), dg.AssetKey(["storage", "orders"])],
        raise_on_error=False,
    )
    assert result.success
    assert result.get_asset_materialization_events() == []
    assert service.warehouse.storage_rows(service.contracts.get("orders")) == 0
    assert service.queue.get(job.job_id).status == "SENT"  # untouched: the run never held it


def test_a_whole_job_run_loads_only_the_tagged_jobs_dataset(env):
    """What `dagster job launch` does: every asset of the job, for one tagged outbox job."""
    _, service, job_def, instance = env
    job = enqueue(service, "customers", SAMPLES_DIR / "customers.csv")
    result = job_def.execute_in_process(
        instance=instance,
        partition_key=job.business_date.isoformat(),
        tags={TAG_JOB_ID: job.job_id},
    )
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"staging/customers", "storage/customers"}
    assert service.queue.get(job.job_id).status == "COMPLETED"
    assert service.warehouse.storage_rows(service.contracts.get("orders")) == 0
