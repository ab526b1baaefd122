"""The Dagster UI as an operator uses it, through the real webserver and daemon.

One stack per module: `dagster-webserver` and `dagster-daemon` on the shipped `dagster.yaml`
(Postgres-backed instance), the outbox and warehouse in another fresh database. Everything an
operator does here goes through the webserver's GraphQL API (what the UI itself calls): list assets
and checks, launch a partition backfill, re-execute a failed run from failure. The browser test
drives headless Chromium against the same webserver.
"""

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR, Settings
from dw_pipelines_tests.ui_support import REPO_ROOT, DagsterStack, free_port, operator_env

pytestmark = pytest.mark.slow

ARTIFACTS = REPO_ROOT / "test-artifacts"
# Recent business dates, so the partitions page (newest first) shows them without scrolling.
TODAY = dt.datetime.now(dt.UTC).date()
BACKFILL_DAYS = [(TODAY - dt.timedelta(days=n)).isoformat() for n in (6, 5)]
REEXECUTION_DAY = (TODAY - dt.timedelta(days=4)).isoformat()
HEADER = "order_id,customer_id,order_date,amount,currency,status,is_gift,created_at,note\n"


def orders_csv(path: Path, first_id: int, rows: int, day: str, bad_row: int | None = None) -> Path:
    lines = [HEADER]
    for i in range(rows):
        amount = "twelve" if i == bad_row else f"{10 + i}.50"
        lines.append(
            f"{first_id + i},{100 + i},{day},{amount},EUR,paid,false,{day}T08:00:00Z,n{i}\n"
        )
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="module")
def stack(
    pg_admin: sa.Engine, pg_server_url: str, pg_template: str, tmp_path_factory
) -> Iterator[tuple[DagsterStack, DwIngestionJobQueue, Path]]:
    root = tmp_path_factory.mktemp("ui")
    landing = root / "landing"
    landing.mkdir()
    operator = operator_env(
        pg_admin, pg_server_url, pg_template, root, "ui",
        DW_LANDING_ROOT=os.pathsep.join([str(landing), str(SAMPLES_DIR)]),
        DW_HEALTH_INTERVAL_SECONDS="2",
    )  # fmt: skip
    home, dw_env, env = operator.home, operator.dw_env, operator.env
    dagster = DagsterStack(home=home, env=env, port=free_port(), logs=root / "logs")
    queue = build_queue(Settings.from_env(dw_env))
    try:
        dagster.start()
        yield dagster, queue, landing
    finally:
        dagster.stop()
        queue.engine.dispose()


def wait_for_status(stack: DagsterStack, queue, job_ids, statuses, timeout=240) -> None:
    def settled():
        return all(queue.get(j).status in statuses for j in job_ids)

    stack.wait_until(settled, timeout, f"jobs {job_ids} to reach {statuses}")


def storage_rows(queue: DwIngestionJobQueue, job_id: str | None = None) -> list[tuple]:
    with queue.engine.connect() as conn:
        query = "SELECT _dw_job_id, order_id FROM dw_storage.orders"
        if job_id:
            return conn.execute(
                sa.text(query + " WHERE _dw_job_id = :j ORDER BY order_id"), {"j": job_id}
            ).all()
        return conn.execute(sa.text(query + " ORDER BY _dw_job_id, order_id")).all()


ASSETS_QUERY = """
{
  assetNodes {
    assetKey { path }
    groupName
    kinds
    description
    owners { ... on UserAssetOwner { email } }
    assetChecksOrError { ... on AssetChecks { checks { name blocking description } } }
  }
}
"""


