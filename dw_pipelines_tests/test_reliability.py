"""Reliability against a real PostgreSQL: capped retries, dead letters, crash recovery through
heartbeats and the reconciler, manual reprocessing, UI re-execution, partition backfills, pruning.
"""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from dw_pipelines.core.db import outbox, utcnow
from dw_pipelines.core.faults import reset_fault_counters
from dw_pipelines.core.tables import staging_partition
from dw_pipelines.definitions import build_definitions
from dw_pipelines.defs.resources import DwResource
from dw_pipelines.services import build_queue, build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR, TAG_JOB_ID
from dw_pipelines_tests.daemon_support import SYNC_INSTANCE_YAML
from dw_pipelines_tests.test_ingestion_runs import enqueue, run, storage, without_loaded_at

REPO_ROOT = Path(__file__).resolve().parent.parent
ORDERS_CSV = SAMPLES_DIR / "orders_2026-11-24.csv"


@pytest.fixture(autouse=True)
def _fresh_fault_counters():
    reset_fault_counters()
    yield
    reset_fault_counters()


@pytest.fixture
def make_env(pg_url: str, dw_env):
    """Build (settings, service, job definition, instance) for the given DW_* overrides."""
    opened = []

    def make(**overrides):
        settings = dw_env(pg_url, **overrides)
        service = build_service(settings)
        defs = build_definitions(settings)
        opened.append(service)
        return settings, service, defs

    yield make
    for service in opened:
        dispose(service)


def reconcile(reconciler: dg.SensorDefinition, instance: dg.DagsterInstance):
    """One evaluation of the reconciler sensor (it only writes; it requests no runs)."""
    with dg.build_sensor_context(instance=instance, resources={"dw": DwResource()}) as context:
        return reconciler(context)


def events(service, job_id: str) -> list[str]:
    return [e.event for e in service.queue.audit_trail(job_id)]


def test_a_lost_connection_is_retried_with_backoff_and_the_job_completes(make_env):
    _, service, defs = make_env(
        DW_RETRY_MAX_RETRIES=3,
        DW_RETRY_BASE_DELAY_SECONDS=0.2,
        # The run's own backend is terminated twice, right before the COPY into staging.
        DW_FAULT_INJECTION="staging.copy=terminate-backend*2",
    )
    job_def = defs.resolve_job_def("dw_ingestion_job")
    with dg.instance_for_test() as instance:
        job = enqueue(service, "orders", ORDERS_CSV)
        started = time.monotonic()
        result = run(job_def, instance, job)
        elapsed = time.monotonic() - started

    assert result.success
    row = service.queue.get(job.job_id)
    assert (row.status, row.rows_loaded, row.attempts) == ("COMPLETED", 6, 3)
    assert service.warehouse.storage_rows(service.contracts.get("orders"), job.job_id) == 6
    assert events(service, job.job_id) == [
        "ENQUEUED", "DISPATCHED", "STARTED", "RETRY_SCHEDULED", "RETRY_SCHEDULED",
        "STAGED", "PROMOTED", "COMPLETED",
    ]  # fmt: skip
    retries = [e for e in service.queue.audit_trail(job.job_id) if e.event == "RETRY_SCHEDULED"]
    delays = [e.details["delay_seconds"] for e in retries]
    # base 0.2 s doubling, ±10 % jitter
    assert 0.18 <= delays[0] <= 0.22 and 0.36 <= delays[1] <= 0.44
    assert [e.details["retry_number"] for e in retries] == [1, 2]
    assert all("terminating connection" in e.details["error"] for e in retries)
    assert elapsed >= sum(delays)  # Dagster really waited
    up_for_retry = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(up_for_retry) == 2


def test_exhausted_retries_dead_letter_the_job(make_env):
    _, service, defs = make_env(
        DW_RETRY_MAX_RETRIES=2,
        DW_RETRY_BASE_DELAY_SECONDS=0.05,
        DW_FAULT_INJECTION="promote.before_commit=raise*99",
    )
    job_def = defs.resolve_job_def("dw_ingestion_job")
    with dg.instance_for_test() as instance:
        job = enqueue(service, "orders", ORDERS_CSV)
        result = run(job_def, instance, job)

    assert not result.success
    row = service.queue.get(job.job_id)
    assert row.status == "FAILED"
    assert row.attempts == 3  # the first attempt and max_retries = 2 retries
    assert row.last_error == "injected fault at promote.before_commit"
    assert events(service, job.job_id)[-4:] == [
        "STAGED", "RETRY_SCHEDULED", "RETRY_SCHEDULED", "DEAD_LETTERED",
    ]  # fmt: skip
    # Promotion never committed: storage holds nothing of the job.
    assert service.warehouse.storage_rows(service.contracts.get("orders"), job.job_id) == 0


