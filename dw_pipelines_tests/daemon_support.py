"""Drive the real sensor daemon code path (internal Dagster API; fine because Dagster is pinned).

`execute_sensor_iteration` is what `dagster-daemon` runs every few seconds: it evaluates the sensor
in a code server subprocess, de-duplicates run keys against run storage, creates and submits runs.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.sensor import execute_sensor_iteration

from dw_pipelines.settings import CODE_LOCATION_NAME, SENSOR_NAME

REPO_ROOT = Path(__file__).resolve().parent.parent

# A test instance whose runs execute inside the process that submits them (`outbox retry` then
# returns after its run finished).
SYNC_INSTANCE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
run_launcher:
  module: dagster._core.launcher.sync_in_memory_run_launcher
  class: SyncInMemoryRunLauncher
telemetry:
  enabled: false
"""
LOGGER = logging.getLogger("dw_pipelines_tests.daemon")


@contextmanager
def daemon_workspace(instance: dg.DagsterInstance) -> Iterator[WorkspaceProcessContext]:
    """The code location as the daemon loads it (a gRPC code server started from this env)."""
    target = ModuleTarget(
        module_name="dw_pipelines.definitions",
        attribute=None,
        working_directory=str(REPO_ROOT),
        location_name=CODE_LOCATION_NAME,
    )
    with create_test_daemon_workspace_context(target, instance) as context:
        yield context


def tick(context: WorkspaceProcessContext, debug_crash_flags=None) -> None:
    """One daemon iteration over the sensors (waits out the 1 s minimum interval first)."""
    time.sleep(1.1)
    list(execute_sensor_iteration(context, LOGGER, None, None, debug_crash_flags=debug_crash_flags))


def runs_for(instance: dg.DagsterInstance, job_id: str) -> list[dg.DagsterRun]:
    """Runs this sensor created for the job's run key."""
    return [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": job_id}))
        if run.tags.get("dagster/sensor_name") == SENSOR_NAME
    ]


def last_tick_status(instance: dg.DagsterInstance) -> str | None:
    ticks = [
        t
        for state in instance.all_instigator_state()
        if state.name == SENSOR_NAME
        for t in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    ]
    return ticks[0].status.value if ticks else None
