"""Asset checks from the contracts, and what the UI shows about assets and the queue.

The checks re-read what PostgreSQL holds; to prove they can fail, these tests make the database
misbehave the way a faulty load path would (a trigger that drops a staged row, rows tampered
with after promotion), then look at the verdicts, the outbox row and storage.
"""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from dw_pipelines.core import quality
from dw_pipelines.core.quality import DataQuality, JobRows
from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR
from dw_pipelines_tests.test_ingestion_runs import enqueue, run

ORDERS_CSV = SAMPLES_DIR / "orders_2026-11-24.csv"
CUSTOMERS_CSV = SAMPLES_DIR / "customers.csv"


@pytest.fixture
def env(pg_url: str, dw_env):
    settings = dw_env(pg_url, DW_RETRY_MAX_RETRIES=0)
    service = build_service(settings)
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        yield service, defs, instance
    dispose(service)


def check_verdicts(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
        for e in result.get_asset_check_evaluations()
    }


def test_a_run_evaluates_every_contract_check_and_they_pass(env):
    service, defs, instance = env
    job = enqueue(service, "orders", ORDERS_CSV)
    result = run(defs.resolve_job_def("dw_ingestion_job"), instance, job)
    assert result.success
    assert check_verdicts(result) == {
        f"{asset}/orders:{name}": True
        for asset in ("staging", "storage")
        for name in ("rows_match_source", "primary_key_unique", "required_columns_not_null")
    } | {"storage/orders:freshness": True}

    staged = result.asset_materializations_for_node("staging__orders")[0].metadata
    assert staged["rows"].value == 6 and staged["bytes"].value == ORDERS_CSV.stat().st_size
    assert staged["outbox_job"].value == f"dw-pipelines outbox show {job.job_id}"
    preview = staged["preview"].value.splitlines()
    assert preview[0].startswith("| order_id | customer_id |")
    assert len(preview) == 2 + 5  # header, rule, the first five rows
    first_order = ORDERS_CSV.read_text().splitlines()[1].split(",")[0]
    assert preview[2].startswith(f"| {first_order} |")


def test_a_row_lost_in_staging_fails_the_blocking_check_and_blocks_promotion(env):
    """A staging load that silently loses a row (here a trigger swallows it, as a faulty load
    path could) is caught by `rows_match_source`: the job fails and storage stays empty."""
    service, defs, instance = env
    contract = service.contracts.get("orders")
    service.warehouse.ensure_tables(contract)
    first_order = int(ORDERS_CSV.read_text().splitlines()[1].split(",")[0])
    with service.warehouse.engine.begin() as conn:
        conn.execute(
            sa.text(f"""
            CREATE FUNCTION dw_staging.swallow_row() RETURNS trigger AS $$
            BEGIN
              IF NEW.order_id = {first_order} THEN RETURN NULL; END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER swallow BEFORE INSERT ON dw_staging.orders
              FOR EACH ROW EXECUTE FUNCTION dw_staging.swallow_row();
            """)
        )
    job = enqueue(service, "orders", ORDERS_CSV)
    result = run(defs.resolve_job_def("dw_ingestion_job"), instance, job)

    assert not result.success
    verdicts = check_verdicts(result)
    assert verdicts["staging/orders:rows_match_source"] is False
    assert not any(key.startswith("storage/") for key in verdicts)  # storage never ran
    failed = service.queue.get(job.job_id)
    assert failed.status == "FAILED"
    assert failed.last_error == (
        f"staging check rows_match_source failed: job {job.job_id}: 5 rows held, 6 read"
    )
    assert service.warehouse.storage_rows(contract) == 0
    events = [e.event for e in service.queue.audit_trail(job.job_id)]
    assert "PROMOTED" not in events and events[-1] == "FAILED"


