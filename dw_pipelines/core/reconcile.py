"""Reconciliation: settle in-flight rows whose run ended, vanished or died without writing back.

Pure decisions over outbox rows and the status of their Dagster runs (given as plain strings so
this stays free of Dagster). The reconciler sensor fetches every row's runs in one query, asks
`decide` and applies the answer.

* A run that SUCCEEDED completed the job (its storage step writes COMPLETED) -> COMPLETED.
* A run that FAILED or was CANCELED without writing back (e.g. killed before its failure
  handler ran, canceled from the UI) -> FAILED with the reason.
* A run still STARTED whose heartbeat is older than the limit is dead (process killed, pod
  evicted or OOM-killed; the local run launcher cannot tell) -> its Dagster run is marked failed
  and the row FAILED.
* A row SENT to a named run that never appeared (launch failed) -> FAILED once the limit passes.

FAILED rows wait for an operator (`dw-pipelines outbox retry`): a run that died once mid-load
(OOM, eviction) would likely die again, and the retry is one command.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dw_pipelines.core.outbox import OutboxJob

ALIVE = ("NOT_STARTED", "QUEUED", "STARTING", "STARTED", "CANCELING", "MANAGED")
ENDED_BADLY = ("FAILURE", "CANCELED")

COMPLETE = "complete"
FAIL = "fail"
FAIL_DEAD_RUN = "fail-dead-run"  # also mark the Dagster run failed


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    status: str  # a DagsterRunStatus name
    created_at: float  # epoch seconds


@dataclass(frozen=True)
class Decision:
    job_id: str
    action: str
    run_id: str | None
    reason: str


def decide(
    job: OutboxJob, runs: Sequence[RunInfo], now: datetime, stale_after: timedelta
) -> Decision | None:
    """What to do about one SENT or PROCESSING row, or None to leave it alone."""
    run = _the_run(job, runs)
    last_sign_of_life = max(t for t in (job.heartbeat_at, job.updated_at) if t is not None)
    stale = now - last_sign_of_life > stale_after
    if run is None:
        if job.status == "SENT" and job.dagster_run_id is None:
            return None  # the outbox sensor re-requests SENT rows that have no run
        if not stale:
            return None
        missing = job.dagster_run_id or "(none)"
        return Decision(
            job.job_id,
            FAIL,
            job.dagster_run_id,
            f"run {missing} for this job does not exist (launch failed or the run was deleted)",
        )
    if run.status == "SUCCESS":
        return Decision(job.job_id, COMPLETE, run.run_id, f"run {run.run_id} succeeded")
    if run.status in ENDED_BADLY:
        return Decision(
            job.job_id,
            FAIL,
            run.run_id,
            f"run {run.run_id} ended {run.status} without writing back to the outbox",
        )
    if job.status == "PROCESSING" and run.status == "STARTED" and stale:
        return Decision(
            job.job_id,
            FAIL_DEAD_RUN,
            run.run_id,
            f"run {run.run_id} stopped sending heartbeats at "
            f"{last_sign_of_life.isoformat(timespec='seconds')}; its process is gone "
            "(killed, evicted or out of memory)",
        )
    return None


def _the_run(job: OutboxJob, runs: Sequence[RunInfo]) -> RunInfo | None:
    """The run the row follows: the one it names, else the newest one for the job."""
    if job.dagster_run_id:
        for run in runs:
            if run.run_id == job.dagster_run_id:
                return run
        return None
    return max(runs, key=lambda r: r.created_at, default=None)
