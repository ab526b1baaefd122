"""One broken contract among good ones is a problem of its own dataset, and nobody else's.

Two teams' contracts with real-world headers and one broken contract sit in `DW_DATASETS_PATH`
(plus the shipped ones). Through the operator's real tools (the `dw-pipelines` CLI, the real
`dagster-webserver` and `dagster-daemon` on the shipped Postgres-backed `dagster.yaml`, and the
metrics exporter), this checks that:

* `datasets check` names the broken file, each field and reason, and exits 1;
* `enqueue` refuses the broken dataset with its contract's own error and accepts the others;
* the code location loads with every valid dataset; the UI (GraphQL) lists their assets, leaves
  the broken one out and shows it in the failed `contracts_valid` check of `dw/outbox_health`;
* every good job completes through the daemon, while a job enqueued for the broken dataset
  before it broke waits untouched in PENDING (no claim, no failure, no audit event);
* `/metrics` reports `dw_ingestion_contract_errors` per dataset: 0 for the valid ones.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR, Settings
from dw_pipelines_tests.ui_support import REPO_ROOT, DagsterStack, free_port, operator_env

pytestmark = pytest.mark.slow

DAY = "2026-11-30"
EVENTS = {
    "name": "events",
    "write_mode": "append",
    "primary_key": ["Event ID"],
    "columns": [
        {"name": "Event ID", "type": "int64", "nullable": False},
        {"name": "userName", "type": "string"},
        {"name": "Amount (EUR)", "type": "decimal(10,2)"},
        {"name": "Seen At", "type": "timestamp"},
    ],
    "csv": {"null_values": ["", "NA"]},
}
CLICKS = {
    "name": "clicks",
    "write_mode": "merge",
    "primary_key": ["Click-ID"],
    "columns": [
        {"name": "Click-ID", "type": "string", "nullable": False},
        {"name": "Page URL", "type": "string"},
        {"name": "Dwell %", "type": "float64"},
    ],
}
# Broken twice: an unknown type, and two file columns for one warehouse column.
BROKEN = {
    "name": "ledger",
    "write_mode": "append",
    "primary_key": [],
    "columns": [
        {"name": "Entry No", "type": "int64"},
        {"name": "entry_no", "type": "string"},
        {"name": "Booked", "type": "datetime"},
    ],
}
LEDGER_GOOD = {**BROKEN, "columns": BROKEN["columns"][:1]}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def world(pg_admin: sa.Engine, pg_server_url: str, pg_template: str, tmp_path_factory) -> Iterator:
    root = tmp_path_factory.mktemp("isolation")
    landing, contracts = root / "landing", root / "contracts"
    landing.mkdir()
    contracts.mkdir()
    operator = operator_env(
        pg_admin, pg_server_url, pg_template, root, "iso",
        DW_LANDING_ROOT=os.pathsep.join([str(landing), str(SAMPLES_DIR)]),
        DW_DATASETS_PATH=str(contracts),
        DW_HEALTH_INTERVAL_SECONDS="2",
    )  # fmt: skip
    home, dw_env, env = operator.home, operator.dw_env, operator.env
    (landing / "events.csv").write_text(
        "Event ID,userName,Amount (EUR),Seen At\r\n"
        "1,ana,12.50,2026-11-30 08:00:00\r\n"
        "2,NA,NA,2026-11-30T09:30:00+01:00\r\n"
        '3,"bo, jr",0.10,2026-11-30\r\n'
    )
    (landing / "clicks.json").write_text(
        json.dumps(
            [
                {"Click-ID": "c1", "Page URL": "/a?x=[1]", "Dwell %": 12.5},
                {"Click-ID": "c2", "Page URL": None, "Dwell %": 100},
            ],
            indent=2,
        )
    )
    (landing / "ledger.csv").write_text("Entry No\n1\n2\n")
    write_yaml(contracts / "events.yaml", EVENTS)
    write_yaml(contracts / "clicks.yaml", CLICKS)
    # The ledger team's contract was fine when its job was enqueued, and broke afterwards.
    ledger_file = write_yaml(contracts / "ledger.yaml", LEDGER_GOOD)
    queue = build_queue(Settings.from_env(dw_env))
    held = queue.enqueue(
        {"dataset": "ledger", "source_uri": str(landing / "ledger.csv"), "business_date": DAY}
    ).job
    write_yaml(ledger_file, BROKEN)
    queue = build_queue(Settings.from_env(dw_env))  # the contracts as they are now
    stack = DagsterStack(home=home, env=env, port=free_port(), logs=root / "logs")
    try:
        yield {
            "env": env,
            "queue": queue,
            "stack": stack,
            "landing": landing,
            "ledger": ledger_file,
            "held": held.job_id,
            "root": root,
        }
    finally:
        stack.stop()
        queue.engine.dispose()


def test_datasets_check_names_the_broken_file_its_fields_and_reasons(world) -> None:
    checked = cli(world["env"], "datasets", "check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    ledger = str(world["ledger"])
    lines = checked.stdout.splitlines()
    assert any(line.startswith("ok") and "events" in line for line in lines)
    assert any(line.startswith("ok") and "orders" in line for line in lines)
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1  # pydantic's shape errors come first: the unknown type
    assert f"{ledger}: columns[2].type: unknown type 'datetime'" in errors[0]
    assert lines[-1] == "4 valid, 1 refused"

    report = json.loads(cli(world["env"], "datasets", "check", "--json").stdout)
    assert report["ok"] is False
    broken = [f for f in report["files"] if not f["valid"]]
    assert broken == [
        {
            "file": ledger,
            "dataset": "ledger",
            "valid": False,
            "errors": [
                {
                    "field": "columns[2].type",
                    "reason": "unknown type 'datetime'; expected one of string, int64, "
                    "float64, bool, date, timestamp, decimal(p,s)",
                }
            ],
        }
    ]
    listed = json.loads(cli(world["env"], "datasets", "list", "--json").stdout)
    statuses = {entry["dataset"]: entry["status"] for entry in listed}
    assert statuses == {
        "clicks": "ok",
        "customers": "ok",
        "events": "ok",
        "ledger": "invalid",
        "orders": "ok",
    }
    events = next(e for e in listed if e["dataset"] == "events")
    assert events["columns"][2] == {
        "name": "Amount (EUR)",
        "column": "amount_eur",
        "type": "decimal(10,2)",
        "nullable": True,
    }
    assert events["primary_key"] == ["event_id"]


def test_enqueue_refuses_only_the_broken_dataset(world) -> None:
    env, landing = world["env"], world["landing"]
    refused = cli(
        env, "enqueue", "--dataset", "ledger", "--source", str(landing / "ledger.csv"),
        "--business-date", DAY,
    )  # fmt: skip
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: dataset: dataset 'ledger' cannot be used: ")
    assert f"invalid dataset contract {world['ledger']}: columns[2].type" in refused.stderr
    for dataset, name in (("events", "events.csv"), ("clicks", "clicks.json")):
        accepted = cli(
            env, "enqueue", "--dataset", dataset, "--source", str(landing / name),
            "--business-date", DAY, "--job-id", f"{dataset}-1", "--json",
        )  # fmt: skip
        assert accepted.returncode == 0, accepted.stderr
        assert json.loads(accepted.stdout)["status"] == "PENDING"
    orders = cli(
        env, "enqueue", "--dataset", "orders",
        "--source", str(SAMPLES_DIR / "orders_2026-11-24.csv"), "--business-date", "2026-11-24",
        "--job-id", "orders-1",
    )  # fmt: skip
    assert orders.returncode == 0, orders.stderr


ASSETS = """
{ assetNodes { assetKey { path } } }
"""
HEALTH_ASSET = """
{
  assetNodeOrError(assetKey: {path: ["dw", "outbox_health"]}) {
    ... on AssetNode {
      metadataEntries { label ... on MarkdownMetadataEntry { mdStr } }
      assetChecksOrError { ... on AssetChecks { checks { name } } }
    }
  }
}
"""
CHECK_EXECUTIONS = """
query($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 5) {
    status evaluation { success description }
  }
}
"""


def test_the_code_location_loads_and_the_daemon_completes_every_good_job(world) -> None:
    stack: DagsterStack = world["stack"]
    queue: DwIngestionJobQueue = world["queue"]
    stack.start()  # waits until the webserver has loaded dw_pipelines as a code location

    assets = {"/".join(n["assetKey"]["path"]) for n in stack.query(ASSETS)["assetNodes"]}
    assert {"staging/events", "storage/events", "staging/clicks", "storage/clicks"} <= assets
    assert {"storage/orders", "dw/outbox_health"} <= assets
    assert not {a for a in assets if a.endswith("/ledger")}

    node = stack.query(HEALTH_ASSET)["assetNodeOrError"]
    assert [c["name"] for c in node["assetChecksOrError"]["checks"]] == ["contracts_valid"]
    metadata = {e["label"]: e.get("mdStr") for e in node["metadataEntries"]}
    assert str(world["ledger"]) in metadata["contract_errors"]
    assert "unknown type 'datetime'" in metadata["contract_errors"]

    def failed_evaluation():
        executions = stack.query(
            CHECK_EXECUTIONS, {"path": ["dw", "outbox_health"], "name": "contracts_valid"}
        )["assetCheckExecutions"]
        return executions[0] if executions and executions[0]["evaluation"] else None

    execution = stack.wait_until(failed_evaluation, 120, "the contracts_valid evaluation")
    assert execution["evaluation"]["success"] is False
    assert "cannot be loaded" in execution["evaluation"]["description"]
    assert "ledger" in execution["evaluation"]["description"]

    good = ["events-1", "clicks-1", "orders-1"]
    stack.wait_until(
        lambda: all(queue.get(j).status in ("COMPLETED", "FAILED") for j in good),
        300,
        "the good jobs to settle",
    )
    assert {j: (queue.get(j).status, queue.get(j).last_error) for j in good} == {
        j: ("COMPLETED", None) for j in good
    }
    assert [queue.get(j).rows_loaded for j in good] == [3, 2, 6]
    with queue.engine.connect() as conn:
        events = conn.execute(
            sa.text(
                "SELECT event_id, user_name, amount_eur, seen_at FROM dw_storage.events "
                "ORDER BY event_id"
            )
        ).all()
        clicks = conn.execute(
            sa.text("SELECT click_id, page_url, dwell_percent FROM dw_storage.clicks ORDER BY 1")
        ).all()
    assert [(r[0], r[1], str(r[2]) if r[2] is not None else None) for r in events] == [
        (1, "ana", "12.50"),
        (2, None, None),
        (3, "bo, jr", "0.10"),
    ]
    assert [r[3].isoformat() for r in events] == [
        "2026-11-30T08:00:00+00:00",
        "2026-11-30T08:30:00+00:00",
        "2026-11-30T00:00:00+00:00",
    ]
    assert clicks == [("c1", "/a?x=[1]", 12.5), ("c2", None, 100.0)]

    # The job of the broken dataset waited: still PENDING, never claimed, nothing audited.
    held = queue.get(world["held"])
    assert (held.status, held.attempts, held.dagster_run_id, held.last_error) == (
        "PENDING",
        0,
        None,
        None,
    )
    assert [e.event for e in queue.audit_trail(world["held"])] == ["ENQUEUED"]
    shown = json.loads(cli(world["env"], "outbox", "show", world["held"], "--json").stdout)
    assert shown["contract_error"].startswith("dataset: dataset 'ledger' cannot be used")
    shown = json.loads(cli(world["env"], "outbox", "show", "events-1", "--json").stdout)
    assert {"name": "Amount (EUR)", "column": "amount_eur"} in shown["renamed_columns"]


def test_metrics_count_contract_errors_per_dataset(world) -> None:
    port = free_port()
    log_path = world["root"] / "exporter.log"
    with log_path.open("w") as log:
        exporter = subprocess.Popen(
            [sys.executable, "-m", "dw_pipelines.cli", "metrics", "serve", "--port", str(port),
             "--host", "127.0.0.1"],
            cwd=REPO_ROOT, env=world["env"], stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        body = None
        for _ in range(60):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert body is not None, log_path.read_text()
    finally:
        exporter.terminate()
        exporter.wait(timeout=15)
    errors = {
        s.labels["dataset"]: s.value
        for family in text_string_to_metric_families(body)
        if family.name == "dw_ingestion_contract_errors"
        for s in family.samples
    }
    assert errors == {"clicks": 0, "customers": 0, "events": 0, "ledger": 1, "orders": 0}