def test_load_check_verdicts_are_per_partition_and_target_the_runs_materialization(env):
    """What the UI's per-partition check status rests on: each load check's evaluation carries
    the run's business date and points at the materialization the same run recorded for that
    partition, and it settles the execution Dagster planned (no stray planned/skipped one)."""
    service, defs, instance = env
    job_def = defs.resolve_job_def("dw_ingestion_job")
    contract = service.contracts.get("orders")
    load_checks = [
        dg.AssetCheckKey(dg.AssetKey([asset, "orders"]), name)
        for asset in ("staging", "storage")
        for name in quality.check_names(contract)
    ]
    runs = {}
    for source, day in (
        (ORDERS_CSV, "2026-11-24"),
        (SAMPLES_DIR / "orders_2026-11-25.jsonl", "2026-11-25"),
    ):
        job = enqueue(service, "orders", source, day)
        result = run(job_def, instance, job)
        assert result.success
        runs[day] = result.run_id
        evaluations = {e.asset_check_key: e for e in result.get_asset_check_evaluations()}
        for key in load_checks:
            materialization = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key.asset_key, asset_partitions=[day]), limit=1
            ).records[0]
            assert materialization.run_id == result.run_id
            evaluation = evaluations[key]
            assert (evaluation.passed, evaluation.partition) == (True, day)
            assert evaluation.blocking is (key.asset_key.path[0] == "staging")
            target = evaluation.target_materialization_data
            assert (target.run_id, target.storage_id) == (result.run_id, materialization.storage_id)
            executions = instance.event_log_storage.get_asset_check_execution_history(key, 10)
            assert [
                (x.run_id, x.partition, x.status.value)
                for x in executions
                if x.run_id == result.run_id
            ] == [(result.run_id, day, "SUCCEEDED")]
    infos = instance.event_log_storage.get_asset_check_partition_info(load_checks)
    status = {(i.check_key, i.partition_key): i for i in infos}
    assert set(status) == {(key, day) for key in load_checks for day in runs}
    for (key, day), info in status.items():
        assert info.latest_execution_status.value == "SUCCEEDED", (key, day)
        assert info.is_current and info.latest_planned_run_id == runs[day], (key, day)


def test_storage_checks_take_the_load_time_from_the_promotion_or_look_it_up(env):
    """The storage step passes the promotion's `_dw_loaded_at` (one query fewer); without it
    the checks find it in `_dw_loads`. Either way they judge the same rows: that load's."""
    service, defs, instance = env
    contract = service.contracts.get("orders")
    job = enqueue(service, "orders", ORDERS_CSV)
    assert run(defs.resolve_job_def("dw_ingestion_job"), instance, job).success
    with service.warehouse.engine.connect() as conn:
        loaded_at = conn.execute(
            sa.text("SELECT loaded_at FROM dw_storage._dw_loads WHERE job_id = :j"),
            {"j": job.job_id},
        ).scalar_one()
    checks = DataQuality(service.warehouse)

    def outcomes(given):
        found = checks.check_storage(contract, [JobRows(job.job_id, job.tenant_id, 6, given)])
        return {o.name: (o.passed, o.description) for o in found}

    assert outcomes(loaded_at) == outcomes(None)
    assert all(passed for passed, _ in outcomes(loaded_at).values())
    # Another load time selects other rows (none here): the value given is the one used.
    stale = outcomes(loaded_at - dt.timedelta(days=1))
    assert stale[quality.ROWS_MATCH_SOURCE] == (False, f"job {job.job_id}: 0 rows held, 6 read")


