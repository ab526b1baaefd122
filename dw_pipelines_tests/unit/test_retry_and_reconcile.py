"""Pure tests of the retry policy and of the reconciler's decisions."""

import random
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from dw_pipelines.core.errors import ConfigurationError
from dw_pipelines.core.faults import parse_faults
from dw_pipelines.core.outbox import OutboxJob
from dw_pipelines.core.reconcile import COMPLETE, FAIL, FAIL_DEAD_RUN, RunInfo, decide
from dw_pipelines.core.retry import RetryPolicy

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
STALE = timedelta(minutes=5)
LONG_AGO = timedelta(minutes=6)


def test_the_seed_policy_doubles_from_the_base_and_caps_each_delay():
    policy = RetryPolicy(max_retries=5, base_delay_seconds=116, max_delay_seconds=3600)
    assert policy.schedule() == [116, 232, 464, 928, 1856]
    capped = RetryPolicy(max_retries=8, base_delay_seconds=60, max_delay_seconds=3600)
    assert capped.schedule()[-3:] == [1920, 3600, 3600]
    assert capped.max_attempts == 9


@pytest.mark.parametrize("retry_number", range(8))
def test_jitter_stays_within_ten_percent_and_under_the_cap(retry_number):
    policy = RetryPolicy(max_retries=8, base_delay_seconds=60, max_delay_seconds=3600)
    rng = random.Random(retry_number)
    nominal = policy.schedule()[retry_number]
    for _ in range(200):
        delay = policy.delay(retry_number, rng)
        assert 0.9 * nominal <= delay <= min(1.1 * nominal, 3600)


def test_fault_plans_parse_and_refuse_nonsense():
    (kill, terminate) = parse_faults("promote.before_commit=kill, staging.copy=terminate-backend*2")
    assert (kill.point, kill.action, kill.times) == ("promote.before_commit", "kill", 1)
    assert (terminate.action, terminate.times) == ("terminate-backend", 2)
    assert parse_faults("") == ()
    with pytest.raises(ConfigurationError, match="DW_FAULT_INJECTION"):
        parse_faults("staging.copy=explode")


def job(status: str, run_id: str | None, *, beat_ago: timedelta | None = None) -> OutboxJob:
    touched = NOW - (beat_ago or timedelta(0))
    return OutboxJob(
        job_id="j1", idempotency_key="j1", tenant_id="t", dataset="orders",
        business_date=date(2026, 11, 24), payload={}, status=status, attempts=1,
        next_attempt_at=touched, last_error=None, dagster_run_id=run_id, rows_loaded=None,
        created_at=touched, updated_at=touched, heartbeat_at=touched,
    )  # fmt: skip


def run(run_id: str, status: str, created_at: float = 0.0) -> RunInfo:
    return RunInfo(run_id, status, created_at)


@pytest.mark.parametrize(
    ("row", "runs", "expected"),
    [
        # A fresh SENT row without runs: the outbox sensor re-requests it, not the reconciler.
        (job("SENT", None, beat_ago=timedelta(hours=1)), [], None),
        (job("SENT", None), [run("r1", "QUEUED")], None),
        (job("SENT", None), [run("r1", "SUCCESS")], COMPLETE),
        (job("SENT", None), [run("r1", "CANCELED")], FAIL),
        (job("SENT", None), [run("r1", "FAILURE", 1), run("r2", "STARTED", 2)], None),
        # Requeued to a run that never appeared.
        (job("SENT", "r9"), [], None),
        (job("SENT", "r9", beat_ago=LONG_AGO), [], FAIL),
        (job("PROCESSING", "r1"), [run("r1", "STARTED")], None),
        (job("PROCESSING", "r1", beat_ago=LONG_AGO), [run("r1", "STARTED")], FAIL_DEAD_RUN),
        (job("PROCESSING", "r1", beat_ago=LONG_AGO), [run("r1", "CANCELING")], None),
        (job("PROCESSING", "r1"), [run("r1", "FAILURE")], FAIL),
        (job("PROCESSING", "r1"), [run("r1", "SUCCESS")], COMPLETE),
        # The row follows the run it names, not an older one.
        (job("PROCESSING", "r2"), [run("r1", "FAILURE", 1), run("r2", "STARTED", 2)], None),
    ],
)  # fmt: skip
def test_decisions(row, runs, expected):
    decision = decide(row, runs, NOW, STALE)
    assert (decision.action if decision else None) == expected
    if decision is not None:
        assert decision.job_id == "j1" and decision.reason


