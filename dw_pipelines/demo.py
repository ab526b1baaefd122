"""`dw-pipelines demo`: the whole worker on one laptop, through the production path.

It enqueues a handful of jobs (one deliberately bad), then starts the real `dagster-daemon` on a
temporary Dagster instance: the daemon evaluates `dw_outbox_sensor`, creates runs with
`run_key = job_id`, and the instance's run coordinator and launcher start them as separate
processes, exactly as in production. The demo only watches the outbox and prints what happens.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from dw_pipelines.cli import format_table
from dw_pipelines.core.db import TERMINAL_STATUSES, create_db_engine
from dw_pipelines.core.migrations import upgrade
from dw_pipelines.core.outbox import DwIngestionJobQueue, OutboxJob
from dw_pipelines.services import build_queue, build_service, dispose
from dw_pipelines.settings import CODE_LOCATION_NAME, SAMPLES_DIR, Settings


@dataclass(frozen=True)
class DemoJob:
    sample: str
    dataset: str
    business_date: str
    expected_status: str
    what: str


DEMO_JOBS = (
    DemoJob("orders_2026-11-24.csv", "orders", "2026-11-24", "COMPLETED", "CSV, append"),
    DemoJob("orders_2026-11-25.jsonl", "orders", "2026-11-25", "COMPLETED", "JSONL, append"),
    DemoJob("customers.csv", "customers", "2026-11-24", "COMPLETED", "CSV, merge"),
    DemoJob(
        "customers_2026-11-25.parquet", "customers", "2026-11-25", "COMPLETED", "Parquet, merge"
    ),
    DemoJob("orders_bad.csv", "orders", "2026-11-25", "FAILED", "bad value: must fail cleanly"),
)

# One run at a time per dataset keeps merge files in the order they were enqueued.
DEMO_INSTANCE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
    dequeue_interval_seconds: 1
    tag_concurrency_limits:
      - key: dw/dataset
        value: {applyLimitPerUniqueValue: true}
        limit: 1
telemetry:
  enabled: false
"""

WORKSPACE_YAML = f"""\
load_from:
  - python_module:
      module_name: dw_pipelines.definitions
      location_name: {CODE_LOCATION_NAME}
"""


def run_demo(settings: Settings, timeout_seconds: int = 300) -> int:
    """Run the demo; return the process exit status (0 when every job ended as expected)."""
    started = time.monotonic()
    say = _printer(started)
    say(f"outbox + audit: {_public(settings.database_url)}")
    say(f"warehouse:      {_public(settings.warehouse_url)}")
    engine = create_db_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    say("outbox schema upgraded (dw-pipelines db upgrade)")

    queue = build_queue(settings)
    landing = Path(settings.landing_roots[0]) / "dw-demo"
    landing.mkdir(parents=True, exist_ok=True)
    demo_id = uuid.uuid4().hex[:8]
    jobs: list[tuple[DemoJob, OutboxJob]] = []
    for demo_job in DEMO_JOBS:
        source = landing / demo_job.sample
        shutil.copyfile(SAMPLES_DIR / demo_job.sample, source)
        result = queue.enqueue(
            {
                "dataset": demo_job.dataset,
                "source_uri": str(source),
                "business_date": demo_job.business_date,
                "idempotency_key": f"demo-{demo_id}-{demo_job.sample}",
                "requested_by": "dw-pipelines demo",
            }
        )
        jobs.append((demo_job, result.job))
        say(f"enqueued {result.job.job_id[:8]}  {demo_job.dataset:<10} {demo_job.sample}")

    dagster_home = Path(tempfile.mkdtemp(prefix="dw-demo-dagster-home-"))
    (dagster_home / "dagster.yaml").write_text(DEMO_INSTANCE_YAML)
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML)
    log_path = dagster_home / "daemon.log"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DW_HOME": str(settings.home),
        # Poll quickly: the demo should not wait the production interval.
        "DW_SENSOR_INTERVAL_SECONDS": "1",
    }
    say(f"starting dagster-daemon (DAGSTER_HOME={dagster_home}); sensor dw_outbox_sensor is on")
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            final = _watch(queue, [job.job_id for _, job in jobs], daemon, say, timeout_seconds)
        finally:
            _stop(daemon)
    queue.engine.dispose()

    service = build_service(settings)
    print()
    rows = []
    ok = True
    for demo_job, job in jobs:
        current = final[job.job_id]
        contract = service.contracts.get(demo_job.dataset)
        in_storage = service.warehouse.storage_rows(contract, job.job_id)
        loaded = current.rows_loaded or 0
        # A later merge job may take over some rows (their lineage moves to it): at most `loaded`.
        storage_consistent = (
            in_storage == loaded if contract.write_mode == "append" else in_storage <= loaded
        )
        as_expected = current.status == demo_job.expected_status and storage_consistent
        ok = ok and as_expected
        rows.append(
            [
                job.job_id[:8],
                demo_job.dataset,
                demo_job.sample,
                current.status,
                "" if current.rows_loaded is None else current.rows_loaded,
                in_storage,
                "yes" if as_expected else f"NO (expected {demo_job.expected_status})",
                textwrap.shorten(current.last_error or "", 110),
            ]
        )
    dispose(service)
    headers = ["job", "dataset", "source", "status", "rows", "storage rows", "as expected", "error"]
    print(format_table(headers, rows))
    print("(storage rows: rows in dw_storage whose latest write came from the job; merge jobs")
    print(" that upsert the same keys later take those rows over)")
    print()
    if ok:
        print(
            "demo OK: the good jobs COMPLETED, the bad one FAILED with a clear error and wrote "
            "nothing to storage."
        )
        print("Inspect: dw-pipelines outbox list; dw-pipelines outbox show <job_id>")
        shutil.rmtree(dagster_home, ignore_errors=True)
        return 0
    print(f"demo FAILED: some jobs did not end as expected. Daemon log: {log_path}")
    print(_tail(log_path))
    return 1


def _watch(
    queue: DwIngestionJobQueue,
    job_ids: list[str],
    daemon: subprocess.Popen,
    say,
    timeout_seconds: int,
) -> dict[str, OutboxJob]:
    """Print every status change until all jobs are terminal, the daemon dies or time runs out."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout_seconds
    while True:
        current = {job_id: queue.get(job_id) for job_id in job_ids}
        for job_id, job in current.items():
            if seen.get(job_id) != job.status:
                before = seen.get(job_id, "")
                arrow = f"{before} -> {job.status}" if before else job.status
                say(f"job {job_id[:8]}  {job.dataset:<10} {arrow}")
                seen[job_id] = job.status
        if all(job.status in TERMINAL_STATUSES for job in current.values()):
            return current
        if daemon.poll() is not None:
            say(f"dagster-daemon exited with status {daemon.returncode}")
            return current
        if time.monotonic() > deadline:
            say(f"timed out after {timeout_seconds}s")
            return current
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    """Stop the daemon and everything it started (code server, run workers)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _printer(started: float):
    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)

    return say


def _public(url: str) -> str:
    return sa.make_url(url).render_as_string(hide_password=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