def test_storage_checks_catch_duplicate_keys_and_nulls(env):
    service, defs, instance = env
    contract = service.contracts.get("orders")
    job = enqueue(service, "orders", ORDERS_CSV)
    assert run(defs.resolve_job_def("dw_ingestion_job"), instance, job).success
    checks = DataQuality(service.warehouse)
    jobs = [JobRows(job.job_id, job.tenant_id, 6)]
    assert all(o.passed for o in checks.check_storage(contract, jobs))

    # Tamper with storage as a broken promotion could: a second copy of one row, a NULL where
    # the contract forbids it (the column's constraint dropped first, as a drifted table).
    with service.warehouse.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO dw_storage.orders SELECT * FROM dw_storage.orders "
                "WHERE _dw_job_id = :j ORDER BY order_id LIMIT 1"
            ),
            {"j": job.job_id},
        )
        conn.execute(sa.text("ALTER TABLE dw_storage.orders ALTER COLUMN status DROP NOT NULL"))
        conn.execute(
            sa.text(
                "UPDATE dw_storage.orders SET status = NULL WHERE order_id = "
                "(SELECT max(order_id) FROM dw_storage.orders)"
            )
        )
    outcomes = {o.name: o for o in checks.check_storage(contract, jobs)}
    assert not outcomes[quality.ROWS_MATCH_SOURCE].passed
    assert outcomes[quality.ROWS_MATCH_SOURCE].description == (
        f"job {job.job_id}: 7 rows held, 6 read"
    )
    assert not outcomes[quality.PRIMARY_KEY_UNIQUE].passed
    assert "order_id" in outcomes[quality.PRIMARY_KEY_UNIQUE].description
    assert not outcomes[quality.REQUIRED_NOT_NULL].passed
    assert outcomes[quality.REQUIRED_NOT_NULL].description == (
        f"job {job.job_id}: NULLs {{'status': 1}}"
    )


def test_merge_storage_checks_find_the_files_rows_by_key(env):
    """In merge mode unchanged rows keep the job id of their last change, so the checks find a
    job's rows by (tenant, key); a second load of the same file still holds all its rows."""
    service, defs, instance = env
    job_def = defs.resolve_job_def("dw_ingestion_job")
    first = enqueue(service, "customers", CUSTOMERS_CSV, tenant_id="acme")
    assert run(job_def, instance, first).success
    second = enqueue(service, "customers", CUSTOMERS_CSV, tenant_id="acme", idempotency_key="2")
    result = run(job_def, instance, second)
    assert result.success
    rows = len(CUSTOMERS_CSV.read_text().strip().splitlines()) - 1
    verdicts = check_verdicts(result)
    assert verdicts["storage/customers:rows_match_source"] is True
    stored = result.asset_materializations_for_node("storage__customers")[0].metadata
    assert (stored["rows"].value, stored["inserted"].value) == (rows, 0)  # nothing changed


def test_freshness_follows_the_newest_promotion(env):
    service, defs, instance = env
    contract = service.contracts.get("orders")
    assert contract.freshness_max_age_hours == 26
    checks = DataQuality(service.warehouse)
    service.warehouse.ensure_tables(contract)
    now = dt.datetime.now(dt.UTC)
    never = checks.freshness(contract, now)
    assert (never.passed, never.description) == (False, "no orders job was ever promoted")

    job = enqueue(service, "orders", ORDERS_CSV)
    assert run(defs.resolve_job_def("dw_ingestion_job"), instance, job).success
    assert checks.freshness(contract, dt.datetime.now(dt.UTC)).passed
    late = checks.freshness(contract, dt.datetime.now(dt.UTC) + dt.timedelta(hours=27))
    assert not late.passed and late.description.endswith("(limit 26 h)")


