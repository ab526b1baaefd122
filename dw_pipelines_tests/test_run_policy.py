"""The run cap and the retry rule reach every run the worker creates, and the real run monitoring
daemon enforces the cap.

The official Helm chart renders neither `run_monitoring.max_runtime_seconds` nor
`run_retries.retry_on_asset_or_op_failure` into the instance's dagster.yaml, so both travel as
run tags (`dagster/max_runtime`, `dagster/retry_on_asset_or_op_failure`): on the runs the outbox
sensor requests, on `outbox retry` and `outbox launch-command` runs, and on the ingestion job
itself (its backfills and UI launches).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.instance.ref import InstanceRef

from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_queue, build_service, dispose
from dw_pipelines.settings import (
    INGESTION_JOB_NAME,
    SAMPLES_DIR,
    TAG_JOB_ID,
    TAG_MAX_RUNTIME,
    TAG_RETRY_ON_ASSET_OR_OP_FAILURE,
)
from dw_pipelines_tests.conftest import make_settings
from dw_pipelines_tests.daemon_support import SYNC_INSTANCE_YAML, daemon_workspace, runs_for, tick

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ORDERS = SAMPLES_DIR / "orders_2026-11-24.csv"
# Not the defaults, so a test sees the configured values and not a constant.
POLICY = {"DW_RUN_MAX_RUNTIME_SECONDS": "4321", "DW_RUN_RETRY_ON_ASSET_OR_OP_FAILURE": "true"}
EXPECTED = {TAG_MAX_RUNTIME: "4321", TAG_RETRY_ON_ASSET_OR_OP_FAILURE: "true"}


@pytest.fixture
def dagster_pg_url(empty_pg_url: str) -> str:
    # dagster-postgres uses psycopg2 and wants a plain postgresql:// URL.
    return sa.make_url(empty_pg_url).set(drivername="postgresql").render_as_string(False)


def enqueue(settings, source: Path = ORDERS):
    queue = build_queue(settings)
    try:
        command = {"dataset": "orders", "source_uri": str(source), "business_date": "2026-11-24"}
        return queue.enqueue(command).job
    finally:
        queue.engine.dispose()


def policy_tags(run: dg.DagsterRun) -> dict[str, str]:
    return {k: run.tags.get(k) for k in EXPECTED}


def test_the_ingestion_job_carries_the_configured_tags(pg_url: str, tmp_path: Path) -> None:
    configured = make_settings(pg_url, tmp_path, tmp_path, **POLICY)
    job = build_definitions(configured).resolve_job_def(INGESTION_JOB_NAME)
    assert {k: job.run_tags.get(k) for k in EXPECTED} == EXPECTED
    defaults = build_definitions(make_settings(pg_url, tmp_path, tmp_path))
    defaults = defaults.resolve_job_def(INGESTION_JOB_NAME)
    assert {k: defaults.run_tags.get(k) for k in EXPECTED} == {
        TAG_MAX_RUNTIME: "7200",
        TAG_RETRY_ON_ASSET_OR_OP_FAILURE: "false",
    }


def test_sensor_runs_carry_the_configured_tags(pg_url: str, dw_env, dagster_pg_url: str) -> None:
    settings = dw_env(pg_url, DW_SENSOR_INTERVAL_SECONDS=1, **POLICY)
    job = enqueue(settings)
    overrides = {"storage": {"postgres": {"postgres_url": dagster_pg_url}}}
    with (
        dg.instance_for_test(
            overrides=overrides, synchronous_run_launcher=True, synchronous_run_coordinator=True
        ) as instance,
        daemon_workspace(instance) as workspace,
    ):
        tick(workspace)
        [run] = runs_for(instance, job.job_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert policy_tags(run) == EXPECTED


def test_outbox_retry_runs_carry_the_configured_tags(
    pg_url: str, dw_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = dw_env(pg_url, DW_RETRY_MAX_RETRIES=0, **POLICY)
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(SYNC_INSTANCE_YAML)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    service = build_service(settings)
    try:
        job = service.queue.enqueue(
            {"dataset": "orders", "source_uri": str(ORDERS), "business_date": "2026-11-24"}
        ).job
        service.queue.claim_due(10)
        service.queue.start(job.job_id, "run-0")
        service.queue.fail(job.job_id, "run-0", "a failure to retry")

        retried = subprocess.run(
            [sys.executable, "-m", "dw_pipelines.cli", "outbox", "retry", job.job_id, "--json"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

        assert retried.returncode == 0, retried.stdout + retried.stderr
        # The code server it starts logs to the same stdout around the JSON document.
        document = retried.stdout[retried.stdout.index("\n{\n") + 1 :]
        run_id = json.JSONDecoder().raw_decode(document)[0]["run_id"]
        with dg.DagsterInstance.get() as instance:
            run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert policy_tags(run) == EXPECTED
    finally:
        dispose(service)


def test_launch_command_runs_carry_the_configured_tags(pg_url: str, dw_env) -> None:
    settings = dw_env(pg_url, **POLICY)
    job = enqueue(settings)
    printed = subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", "outbox", "launch-command", job.job_id],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    tags = json.loads(printed.stdout.split("--tags ", 1)[1].strip().strip("'"))
    assert {k: tags.get(k) for k in EXPECTED} == EXPECTED
    assert tags[TAG_JOB_ID] == job.job_id


def test_the_run_monitoring_daemon_fails_a_run_past_its_cap(
    pg_url: str, dw_env, dagster_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped dagster.yaml, monitoring polled every second, a 5 s cap, a run that hangs:
    the real `dagster-daemon` fails the run, and the outbox reconciler then fails its job."""
    settings = dw_env(
        pg_url,
        DW_RUN_MAX_RUNTIME_SECONDS=5,
        DW_SENSOR_INTERVAL_SECONDS=1,
        DW_RECONCILE_INTERVAL_SECONDS=1,
        DW_FAULT_INJECTION="staging.copy=hang",
    )
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    instance_yaml = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    instance_yaml["run_monitoring"]["poll_interval_seconds"] = 1
    instance_yaml["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_PG_URL": dagster_pg_url,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_pg_url)
    job = enqueue(settings)
    queue = build_queue(settings)
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    try:
        deadline = time.monotonic() + 150
        run = None
        while time.monotonic() < deadline:
            assert daemon.poll() is None, log_path.read_text()[-3000:]
            runs = instance.get_runs(filters=dg.RunsFilter(tags={TAG_JOB_ID: job.job_id}))
            run = runs[0] if runs else None
            if run is not None and run.is_finished and queue.get(job.job_id).status == "FAILED":
                break
            time.sleep(1)
        assert run is not None and run.is_finished, log_path.read_text()[-3000:]
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert run.tags[TAG_MAX_RUNTIME] == "5"
        started = instance.get_run_record_by_id(run.run_id).start_time
        ended = instance.get_run_record_by_id(run.run_id).end_time
        assert started is not None and ended is not None and ended - started >= 5
        messages = [
            (e.dagster_event.event_type_value if e.dagster_event else "", e.message or "")
            for e in instance.all_logs(run.run_id)
        ]
        assert any("Exceeded maximum runtime of 5 seconds" in m for _, m in messages), messages[-8:]
        row = queue.get(job.job_id)
        assert row.status == "FAILED", row
        assert run.run_id in (row.last_error or "") or row.dagster_run_id == run.run_id
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        # The hung run process (started by the daemon's code server) goes with its session.
        with_session = shutil.which("pkill")
        if with_session:
            subprocess.run(["pkill", "-KILL", "-s", str(daemon.pid)], check=False)
        instance.dispose()
        queue.engine.dispose()
