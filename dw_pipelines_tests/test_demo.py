"""`dw-pipelines demo` on the embedded default (SQLite), with nothing configured.

It starts the real dagster-daemon, so this is the slowest test; `.ci/run` also runs `make demo`
from a fresh clone.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.slow


def test_demo_runs_the_jobs_through_the_daemon_and_reports_them(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DW_", "DAGSTER_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "dw_pipelines.cli", "demo", "--timeout", "240"],
        cwd=tmp_path,  # DW_HOME defaults to ./.dw
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "demo OK" in output
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("job "))
    table = lines[header + 2 : header + 7]
    statuses = {line.split()[2]: line.split()[3] for line in table}
    assert statuses == {
        "orders_2026-11-24.csv": "COMPLETED",
        "orders_2026-11-25.jsonl": "COMPLETED",
        "customers.csv": "COMPLETED",
        "customers_2026-11-25.parquet": "COMPLETED",
        "orders_bad.csv": "FAILED",
    }
    assert "line 3, row 2, column 'amount'" in output
    assert "SENT -> " in output  # the sensor dispatched them

    # The embedded default's files, and what the runs left in them.
    home = tmp_path / ".dw"
    assert {p.name for p in home.glob("*.db")} >= {"dw.db", "dw_staging.db", "dw_storage.db"}
    engine = sa.create_engine(f"sqlite:///{home / 'dw_storage.db'}")
    with engine.connect() as conn:
        orders = conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one()
        customers = conn.execute(sa.text("SELECT count(*) FROM customers")).scalar_one()
    engine.dispose()
    assert (orders, customers) == (10, 6)