def test_outbox_health_counts_statuses_oldest_pending_and_failures(env):
    service, defs, instance = env
    queue = service.queue
    good = enqueue(service, "orders", ORDERS_CSV)
    assert run(defs.resolve_job_def("dw_ingestion_job"), instance, good).success
    bad = enqueue(service, "orders", SAMPLES_DIR / "orders_bad.csv", idempotency_key="bad")
    assert not run(defs.resolve_job_def("dw_ingestion_job"), instance, bad).success
    pending = queue.enqueue(
        {"dataset": "orders", "source_uri": str(ORDERS_CSV), "idempotency_key": "later"}
    ).job

    health = queue.health()
    assert health.counts == {
        "PENDING": 1, "SENT": 0, "PROCESSING": 0, "COMPLETED": 1, "FAILED": 1,
    }  # fmt: skip
    assert health.oldest_pending_at == pending.created_at
    assert 0 <= health.oldest_pending_age_seconds < 60
    assert [j.job_id for j in health.recent_failures] == [bad.job_id]
    assert "column 'amount'" in health.recent_failures[0].last_error

    from dw_pipelines.defs.health import health_metadata

    metadata = health_metadata(health)
    assert metadata["failed"].value == 1 and metadata["pending"].value == 1
    assert bad.job_id in metadata["latest_failures"].value
    assert metadata["failure_1_run"].value == queue.get(bad.job_id).dagster_run_id


def test_assets_carry_column_schema_kinds_and_check_specs(env):
    _, defs, _ = env
    graph = defs.resolve_asset_graph()
    staging = graph.get(dg.AssetKey(["staging", "orders"]))
    storage = graph.get(dg.AssetKey(["storage", "orders"]))
    schema = storage.metadata["dagster/column_schema"]
    names = [c.name for c in schema.columns]
    assert names[:2] == ["order_id", "customer_id"]
    assert names[-3:] == ["_dw_job_id", "_dw_tenant_id", "_dw_loaded_at"]
    amount = next(c for c in schema.columns if c.name == "amount")
    assert (amount.type, amount.constraints.nullable) == ("decimal(12,2)", False)
    assert amount.description == "Order total in currency units"
    assert storage.metadata["dagster/table_name"] == "dw_storage.orders"
    assert staging.kinds == {"postgres", "csv", "parquet", "jsonl", "json"}
    assert storage.kinds == {"postgres", "table"}
    specs = {k.name: k for k in graph.get_check_keys_for_assets({staging.key, storage.key})}
    assert set(specs) == {
        "rows_match_source", "primary_key_unique", "required_columns_not_null", "freshness",
    }  # fmt: skip
    blocking = {
        (key.asset_key.to_user_string(), key.name): graph.get_check_spec(key).blocking
        for key in graph.get_check_keys_for_assets({staging.key, storage.key})
    }
    assert all(b for (asset, _), b in blocking.items() if asset == "staging/orders")
    assert not any(b for (asset, _), b in blocking.items() if asset == "storage/orders")


def test_merge_key_uniqueness_rests_on_the_primary_key_constraint(env):
    """Merge storage is keyed by (tenant, key) in the database; the check confirms the constraint
    (grouping a million rows would cost a second) and fails if the table lost it."""
    service, _, _ = env
    contract = service.contracts.get("customers")
    job = enqueue(service, "customers", CUSTOMERS_CSV, tenant_id="acme")
    # The service's steps, keeping the staged rows as the storage step does for its checks.
    staged = service.stage(service.start(job.job_id, "run-1"), "run-1")
    service.promote(job.job_id, "run-1", keep_staging=True)
    jobs = [JobRows(job.job_id, "acme", staged.rows)]
    checks = DataQuality(service.warehouse)

    keyed = {o.name: o for o in checks.check_storage(contract, jobs)}
    assert keyed[quality.ROWS_MATCH_SOURCE].passed
    assert keyed[quality.PRIMARY_KEY_UNIQUE].passed
    assert "enforced by the primary key (_dw_tenant_id, customer_id)" in (
        keyed[quality.PRIMARY_KEY_UNIQUE].description
    )

    with service.warehouse.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE dw_storage.customers DROP CONSTRAINT pk_customers"))
    unkeyed = {o.name: o for o in checks.check_storage(contract, jobs)}
    assert not unkeyed[quality.PRIMARY_KEY_UNIQUE].passed
    assert unkeyed[quality.PRIMARY_KEY_UNIQUE].description.endswith(
        "expected (_dw_tenant_id, customer_id): duplicates are not prevented"
    )