def tracked(key_columns, *batches):
    from dw_pipelines.core.validation import KeyTracker

    tracker = KeyTracker(key_columns)
    for batch in batches:
        tracker.add(pa.record_batch(batch))
    return tracker.first_duplicate(lambda: [pa.record_batch(batch) for batch in batches])


def test_key_tracker_finds_the_earliest_repeated_key_across_batches():
    first = {"id": [5, 3, 9], "v": ["a", "b", "c"]}
    second = {"id": [1, 9, 3], "v": ["d", "e", "f"]}  # 3 (rows 2, 6) and 9 (rows 3, 5) repeat
    assert tracked(("id",), first, second) == ({"id": 3}, (2, 6), 2)
    assert tracked(("id",), {"id": [1, 2, 3]}) is None
    assert tracked((), first, second) is None


def test_key_tracker_handles_composite_and_text_keys():
    batch = {"a": ["x", "x", "y", "x"], "b": [1, 2, 1, 1]}
    assert tracked(("a", "b"), batch) == ({"a": "x", "b": 1}, (1, 4), 2)
    assert tracked(("a", "b"), {"a": ["x", "x"], "b": [1, 2]}) is None
    assert tracked(("a",), batch) == ({"a": "x"}, (1, 2), 3)


def test_nanosecond_timestamps_are_read_and_truncated_to_microseconds():
    from pathlib import Path

    from dw_pipelines.core.contracts import parse_contract
    from dw_pipelines.core.readers import SourceFile
    from dw_pipelines.core.validation import conform_batch

    contract = parse_contract(
        {"name": "t", "write_mode": "append", "primary_key": [],
         "columns": [{"name": "ts", "type": "timestamp"}]}
    )  # fmt: skip
    raw = pa.record_batch(
        {"ts": ["2026-06-14 07:14:20.123456789", "2026-06-14T07:14:20.000000001+02:00"]}
    )
    source = SourceFile(Path("x.csv"), "csv", 0)
    mixed = conform_batch(raw, contract, source, 1)["ts"].to_pylist()
    assert [v.isoformat() for v in mixed] == [
        "2026-06-14T07:14:20.123456+00:00",
        "2026-06-14T05:14:20+00:00",
    ]
    naive = conform_batch(pa.record_batch({"ts": ["2026-06-14 07:14:20.000000000"]}), contract,
                          source, 1)["ts"][0].as_py()  # fmt: skip
    assert naive.isoformat() == "2026-06-14T07:14:20+00:00"


def test_large_sources_get_the_large_pod_class(tmp_path):
    import json

    from dw_pipelines.defs.k8s import LARGE_SOURCE_BYTES, k8s_config_tag

    big = tmp_path / "big.csv"
    with open(big, "wb") as handle:
        handle.truncate(LARGE_SOURCE_BYTES)  # sparse: no disk used
    small_job = job("SENT", None)
    large_job = OutboxJob(**{**small_job.__dict__, "payload": {"source_uri": str(big)}})
    assert (
        json.loads(k8s_config_tag(small_job)["dagster-k8s/config"])["container_config"][
            "resources"
        ]["limits"]["memory"]
        == "1Gi"
    )  # no file to see: the default (small) class
    assert (
        json.loads(k8s_config_tag(large_job)["dagster-k8s/config"])["container_config"][
            "resources"
        ]["limits"]["memory"]
        == "4Gi"
    )
