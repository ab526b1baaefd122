"""The outbox sensor through the daemon code path, on a Postgres outbox and a Postgres-backed
Dagster instance: run_key = job_id, no duplicate launches, and crash safety at every tick step.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.instance.ref import InstanceRef

from dw_pipelines.core.db import outbox
from dw_pipelines.services import build_queue, build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR, TAG_DATASET, TAG_JOB_ID, TAG_TENANT
from dw_pipelines_tests.daemon_support import daemon_workspace, runs_for, tick

pytestmark = pytest.mark.slow

SAMPLES = [
    ("orders", "orders_2026-11-24.csv", "2026-11-24", "tenant-a"),
    ("orders", "orders_2026-11-25.jsonl", "2026-11-25", "tenant-b"),
    ("customers", "customers.csv", "2026-11-24", "tenant-a"),
]


@pytest.fixture
def dagster_pg_url(empty_pg_url: str) -> str:
    # dagster-postgres uses psycopg2 and wants a plain postgresql:// URL.
    return sa.make_url(empty_pg_url).set(drivername="postgresql").render_as_string(False)


def enqueue_samples(settings) -> list:
    queue = build_queue(settings)
    try:
        return [
            queue.enqueue(
                {
                    "dataset": dataset,
                    "source_uri": str(SAMPLES_DIR / sample),
                    "business_date": date,
                    "tenant_id": tenant,
                }
            ).job
            for dataset, sample, date, tenant in SAMPLES
        ]
    finally:
        queue.engine.dispose()


def test_three_pending_jobs_become_three_runs_keyed_by_job_id_and_never_more(
    pg_url: str, dw_env, dagster_pg_url: str
):
    settings = dw_env(pg_url, DW_SENSOR_INTERVAL_SECONDS=1)
    jobs = enqueue_samples(settings)
    service = build_service(settings)
    overrides = {"storage": {"postgres": {"postgres_url": dagster_pg_url}}}
    with (
        dg.instance_for_test(
            overrides=overrides, synchronous_run_launcher=True, synchronous_run_coordinator=True
        ) as instance,
        daemon_workspace(instance) as workspace,
    ):
        tick(workspace)

        for job in jobs:
            runs = runs_for(instance, job.job_id)
            assert len(runs) == 1, f"{job.job_id}: {runs}"
            run = runs[0]
            assert run.status == dg.DagsterRunStatus.SUCCESS
            assert run.tags[TAG_JOB_ID] == job.job_id
            assert run.tags[TAG_DATASET] == job.dataset
            assert run.tags[TAG_TENANT] == job.tenant_id
            assert run.tags["dagster/partition"] == job.business_date.isoformat()
            # The load checks of both assets run; freshness is left to the health sensor.
            assert {(k.asset_key.path[0], k.name) for k in run.asset_check_selection} == {
                (asset, name)
                for asset in ("staging", "storage")
                for name in ("rows_match_source", "primary_key_unique", "required_columns_not_null")
            }
            pod = json.loads(run.tags["dagster-k8s/config"])  # read by K8sRunLauncher
            assert pod["container_config"]["resources"]["requests"]["memory"] == "512Mi"
            row = service.queue.get(job.job_id)
            assert row.status == "COMPLETED"
            assert row.dagster_run_id == run.run_id
        storage_counts = {
            job.job_id: service.warehouse.storage_rows(
                service.contracts.get(job.dataset), job.job_id
            )
            for job in jobs
        }
        assert storage_counts == {jobs[0].job_id: 6, jobs[1].job_id: 4, jobs[2].job_id: 5}
        total_runs = len(instance.get_runs())

        # Ticking again launches nothing.
        tick(workspace)
        assert len(instance.get_runs()) == total_runs

        # Forcing a row back to PENDING: the sensor claims it again, but the daemon's run_key
        # dedup refuses a second run, so storage is not loaded twice.
        with service.queue.engine.begin() as conn:
            conn.execute(
                outbox.update().where(outbox.c.job_id == jobs[0].job_id).values(status="PENDING")
            )
        tick(workspace)
        assert len(instance.get_runs()) == total_runs
        assert len(runs_for(instance, jobs[0].job_id)) == 1
        assert service.queue.get(jobs[0].job_id).status == "SENT"
        contract = service.contracts.get("orders")
        assert service.warehouse.storage_rows(contract, jobs[0].job_id) == 6
        assert service.warehouse.storage_rows(contract) == 10
    dispose(service)


def test_sensor_fails_a_row_it_cannot_dispatch_without_failing_the_tick(
    pg_url: str, dw_env, dagster_pg_url: str
):
    settings = dw_env(pg_url, DW_SENSOR_INTERVAL_SECONDS=1)
    good, *_ = enqueue_samples(settings)
    service = build_service(settings)
    # A row written by a non-Python gateway for a dataset this deployment does not know.
    with service.queue.engine.begin() as conn:
        conn.execute(
            outbox.insert().values(
                job_id="foreign-1",
                idempotency_key="foreign-1",
                tenant_id="t",
                dataset="invoices",
                business_date=good.business_date,
                payload={"dataset": "invoices", "source_uri": "/nowhere.csv"},
                status="PENDING",
                attempts=0,
                next_attempt_at=good.created_at,
                created_at=good.created_at,
                updated_at=good.created_at,
            )
        )
    overrides = {"storage": {"postgres": {"postgres_url": dagster_pg_url}}}
    with (
        dg.instance_for_test(overrides=overrides) as instance,
        daemon_workspace(instance) as workspace,
    ):
        tick(workspace)
        foreign = service.queue.get("foreign-1")
        assert foreign.status == "FAILED"
        assert "unknown dataset 'invoices'" in foreign.last_error
        assert runs_for(instance, "foreign-1") == []
        # The other jobs were dispatched in the same tick (runs queued: no daemon dequeues here).
        assert len(runs_for(instance, good.job_id)) == 1
    dispose(service)


CRASH_SCRIPT = textwrap.dedent(
    """
    import signal, sys
    from dagster import DagsterInstance
    from dw_pipelines_tests.daemon_support import daemon_workspace, tick

    point = sys.argv[1]
    with DagsterInstance.get() as instance, daemon_workspace(instance) as workspace:
        tick(workspace, debug_crash_flags={"dw_outbox_sensor": {point: signal.SIGKILL}})
    print("the daemon should have been killed at", point)
    sys.exit(3)
    """
)


@pytest.mark.parametrize(
    "crash_point",
    [
        "TICK_CREATED",  # before the sensor is evaluated
        "AUTOMATION_EVALUATIONS_ADDED",  # rows claimed (SENT), run requests not yet recorded
        "RUN_IDS_RESERVED",  # run requests recorded with reserved run ids, no run created
        "RUN_CREATED",  # first run created, not yet submitted
        "RUN_LAUNCHED",  # first run submitted
    ],
)
def test_a_daemon_killed_at_any_point_of_a_tick_loses_no_row_and_launches_no_job_twice(
    crash_point: str, pg_url: str, dw_env, dagster_pg_url: str, tmp_path: Path
):
    settings = dw_env(pg_url, DW_SENSOR_INTERVAL_SECONDS=1, DW_SENSOR_REDISPATCH_AFTER_SECONDS=0)
    jobs = enqueue_samples(settings)
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {dagster_pg_url}\ntelemetry:\n  enabled: false\n"
    )
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    log_path = tmp_path / "crashed-daemon.log"
    # Output goes to a file, not a pipe: the killed daemon's code server would hold a pipe open.
    with open(log_path, "wb") as log:
        crashed = subprocess.Popen(
            [sys.executable, "-c", CRASH_SCRIPT, crash_point],
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = crashed.wait(timeout=180)
        finally:
            with contextlib.suppress(ProcessLookupError):  # the orphaned code server
                os.killpg(crashed.pid, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, log_path.read_text()

    service = build_service(settings)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    with instance, daemon_workspace(instance) as workspace:
        # The restarted daemon resumes or re-evaluates; the redispatch grace is 0 here so that
        # rows claimed by the killed tick are re-requested at once.
        for _ in range(3):
            tick(workspace)
        for job in jobs:
            assert len(runs_for(instance, job.job_id)) == 1, (crash_point, job.job_id)
            assert service.queue.get(job.job_id).status == "SENT"
        assert len(instance.get_runs()) == len(jobs)
    dispose(service)
