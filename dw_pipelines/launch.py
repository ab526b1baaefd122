"""Launch a `dw_ingestion_job` run for one outbox job without the sensor.

The sensor can launch a job only once (its run key is used up even by a FAILED run), so manual
reprocessing creates the run itself, the way `dagster job launch` does: through the code
location (so the run carries its origin and any run launcher can start it, K8s Jobs included)
and the instance's run coordinator (so concurrency limits apply).
"""

import json
import shlex
import uuid
from pathlib import Path

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget, WorkspaceFileTarget

from dw_pipelines.core.errors import ConfigurationError
from dw_pipelines.core.outbox import OutboxJob
from dw_pipelines.core.quality import FRESHNESS
from dw_pipelines.defs.assets import staging_key, storage_key
from dw_pipelines.defs.sensors import run_tags
from dw_pipelines.settings import CODE_LOCATION_NAME, INGESTION_JOB_NAME, Settings

TAG_REQUEUED_BY = "dw/requeued_by"


# Fixed forever: launch ids derived from it must stay stable across releases.
_LAUNCH_NAMESPACE = uuid.UUID("6b0c6f1e-5a4e-4d55-9b0e-8f1f0d2a7c11")


def new_run_id() -> str:
    return str(uuid.uuid4())


def launch_run_id(job_id: str) -> str:
    """The run id of a launch by hand: derived from the job id, so launching twice cannot
    create a second run (Dagster refuses a run id that exists)."""
    return str(uuid.uuid5(_LAUNCH_NAMESPACE, job_id))


def launch_command(job: OutboxJob, settings: Settings, workspace: str = "workspace.yaml") -> str:
    """The `dagster job launch` line that runs `job` through the instance in DAGSTER_HOME."""
    tags = {"dagster/partition": job.business_date.isoformat(), **run_tags(job, settings)}
    return " ".join(
        [
            "dagster job launch",
            f"-w {shlex.quote(workspace)}",
            f"-l {CODE_LOCATION_NAME}",
            f"-j {INGESTION_JOB_NAME}",
            f"--run-id {launch_run_id(job.job_id)}",
            f"--tags {shlex.quote(json.dumps(tags, sort_keys=True))}",
        ]
    )


def instance_from_environment() -> dg.DagsterInstance:
    try:
        return dg.DagsterInstance.get()
    except Exception as exc:
        raise ConfigurationError(
            "DAGSTER_HOME must name the Dagster instance the worker runs on "
            f"(the folder with its dagster.yaml): {exc}"
        ) from None


def launch_job_run(
    instance: dg.DagsterInstance,
    job: OutboxJob,
    run_id: str,
    settings: Settings,
    workspace_file: Path | None = None,
    extra_tags: dict[str, str] | None = None,
) -> dg.DagsterRun:
    """Create and submit the run `run_id` that loads `job`; returns the submitted run."""
    if workspace_file is not None:
        target = WorkspaceFileTarget(paths=[str(workspace_file)])
    else:
        target = ModuleTarget(
            module_name="dw_pipelines.definitions",
            attribute=None,
            working_directory=None,
            location_name=CODE_LOCATION_NAME,
        )
    with WorkspaceProcessContext(instance, target) as process_context:
        workspace = process_context.create_request_context()
        location = workspace.get_code_location(CODE_LOCATION_NAME)
        (repository,) = location.get_repositories().values()
        asset_selection = [staging_key(job.dataset), storage_key(job.dataset)]
        # The load checks, as the sensor's runs (freshness is the health sensor's).
        check_selection = {
            key
            for key in repository.asset_graph.asset_check_keys
            if key.asset_key in asset_selection and key.name != FRESHNESS
        }
        remote_job = location.get_job(
            JobSubsetSelector(
                location_name=location.name,
                repository_name=repository.name,
                job_name=INGESTION_JOB_NAME,
                op_selection=None,
                asset_selection=asset_selection,
                asset_check_selection=check_selection,
            )
        )
        plan = location.get_execution_plan(
            remote_job, {}, step_keys_to_execute=None, known_state=None, instance=instance
        )
        tags = {
            **(remote_job.run_tags or {}),
            "dagster/partition": job.business_date.isoformat(),
            **run_tags(job, settings),
            **(extra_tags or {}),
        }
        run = instance.create_run(
            job_name=INGESTION_JOB_NAME,
            run_id=run_id,
            run_config={},
            resolved_op_selection=remote_job.resolved_op_selection,
            step_keys_to_execute=None,
            status=dg.DagsterRunStatus.NOT_STARTED,
            op_selection=None,
            root_run_id=None,
            parent_run_id=None,
            tags=tags,
            job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot,
            parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(),
            job_code_origin=remote_job.get_python_origin(),
            asset_selection=frozenset(asset_selection),
            asset_check_selection=frozenset(check_selection),
            asset_graph=repository.asset_graph,
        )
        return instance.submit_run(run.run_id, workspace)
