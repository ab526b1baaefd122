"""`dagster job launch` by hand, on the production `dagster.yaml` against PostgreSQL: the line
that `dw-pipelines outbox launch-command` prints runs the job once, through the real daemon, and
running it again creates no second run.
"""

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
from dagster._core.instance.ref import InstanceRef

from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR, TAG_JOB_ID

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_a_hand_launch_runs_once_through_the_daemon(
    pg_url: str, empty_pg_url: str, dw_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    settings = dw_env(pg_url)
    dagster_home = tmp_path / "dagster-home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")  # the shipped file
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        # dagster-postgres speaks psycopg2 and wants a plain postgresql:// URL.
        "DAGSTER_PG_URL": sa.make_url(empty_pg_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    queue = build_queue(settings)
    job = queue.enqueue(
        {"dataset": "orders", "source_uri": str(SAMPLES_DIR / "orders_2026-11-24.csv"),
         "business_date": "2026-11-24"}
    ).job  # fmt: skip

    printed = subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", "outbox", "launch-command", job.job_id,
         "--operator", "ops-alice"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    line = printed.stdout.strip()
    assert line.startswith(
        "dagster job launch -w workspace.yaml -l dw_pipelines -j dw_ingestion_job"
    )
    claimed = queue.get(job.job_id)
    assert claimed.status == "SENT" and claimed.dagster_run_id in line  # out of the sensor's reach

    def launch() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", line], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
            timeout=180,
        )  # fmt: skip

    first = launch()
    assert first.returncode == 0, first.stdout + first.stderr

    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))

    def finished() -> bool:
        # The row turns COMPLETED at promotion; the run ends after its storage checks.
        run = instance.get_run_by_id(claimed.dagster_run_id)
        return queue.get(job.job_id).status in ("COMPLETED", "FAILED") and (
            run is not None and run.is_finished
        )

    try:
        deadline = time.monotonic() + 150
        while not finished():
            assert daemon.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)

    done = queue.get(job.job_id)
    assert (done.status, done.rows_loaded) == ("COMPLETED", 6), done.last_error
    assert done.dagster_run_id == claimed.dagster_run_id

    second = launch()
    assert second.returncode != 0
    assert "already exists" in (second.stdout + second.stderr).lower()
    with instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={TAG_JOB_ID: job.job_id}))
        assert [run.run_id for run in runs] == [claimed.dagster_run_id]
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    queue.engine.dispose()