def test_reexecuting_a_failed_run_from_failure_completes_the_job(make_env):
    _, service, defs = make_env(
        DW_RETRY_MAX_RETRIES=0, DW_FAULT_INJECTION="promote.before_commit=raise*1"
    )
    with dg.instance_for_test() as instance:
        job = enqueue(service, "orders", ORDERS_CSV)
        failed = run(defs.resolve_job_def("dw_ingestion_job"), instance, job)
        assert not failed.success
        assert service.queue.get(job.job_id).status == "FAILED"

        # What "Re-execute from failure" in the UI does: only the failed storage step runs,
        # in a new run that inherits the parent's tags (dw/job_id, the partition).
        options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
        parent_tags = instance.get_run_by_id(failed.run_id).tags
        with dg.execute_job(
            dg.reconstructable(_ingestion_job),
            instance,
            reexecution_options=options,
            tags={k: v for k, v in parent_tags.items() if k in (TAG_JOB_ID, "dagster/partition")},
        ) as reexecution:
            assert reexecution.success
            steps = {e.step_key for e in reexecution.all_events if e.is_step_success}
            reexecution_run_id = reexecution.run_id

    assert steps == {"storage__orders"}
    row = service.queue.get(job.job_id)
    assert (row.status, row.rows_loaded, row.dagster_run_id) == ("COMPLETED", 6, reexecution_run_id)
    assert service.warehouse.storage_rows(service.contracts.get("orders"), job.job_id) == 6


def _ingestion_job():
    """Module-level so `reconstructable` can find the job again (as a code server would)."""
    from dw_pipelines.definitions import build_definitions
    from dw_pipelines.settings import Settings

    return build_definitions(Settings.from_env()).resolve_job_def("dw_ingestion_job")


def test_a_partition_backfill_reloads_its_settled_jobs_without_duplicates(make_env):
    _, service, defs = make_env(DW_RETRY_MAX_RETRIES=0)
    job_def = defs.resolve_job_def("dw_ingestion_job")
    with dg.instance_for_test() as instance:
        first = enqueue(service, "orders", ORDERS_CSV, "2026-11-24")
        second = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-25.jsonl", "2026-11-24")
        other_day = enqueue(service, "orders", ORDERS_CSV, "2026-11-23")
        for job in (first, second, other_day):
            assert run(job_def, instance, job).success
        before = without_loaded_at(storage(service, "orders", "_dw_job_id, order_id"))

        # An untagged run of one partition, as a UI backfill launches it.
        backfill = job_def.execute_in_process(
            instance=instance,
            partition_key="2026-11-24",
            asset_selection=[
                dg.AssetKey(["staging", "orders"]),
                dg.AssetKey(["storage", "orders"]),
            ],
            tags={"dagster/backfill": "test-backfill"},
        )

    assert backfill.success
    after = without_loaded_at(storage(service, "orders", "_dw_job_id, order_id"))
    assert after == before and len(after) == 16
    for job in (first, second):
        row = service.queue.get(job.job_id)
        assert (row.status, row.dagster_run_id) == ("COMPLETED", backfill.run_id)
    assert service.queue.get(other_day.job_id).dagster_run_id != backfill.run_id
    staged = backfill.asset_materializations_for_node("staging__orders")[0].metadata
    assert staged["jobs"].value == 2 and staged["rows"].value == 10


