"""`DW_LOG_FORMAT=json`: a real run's log lines, parsed back, one JSON object each, with the
job's fields, and never a secret."""

import datetime as dt
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from dw_pipelines.core.db import outbox
from dw_pipelines.core.logs import JsonFormatter, log_extra, redact
from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "pw-Zq8-never-logged"
SOURCE_SECRET = "s3cr3t-in-a-uri"
RUN_SCRIPT = """
import sys
import dagster as dg
from dw_pipelines.definitions import defs

job = defs.resolve_job_def("dw_ingestion_job")
with dg.instance_for_test() as instance:
    for job_id in sys.argv[1:]:
        result = job.execute_in_process(
            instance=instance,
            partition_key="2026-11-24",
            tags={"dw/job_id": job_id},
            asset_selection=[dg.AssetKey(["staging", "orders"]),
                             dg.AssetKey(["storage", "orders"])],
            raise_on_error=False,
        )
        print("RUN", job_id, result.run_id, result.success, flush=True)
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg://dw:hunter2@db:5432/dw", "postgresql+psycopg://***@db:5432/dw"),
        ("s3://AKIA:secret@bucket/key.csv failed", "s3://***@bucket/key.csv failed"),
        ("host=db password=hunter2 user=dw", "host=db password=*** user=dw"),
        ("password = 'a b c' sslmode=require", "password = *** sslmode=require"),
        ("s3://bucket/key.csv", "s3://bucket/key.csv"),
        ("/landing/a@b.csv", "/landing/a@b.csv"),
    ],
)
def test_redact_masks_credentials_and_nothing_else(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_a_record_becomes_one_json_object_with_the_job_fields() -> None:
    record = logging.LogRecord(
        "dw_pipelines.x", logging.WARNING, __file__, 1, "at %s", ("db",), None
    )
    for key, value in log_extra("staged", job_id="j1", dataset="orders", tenant="acme").items():
        setattr(record, key, value)
    record.dagster_meta = {"run_id": "r1", "step_key": "staging__orders", "orig_message": "at db"}

    document = json.loads(JsonFormatter().format(record))

    assert document == {
        "ts": document["ts"],
        "level": "warning",
        "logger": "dw_pipelines.x",
        "event": "staged",
        "job_id": "j1",
        "dataset": "orders",
        "tenant": "acme",
        "run_id": "r1",
        "message": "at db",
        "step": "staging__orders",
    }
    assert dt.datetime.fromisoformat(document["ts"]).tzinfo is not None


def test_the_log_format_is_validated() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"DW_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(Exception, match="DW_LOG_FORMAT must be one of text, json"):
        Settings.from_env({"DW_LOG_FORMAT": "xml"})


def test_a_real_runs_lines_parse_back_as_json_with_the_job_fields(pg_url: str, dw_env) -> None:
    url = sa.make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    settings = dw_env(url, DW_LOG_FORMAT="json", DW_RETRY_MAX_RETRIES=0)
    queue = build_queue(settings)
    try:
        good = queue.enqueue(
            {"dataset": "orders", "source_uri": str(SAMPLES_DIR / "orders_2026-11-24.csv"),
             "business_date": "2026-11-24", "tenant_id": "acme"}
        ).job  # fmt: skip
        bad_uri = f"s3://AKIAEXAMPLE:{SOURCE_SECRET}@dw-landing/uploads/x.csv"
        now = dt.datetime.now(dt.UTC)
        payload = {
            "job_id": "bad-source", "idempotency_key": "bad-source", "tenant_id": "acme",
            "dataset": "orders", "source_uri": bad_uri, "format": "csv",
            "business_date": "2026-11-24", "requested_at": "2026-11-24T08:00:00Z",
        }  # fmt: skip
        with queue.engine.begin() as conn:
            conn.execute(
                outbox.insert().values(
                    job_id="bad-source", idempotency_key="bad-source", tenant_id="acme",
                    dataset="orders", business_date=dt.date(2026, 11, 24), payload=payload,
                    status="PENDING", attempts=0, next_attempt_at=now, created_at=now,
                    updated_at=now,
                )
            )  # fmt: skip
        queue.claim_due(10)

        ran = subprocess.run(
            [sys.executable, "-c", RUN_SCRIPT, good.job_id, "bad-source"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    finally:
        queue.engine.dispose()

    assert ran.returncode == 0, ran.stderr[-3000:]
    runs = {
        line.split()[1]: line.split() for line in ran.stdout.splitlines() if line.startswith("RUN")
    }
    assert runs[good.job_id][3] == "True" and runs["bad-source"][3] == "False"
    lines = [line for line in ran.stderr.splitlines() if line.startswith("{")]
    documents = [json.loads(line) for line in lines]  # every one parses
    assert len(documents) > 20  # Dagster's own events are JSON lines too
    assert all({"ts", "level", "event", "message", "run_id"} <= d.keys() for d in documents)
    ours = {(d["event"], d["job_id"]): d for d in documents if d["job_id"]}
    good_run = runs[good.job_id][2]
    for event in ("staging", "staged", "promoted"):
        document = ours[(event, good.job_id)]
        assert (document["dataset"], document["tenant"], document["run_id"]) == (
            "orders", "acme", good_run,
        ), document  # fmt: skip
        assert document["level"] == "info"
    assert "staged 6 rows" in ours[("staged", good.job_id)]["message"]
    failed = ours[("job_failed", "bad-source")]
    assert failed["level"] == "error" and failed["run_id"] == runs["bad-source"][2]
    assert {d["event"] for d in documents} >= {"step_start", "step_success", "step_failure"}
    for secret in (PASSWORD, SOURCE_SECRET):
        assert secret not in ran.stderr and secret not in ran.stdout
