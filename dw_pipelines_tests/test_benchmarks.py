"""The committed benchmark scripts still run end to end and check what they load.

Small sizes: these keep `benchmarks/ingest.py` and `benchmarks/dispatch.py` working as the code
under them changes; they assert nothing about speed (docs/benchmarks.md holds the figures).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def run_benchmark(script: str, *args: str, server_url: str) -> dict:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DW_BENCH_SERVER_URL": server_url},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout)


def test_ingest_benchmark_loads_and_verifies_every_method(pg_server_url: str):
    # 20,000 rows (~1.8 MB) take the ADBC path with its reader thread, as large files do.
    document = run_benchmark(
        "ingest.py",
        "--rows",
        "20000",
        "--methods",
        "copy,ingest,ingest-merge,dagster",
        "--repeat",
        "1",
        server_url=pg_server_url,
    )
    results = {(r["method"], r["mode"]): r for r in document["results"]}
    assert set(results) == {
        ("copy", "append"),
        ("ingest", "append"),
        ("ingest-merge", "merge"),
        ("dagster", "append"),
    }
    for result in results.values():
        # The script counts and sums what each method left in its table (else it exits 1).
        assert result["verified_rows"] == 20000
        assert result["seconds"] > 0 and result["peak_rss_mb"] > 0
    assert results[("copy", "append")]["ratio_to_copy"] == 1.0


def test_dispatch_benchmark_measures_every_section(pg_server_url: str):
    document = run_benchmark("dispatch.py", "--quick", server_url=pg_server_url)
    measured = [(r["section"], r["measurement"]) for r in document["results"]]
    assert {section for section, _ in measured} == {"enqueue", "sensor", "imports", "runs"}
    runs = [m for section, m in measured if section == "runs"]
    # Both instances are measured, each with the trivial job on the same instance.
    for instance in ("SQLite", "Postgres"):
        assert f"{instance} instance: ratio" in runs
    sensor = {r["measurement"]: r for r in document["results"] if r["section"] == "sensor"}
    assert sensor["run requests per tick"]["value"] == 100
