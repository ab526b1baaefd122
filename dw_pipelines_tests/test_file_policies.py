"""Files whose columns differ from the contract, end to end on PostgreSQL and SQLite.

A contract with `extra_columns: ignore` and `missing_columns: null` loads a file with columns
it does not declare and without a nullable one: storage holds the declared columns, NULL where
the file had none, and the job's audit trail (what `dw-pipelines outbox show` prints) and the
staging asset's metadata say which columns were left out and which were filled. Without the
policies the same file is refused, saying how to accept it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
import yaml

import dw_pipelines
from dw_pipelines.core.errors import ContractViolation
from dw_pipelines.core.outbox import STAGED
from dw_pipelines.defs.assets import _staging_metadata
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings

COLUMNS = [
    {"name": "Order ID", "type": "int64", "nullable": False},
    {"name": "amount", "type": "decimal(10,2)"},
    {"name": "note", "type": "string"},
    {"name": "day", "type": "date"},
]
# The file: two undeclared columns around the declared ones, and no `note`.
RECORDS = [
    {"Coupon": "A1", "Order ID": 1, "amount": "10.50", "day": "2026-11-23", "Region": "north"},
    {"Coupon": None, "Order ID": 2, "amount": "3.25", "day": "2026-11-24", "Region": "south"},
]
STORED = [(1, "10.50", None, "2026-11-23"), (2, "3.25", None, "2026-11-24")]


def service_for(url: str, tmp: Path, landing: Path, mode: str = "append", **policies: str):
    folder = tmp / "contracts"
    folder.mkdir(exist_ok=True)
    document = {
        "name": "sales",
        "write_mode": mode,
        "primary_key": ["Order ID"],
        "columns": COLUMNS,
        **policies,
    }
    (folder / "sales.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    settings = make_settings(url, tmp / "home", landing, DW_DATASETS_PATH=folder)
    return settings, build_service(settings)


def write(landing: Path, fmt: str, records: list[dict], name: str = "sales") -> Path:
    path = landing / f"{name}.{fmt}"
    if fmt == "csv":
        header = list(records[0])
        lines = [",".join(header)]
        lines += [",".join("" if r[h] is None else str(r[h]) for h in header) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def load(service, source: Path, run_id: str):
    """Enqueue, stage and promote one file; returns the job and its stage result."""
    job = service.queue.enqueue(
        {"dataset": "sales", "source_uri": str(source), "business_date": "2026-11-24"}
    ).job
    staged = service.stage(service.start(job.job_id, run_id), run_id)
    service.promote(job.job_id, run_id)
    return service.queue.get(job.job_id), staged


def stored(service) -> list[tuple]:
    """Storage rows, decimals and dates as text (the same on both databases)."""
    with service.warehouse.engine.connect() as conn:
        result = conn.execute(
            sa.text("SELECT order_id, amount, note, day FROM dw_storage.sales ORDER BY order_id")
        )
        rows = result.all()
    return [
        tuple(v if v is None or isinstance(v, (str, int)) else f"{v}" for v in row) for row in rows
    ]


def staged_details(service, job_id: str) -> dict:
    (event,) = [e for e in service.queue.audit_trail(job_id) if e.event == STAGED]
    return event.details or {}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ignored_and_filled_columns_load_and_are_audited(
    db_url: str, tmp_path: Path, landing_dir: Path, fmt: str
) -> None:
    _, service = service_for(
        db_url, tmp_path, landing_dir, extra_columns="ignore", missing_columns="null"
    )
    try:
        job, result = load(service, write(landing_dir, fmt, RECORDS), "run-1")
        assert job.status == "COMPLETED"
        assert stored(service) == STORED
        assert (result.ignored_columns, result.missing_columns) == (("Coupon", "Region"), ("note",))
        details = staged_details(service, job.job_id)
        assert details["ignored_columns"] == ["Coupon", "Region"]
        assert details["missing_columns"] == ["note"]
        assert details["rows"] == 2
        metadata = _staging_metadata([(job, result)], None)
        assert (metadata["ignored_columns"], metadata["missing_columns"]) == (
            "Coupon, Region",
            "note",
        )
    finally:
        dispose(service)


def test_json_extra_keys_are_ignored_and_absent_ones_are_null(
    db_url: str, tmp_path: Path, landing_dir: Path
) -> None:
    _, service = service_for(db_url, tmp_path, landing_dir, extra_columns="ignore")
    try:
        records = [{k: v for k, v in r.items() if v is not None} for r in RECORDS]
        job, _ = load(service, write(landing_dir, "jsonl", records), "run-1")
        assert stored(service) == STORED
        details = staged_details(service, job.job_id)
        assert details["ignored_columns"] == ["Coupon", "Region"]  # the first record's
        assert "missing_columns" not in details  # absent JSON keys are NULL under any policy
    finally:
        dispose(service)


def test_a_file_that_matches_has_no_policy_details(
    db_url: str, tmp_path: Path, landing_dir: Path
) -> None:
    _, service = service_for(
        db_url, tmp_path, landing_dir, extra_columns="ignore", missing_columns="null"
    )
    try:
        records = [{"Order ID": 1, "amount": "1.00", "note": "x", "day": "2026-11-24"}]
        job, result = load(service, write(landing_dir, "csv", records), "run-1")
        details = staged_details(service, job.job_id)
        assert "ignored_columns" not in details and "missing_columns" not in details
        metadata = _staging_metadata([(job, result)], None)
        assert "ignored_columns" not in metadata and "missing_columns" not in metadata
    finally:
        dispose(service)


def test_without_the_policies_the_file_is_refused_with_how_to_accept_it(
    db_url: str, tmp_path: Path, landing_dir: Path
) -> None:
    _, service = service_for(db_url, tmp_path, landing_dir)
    try:
        source = write(landing_dir, "csv", RECORDS)
        job = service.queue.enqueue(
            {"dataset": "sales", "source_uri": str(source), "business_date": "2026-11-24"}
        ).job
        with pytest.raises(ContractViolation) as caught:
            service.stage(service.start(job.job_id, "run-1"), "run-1")
        assert str(caught.value) == (
            "sales.csv, line 1: missing column(s) 'note'; the file has 'Coupon', 'Order ID', "
            "'amount', 'day', 'Region'; set `missing_columns: null` in the contract to load "
            "nullable columns a file lacks as NULL"
        )
        with service.warehouse.engine.connect() as conn:
            staged = conn.execute(sa.text("SELECT count(*) FROM dw_staging.sales")).scalar()
        assert staged == 0
    finally:
        dispose(service)
    _, service = service_for(db_url, tmp_path, landing_dir, missing_columns="null")
    try:
        job = service.queue.enqueue(
            {
                "dataset": "sales",
                "source_uri": str(source),
                "business_date": "2026-11-24",
                "job_id": "second",
            }
        ).job
        with pytest.raises(ContractViolation) as caught:
            service.stage(service.start(job.job_id, "run-2"), "run-2")
        assert str(caught.value).startswith("sales.csv, line 1: unexpected column(s) 'Coupon', ")
        assert str(caught.value).endswith(
            "; set `extra_columns: ignore` in the contract to load the file without them"
        )
    finally:
        dispose(service)


def test_merge_with_a_missing_column_stores_null_for_it(
    db_url: str, tmp_path: Path, landing_dir: Path
) -> None:
    # A filled column is loaded as NULL like any other value: a merge replaces what storage
    # held for the file's keys.
    _, service = service_for(db_url, tmp_path, landing_dir, "merge", missing_columns="null")
    try:
        first = [{"Order ID": 1, "amount": "1.00", "note": "keep?", "day": "2026-11-23"}]
        load(service, write(landing_dir, "csv", first, "first"), "run-1")
        second = [{"Order ID": 1, "amount": "2.00"}, {"Order ID": 2, "amount": "5.00"}]
        job, _ = load(service, write(landing_dir, "csv", second, "second"), "run-2")
        assert stored(service) == [(1, "2.00", None, None), (2, "5.00", None, None)]
        assert staged_details(service, job.job_id)["missing_columns"] == ["note", "day"]
    finally:
        dispose(service)


def test_outbox_show_prints_the_policy_details(
    pg_url: str, tmp_path: Path, landing_dir: Path
) -> None:
    settings, service = service_for(
        pg_url, tmp_path, landing_dir, extra_columns="ignore", missing_columns="null"
    )
    try:
        job, _ = load(service, write(landing_dir, "csv", RECORDS), "run-1")
    finally:
        dispose(service)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
    env.update(
        DW_HOME=str(settings.home),
        DW_DATABASE_URL=pg_url,
        DW_DATASETS_PATH=str(settings.datasets_path),
        # The checkout under test, never an older installed copy.
        PYTHONPATH=str(Path(dw_pipelines.__file__).resolve().parent.parent),
    )
    shown = subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", "outbox", "show", job.job_id, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (details,) = [e["details"] for e in json.loads(shown.stdout)["audit"] if e["event"] == STAGED]
    assert (details["ignored_columns"], details["missing_columns"]) == (
        ["Coupon", "Region"],
        ["note"],
    )