def test_assets_and_their_checks_are_listed(stack):
    dagster, _, _ = stack
    nodes = {"/".join(n["assetKey"]["path"]): n for n in dagster.query(ASSETS_QUERY)["assetNodes"]}
    assert {"staging/orders", "storage/orders", "staging/customers", "storage/customers"} <= set(
        nodes
    )
    assert "dw/outbox_health" in nodes
    storage = nodes["storage/orders"]
    assert storage["groupName"] == "orders"
    assert set(storage["kinds"]) == {"postgres", "table"}
    assert storage["owners"] == [{"email": "data-platform@example.com"}]
    assert "Customer orders" not in storage["description"]  # storage says what it is itself
    checks = {c["name"]: c for c in storage["assetChecksOrError"]["checks"]}
    assert set(checks) == {
        "rows_match_source", "primary_key_unique", "required_columns_not_null", "freshness",
    }  # fmt: skip
    staging_checks = nodes["staging/orders"]["assetChecksOrError"]["checks"]
    assert {c["name"] for c in staging_checks} == {
        "rows_match_source", "primary_key_unique", "required_columns_not_null",
    }  # fmt: skip
    assert all(c["blocking"] for c in staging_checks)
    assert "Customer orders as exported" in nodes["staging/orders"]["description"]


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } }
}
"""
RUNS_OF_BACKFILL = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}
"""
REEXECUTE = """
mutation($parent: String!) {
  launchPipelineReexecution(reexecutionParams: {parentRunId: $parent, strategy: FROM_FAILURE}) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
RUN_STATUS = """
query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }
"""
CHECK_EXECUTIONS = """
query($path: [String!]!, $name: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $name, limit: 20) {
    runId status evaluation { success description }
  }
}
"""


def check_executions(dagster: DagsterStack, path: list[str], name: str) -> list[dict]:
    return dagster.query(CHECK_EXECUTIONS, {"path": path, "name": name})["assetCheckExecutions"]


def test_a_backfill_of_two_partitions_reloads_every_job_once(stack):
    dagster, queue, landing = stack
    days = dict(zip(BACKFILL_DAYS, (1000, 2000), strict=True))
    jobs = {}
    for day, first in days.items():
        for part, tenant in enumerate(("acme", "globex")):
            path = orders_csv(landing / f"orders_{day}_{tenant}.csv", first + 100 * part, 7, day)
            job = queue.enqueue(
                {"dataset": "orders", "tenant_id": tenant, "source_uri": str(path),
                 "business_date": day}
            ).job  # fmt: skip
            jobs[job.job_id] = job
    wait_for_status(dagster, queue, jobs, {"COMPLETED"})
    first_load = storage_rows(queue)
    assert len(first_load) == 4 * 7
    sensor_runs = {queue.get(j).dagster_run_id for j in jobs}

    launched = dagster.query(
        BACKFILL,
        {
            "params": {
                "partitionNames": list(days),
                "assetSelection": [{"path": ["storage", "orders"]}],
            }
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def backfill_done():
        status = dagster.query(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return status["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED")

    dagster.wait_until(backfill_done, 300, f"backfill {backfill_id}")
    runs = dagster.query(RUNS_OF_BACKFILL, {"id": backfill_id})["runsOrError"]["results"]
    assert len(runs) == 2 and {r["status"] for r in runs} == {"SUCCESS"}, runs
    backfill_runs = {r["runId"] for r in runs}

    # Every job re-loaded by one of the backfill's runs, storage exactly as before (no duplicate).
    for job_id in jobs:
        row = queue.get(job_id)
        assert row.status == "COMPLETED" and row.rows_loaded == 7
        assert row.dagster_run_id in backfill_runs
        trail = queue.audit_trail(job_id)
        assert {e.run_id for e in trail if e.event == "PROMOTED"} >= {row.dagster_run_id}
        assert any(e.run_id in sensor_runs for e in trail)  # the first load stays on record
    assert sorted(storage_rows(queue)) == sorted(first_load)
    with queue.engine.connect() as conn:
        duplicates = conn.execute(
            sa.text("SELECT order_id FROM dw_storage.orders GROUP BY order_id HAVING count(*) > 1")
        ).all()
    assert duplicates == []

    # The storage checks ran in the backfill runs and passed.
    executions = check_executions(dagster, ["storage", "orders"], "rows_match_source")
    evaluated = {
        e["runId"]: e["evaluation"]["success"]
        for e in executions
        if e["runId"] in backfill_runs and e["evaluation"]
    }
    assert evaluated == {run: True for run in backfill_runs}, executions


def test_a_failed_run_reexecuted_from_failure_completes_its_job(stack):
    dagster, queue, landing = stack
    day = REEXECUTION_DAY
    path = orders_csv(landing / "orders_fixable.csv", 5000, 6, day, bad_row=2)
    job = queue.enqueue(
        {"dataset": "orders", "source_uri": str(path), "business_date": day}
    ).job  # fmt: skip
    wait_for_status(dagster, queue, [job.job_id], {"FAILED"})
    failed = queue.get(job.job_id)
    assert "column 'amount'" in failed.last_error and "line 4" in failed.last_error
    assert storage_rows(queue, job.job_id) == []

    def run_status(run_id: str) -> str:
        return dagster.query(RUN_STATUS, {"id": run_id})["runOrError"]["status"]

    # The row says FAILED a moment before the run itself ends.
    dagster.wait_until(lambda: run_status(failed.dagster_run_id) == "FAILURE", 60, "the run")
    orders_csv(path, 5000, 6, day)  # the operator fixes the file in the landing zone
    launched = dagster.query(REEXECUTE, {"parent": failed.dagster_run_id})[
        "launchPipelineReexecution"
    ]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    new_run = launched["run"]["runId"]

    def run_finished():
        status = run_status(new_run)
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert dagster.wait_until(run_finished, 240, f"re-execution {new_run}") == "SUCCESS"
    done = queue.get(job.job_id)
    assert (done.status, done.rows_loaded, done.dagster_run_id) == ("COMPLETED", 6, new_run)
    assert [r.order_id for r in storage_rows(queue, job.job_id)] == list(range(5000, 5006))
    trail = [(e.event, e.run_id) for e in queue.audit_trail(job.job_id)]
    assert ("FAILED", failed.dagster_run_id) in [(e, r) for e, r in trail]
    assert trail[-1] == ("COMPLETED", new_run)

    # The blocking staging checks passed in the re-execution before promotion.
    staged = check_executions(dagster, ["staging", "orders"], "primary_key_unique")
    assert [e["evaluation"]["success"] for e in staged if e["runId"] == new_run] == [True], staged
    # In the failed run the step failed validation before any check ran: no verdict.
    assert [e["status"] for e in staged if e["runId"] == failed.dagster_run_id] == [
        "EXECUTION_FAILED"
    ]


HEALTH = """
{
  assetOrError(assetKey: {path: ["dw", "outbox_health"]}) {
    ... on Asset {
      assetObservations(limit: 1) {
        metadataEntries { label ... on IntMetadataEntry { intValue } }
      }
    }
  }
}
"""


def test_the_outbox_health_asset_shows_the_queue(stack):
    dagster, queue, _ = stack
    expected = queue.count_by_status()

    def observed():
        observations = dagster.query(HEALTH)["assetOrError"]["assetObservations"]
        if not observations:
            return None
        entries = {e["label"]: e.get("intValue") for e in observations[0]["metadataEntries"]}
        counts = {s: entries.get(s.lower()) for s in ("COMPLETED", "FAILED", "PENDING")}
        wanted = {s: expected.get(s, 0) for s in counts}
        return entries if counts == wanted else None

    entries = dagster.wait_until(observed, 60, "an outbox health observation")
    assert "latest_failures" in entries and "oldest_pending_age_seconds" in entries
    freshness = check_executions(dagster, ["storage", "orders"], "freshness")
    assert freshness and freshness[0]["evaluation"]["success"] is True


def test_the_asset_graph_and_partitions_page_render_in_chromium(stack):
    """Headless Chromium (Debian's `chromium`, driven by Playwright) against the webserver:
    the pages an operator opens first, with screenshots kept under test-artifacts/ui/."""
    from playwright.sync_api import expect, sync_playwright

    dagster, _, _ = stack
    shots = ARTIFACTS / "ui"
    shots.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is not installed (.ci/run installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)

            def open_page(path: str) -> None:
                page.goto(f"{dagster.url}{path}")
                page.wait_for_load_state("networkidle")
                skip = page.get_by_role("button", name="Skip")  # first-visit newsletter dialog
                if skip.count():
                    skip.click()

            # The orders group's lineage: staging -> storage, with kinds and check summaries.
            open_page("/locations/dw_pipelines/asset-groups/orders")
            expect(page.get_by_text("Asset checks").nth(1)).to_be_visible()
            assert page.get_by_text("orders", exact=True).count() >= 3  # title + two nodes
            for kind in ("Postgres", "Parquet", "Table"):
                expect(page.get_by_text(kind, exact=True).first).to_be_visible()
            expect(page.get_by_text("3 / 3 Passed")).to_be_visible()  # staging's blocking checks
            page.screenshot(path=str(shots / "orders-lineage.png"), full_page=True)

            # storage/orders partitions: the business dates loaded and backfilled above.
            open_page("/assets/storage/orders?view=partitions")
            expect(page.get_by_text("Materialized (", exact=False).first).to_be_visible()
            expect(page.get_by_text(BACKFILL_DAYS[0]).first).to_be_visible()
            expect(page.get_by_role("button", name="Materialize…").first).to_be_visible()
            page.screenshot(path=str(shots / "storage-orders-partitions.png"), full_page=True)

            # Its checks, including the dataset's freshness.
            open_page("/assets/storage/orders?view=checks")
            for check in ("rows_match_source", "primary_key_unique", "freshness"):
                expect(page.get_by_text(check).first).to_be_visible()
            expect(page.get_by_text("Execute all")).to_be_visible()
            page.screenshot(path=str(shots / "storage-orders-checks.png"), full_page=True)
        finally:
            browser.close()
    for name in ("orders-lineage", "storage-orders-partitions", "storage-orders-checks"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