KILLED_RUN_SCRIPT = textwrap.dedent(
    """
    import sys
    import dagster as dg
    from dw_pipelines.definitions import defs

    job_id, dataset, partition = sys.argv[1:4]
    job = defs.resolve_job_def("dw_ingestion_job")
    with dg.DagsterInstance.get() as instance:
        job.execute_in_process(
            instance=instance,
            partition_key=partition,
            tags={"dw/job_id": job_id},
            asset_selection=[dg.AssetKey(["staging", dataset]), dg.AssetKey(["storage", dataset])],
        )
    sys.exit(3)  # not reached: the fault kills the process mid-promotion
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "attach_min_rows", "strategy"),
    [
        ("promote.before_commit", "off", "insert"),
        # Attach promotion: killed between its staging table made durable (staged logged) and
        # the ATTACH, with the table already detached from staging and given storage's columns.
        ("promote.attach", "1", "attach"),
    ],
    ids=["copy", "attach"],
)
def test_a_run_killed_mid_promotion_is_reconciled_then_retried_by_hand(
    fault: str,
    attach_min_rows: str,
    strategy: str,
    make_env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    _, service, defs = make_env(
        DW_RETRY_MAX_RETRIES=0,
        DW_HEARTBEAT_SECONDS=0.2,
        DW_RECONCILE_AFTER_SECONDS=2,
        DW_ATTACH_MIN_ROWS=attach_min_rows,
    )
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(SYNC_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    job = enqueue(service, "orders", ORDERS_CSV)
    contract = service.contracts.get("orders")

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN_SCRIPT, job.job_id, "orders", "2026-11-24"],
        env={**os.environ, "DW_FAULT_INJECTION": f"{fault}=kill"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    stuck = service.queue.get(job.job_id)
    assert stuck.status == "PROCESSING"
    assert service.warehouse.storage_rows(contract, job.job_id) == 0  # the promotion rolled back
    with service.warehouse.engine.connect() as conn:
        # Storage's tree is as before the promotion (no partition of the job), and the job's
        # staging partition is back under staging, whole (logged: for the attach, and as a file
        # under LOGGED_SMALL_SOURCE_BYTES).
        partitions = conn.execute(
            sa.text(
                "SELECT c.relname, c.relpersistence, i.inhparent::regclass::text"
                " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent IN"
                " ('dw_staging.orders'::regclass, 'dw_storage.orders'::regclass)"
                " OR c.relname LIKE 'orders__p%'"
            )
        ).all()
    staged = [p for p in partitions if p[2] == "dw_staging.orders"]
    assert [(p[0], p[1]) for p in staged] == [(staging_partition("orders", job.job_id), "p")]
    assert not [p for p in partitions if "_j" in p[0]], partitions
    assert service.warehouse.staged_rows(contract, job.job_id) == 6

    instance = dg.DagsterInstance.get()
    dagster_run = instance.get_run_by_id(stuck.dagster_run_id)
    assert dagster_run.status == dg.DagsterRunStatus.STARTED  # nobody told Dagster
    reconciler = defs.resolve_sensor_def("dw_outbox_reconciler")
    # Before the heartbeat goes stale, the run counts as alive.
    reconcile(reconciler, instance)
    assert service.queue.get(job.job_id).status == "PROCESSING"
    time.sleep(2.5)
    reconcile(reconciler, instance)

    settled = service.queue.get(job.job_id)
    assert settled.status == "FAILED"
    assert "stopped sending heartbeats" in settled.last_error
    assert instance.get_run_by_id(stuck.dagster_run_id).status == dg.DagsterRunStatus.FAILURE
    assert events(service, job.job_id)[-1] == "RECONCILED"

    retried = subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", "outbox", "retry", job.job_id,
         "--operator", "alice", "--json"],
        env={k: v for k, v in os.environ.items() if k != "DW_FAULT_INJECTION"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert retried.returncode == 0, retried.stdout + retried.stderr
    row = service.queue.get(job.job_id)
    assert (row.status, row.rows_loaded, row.attempts) == ("COMPLETED", 6, 1)
    assert service.warehouse.storage_rows(contract, job.job_id) == 6
    promoted = [e for e in service.queue.audit_trail(job.job_id) if e.event == "PROMOTED"]
    assert promoted[-1].details["strategy"] == strategy
    requeued = next(e for e in service.queue.audit_trail(job.job_id) if e.event == "REQUEUED")
    assert requeued.details["operator"] == "alice"
    assert requeued.details["previous_status"] == "FAILED"
    new_run = instance.get_run_by_id(row.dagster_run_id)
    assert new_run.status == dg.DagsterRunStatus.SUCCESS
    assert new_run.tags["dw/requeued_by"] == "alice"
    assert new_run.tags[TAG_JOB_ID] == job.job_id
    instance.dispose()


def test_the_reconciler_settles_rows_whose_run_ended_without_writing_back(make_env):
    _, service, defs = make_env(DW_RECONCILE_AFTER_SECONDS=3600)
    reconciler = defs.resolve_sensor_def("dw_outbox_reconciler")
    job_def = defs.resolve_job_def("dw_ingestion_job")
    with dg.instance_for_test() as instance:
        done = enqueue(service, "orders", ORDERS_CSV)
        assert run(job_def, instance, done).success
        canceled = enqueue(service, "customers", SAMPLES_DIR / "customers.csv")
        alive = enqueue(service, "orders", SAMPLES_DIR / "orders_2026-11-25.jsonl", "2026-11-25")
        # A row forced back after its run succeeded, a run canceled before it started, and a
        # run not started yet.
        with service.queue.engine.begin() as conn:
            conn.execute(
                outbox.update().where(outbox.c.job_id == done.job_id).values(status="SENT")
            )
        for job, status in ((canceled, "CANCELED"), (alive, "NOT_STARTED")):
            instance.create_run_for_job(
                job_def, tags={TAG_JOB_ID: job.job_id}, status=dg.DagsterRunStatus[status]
            )

        result = reconcile(reconciler, instance)

    assert "settled 2" in str(result.skip_message)
    assert service.queue.get(done.job_id).status == "COMPLETED"
    failed = service.queue.get(canceled.job_id)
    assert failed.status == "FAILED" and "ended CANCELED" in failed.last_error
    assert service.queue.get(alive.job_id).status == "SENT"


def test_retrying_a_completed_job_does_not_duplicate_storage(make_env, tmp_path, monkeypatch):
    _, service, defs = make_env()
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(SYNC_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    job = enqueue(service, "orders", ORDERS_CSV)
    with dg.instance_for_test() as instance:
        assert run(defs.resolve_job_def("dw_ingestion_job"), instance, job).success
    before = without_loaded_at(storage(service, "orders", "order_id"))

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "dw_pipelines.cli", "outbox", "retry", job.job_id, *args],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    refused = cli()
    assert refused.returncode == 1
    assert "cannot go from COMPLETED to SENT" in refused.stderr
    accepted = cli("--allow-completed")
    assert accepted.returncode == 0, accepted.stderr
    assert without_loaded_at(storage(service, "orders", "order_id")) == before
    assert service.queue.get(job.job_id).status == "COMPLETED"


def test_prune_deletes_old_completed_jobs_and_keeps_failures_and_audit(make_env, pg_url):
    _, service, _ = make_env()
    queue = service.queue
    old_done = enqueue(service, "orders", ORDERS_CSV)
    new_done = enqueue(service, "orders", ORDERS_CSV, idempotency_key="second")
    old_failed = enqueue(service, "orders", ORDERS_CSV, idempotency_key="third")
    long_ago = utcnow() - dt.timedelta(days=40)
    with queue.engine.begin() as conn:
        for job, status, when in (
            (old_done, "COMPLETED", long_ago),
            (new_done, "COMPLETED", utcnow()),
            (old_failed, "FAILED", long_ago),
        ):
            conn.execute(
                outbox.update()
                .where(outbox.c.job_id == job.job_id)
                .values(status=status, updated_at=when)
            )

    completed = subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", "outbox", "prune",
         "--older-than-days", "30", "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert completed.returncode == 0, completed.stderr
    assert '"deleted": 1' in completed.stdout
    remaining = {job.job_id for job in queue.list_jobs(limit=10)}
    assert remaining == {new_done.job_id, old_failed.job_id}
    assert queue.audit_trail(old_done.job_id)[0].event == "ENQUEUED"  # audit kept


def test_two_claimers_over_a_thousand_rows_claim_each_exactly_once(make_env, pg_url):
    settings, service, _ = make_env()
    queue = service.queue
    now = utcnow()
    rows = [
        {
            "job_id": f"bulk-{i:04d}",
            "idempotency_key": f"bulk-{i:04d}",
            "tenant_id": "t",
            "dataset": "orders",
            "business_date": dt.date(2026, 11, 24),
            "payload": {},
            "status": "PENDING",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(1000)
    ]
    with queue.engine.begin() as conn:
        conn.execute(outbox.insert(), rows)
    claimed: list[list[str]] = [[], []]

    def claim(slot: int) -> None:
        own = build_queue(settings)
        try:
            while batch := own.claim_due(37):
                claimed[slot].extend(job.job_id for job in batch)
        finally:
            own.engine.dispose()

    threads = [threading.Thread(target=claim, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    everything = claimed[0] + claimed[1]
    assert len(everything) == 1000
    assert len(set(everything)) == 1000
    assert claimed[0] and claimed[1]  # both took part
    with queue.engine.connect() as conn:
        statuses = conn.execute(sa.select(outbox.c.status).distinct()).scalars().all()
    assert statuses == ["SENT"]


def test_secrets_never_reach_audit_rows_errors_or_run_tags(pg_url: str, dw_env):
    password = "s3cr3t-Pa55"
    url = sa.make_url(pg_url).set(password=password).render_as_string(hide_password=False)
    settings = dw_env(
        url, DW_RETRY_MAX_RETRIES=1, DW_RETRY_BASE_DELAY_SECONDS=0.01,
        DW_FAULT_INJECTION="staging.copy=terminate-backend*5",
    )  # fmt: skip
    service = build_service(settings)
    job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    with dg.instance_for_test() as instance:
        job = enqueue(service, "orders", ORDERS_CSV)
        result = run(job_def, instance, job)
        assert not result.success
        logs = " ".join(
            str(record.user_message) + str(record.dagster_event)
            for record in instance.all_logs(result.run_id)
        )
        tags = str(instance.get_run_by_id(result.run_id).tags)
    trail = str([e.to_dict() for e in service.queue.audit_trail(job.job_id)])
    row = service.queue.get(job.job_id)
    dispose(service)
    assert row.status == "FAILED" and "terminating connection" in row.last_error
    for text in (trail, row.last_error, logs, tags):
        assert password not in text
