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
    # 20,000 rows (~1.8 MB) take the ADBC path with its reader thread, as large files do, and
    # with the attach threshold below them, attach promotion (ingest-copy: the copy).
    document = run_benchmark(
        "ingest.py",
        "--rows",
        "20000",
        "--methods",
        "copy,ingest,ingest-copy,ingest-merge,dagster",
        "--attach-min-rows",
        "10000",
        "--repeat",
        "1",
        server_url=pg_server_url,
    )
    results = {(r["method"], r["mode"]): r for r in document["results"]}
    assert set(results) == {
        ("copy", "append"),
        ("ingest", "append"),
        ("ingest-copy", "append"),
        ("ingest-merge", "merge"),
        ("dagster", "append"),
    }
    promotion = {method: r["promotion"] for (method, _), r in results.items()}
    assert promotion["ingest"] == "attach" and promotion["ingest-copy"] == "insert"
    assert promotion["ingest-merge"] in ("in-place", "rewrite")
    for result in results.values():
        # The script counts and sums what each method left in its table (else it exits 1).
        assert result["verified_rows"] == 20000
        assert result["seconds"] > 0 and result["peak_rss_mb"] > 0
    assert results[("copy", "append")]["ratio_to_copy"] == 1.0


def test_dispatch_benchmark_measures_every_section(pg_server_url: str):
    document = run_benchmark("dispatch.py", "--quick", server_url=pg_server_url)
    measured = [(r["section"], r["measurement"]) for r in document["results"]]
    assert {section for section, _ in measured} == {
        "enqueue",
        "sensor",
        "imports",
        "runs",
        "same-shape",
    }
    runs = [m for section, m in measured if section == "runs"]
    # Both instances are measured, each with the trivial job on the same instance.
    for instance in ("SQLite", "Postgres"):
        assert f"{instance} instance: ratio" in runs
    sensor = {r["measurement"]: r for r in document["results"] if r["section"] == "sensor"}
    assert sensor["run requests per tick"]["value"] == 100


def test_concurrency_benchmark_runs_four_datasets_at_once(pg_server_url: str):
    document = run_benchmark(
        "concurrency.py", "--rows", "5000", "--mode", "service", server_url=pg_server_url
    )
    # The shipped run-coordinator limits, read from helm-values.yaml, let all four start.
    assert document["coordinator"]["allowed_at_once"] == 4
    phases = {p["phase"]: p for p in document["summary"]["phases"]}
    assert (phases["single"]["rows"], phases["concurrent"]["rows"]) == (5000, 20000)
    assert all(p["rows_per_second"] > 0 for p in phases.values())
    # Every lock wait the sampler saw is counted; its longest is what the target judges.
    assert document["summary"]["lock_waits"] >= 0 and "longest_wait_s" in document["summary"]


def test_attach_benchmark_verifies_every_promotion(pg_server_url: str):
    document = run_benchmark(
        "attach.py",
        "--rows",
        "5000",
        "--repeat",
        "1",
        "--default-rows",
        "none,0",
        server_url=pg_server_url,
    )
    methods = {(r["method"], r["default_rows"]) for r in document["results"]}
    # The script compares each attach variant's storage with today's INSERT ... SELECT (row
    # count, sum and a checksum over every data and lineage column), else it exits 1.
    assert {m for m, _ in methods} == {"copy", "ingest", "attach-a", "attach-b"}
    attach = [r for r in document["results"] if r["method"].startswith("attach")]
    assert {r["default_rows"] for r in attach} == {None, 0}
    assert all(r["seconds"] > 0 for r in document["results"])


def test_dispatch_same_shape_compares_like_with_like(pg_server_url: str):
    document = run_benchmark(
        "dispatch.py", "--sections", "same-shape", "--quick", server_url=pg_server_url
    )
    rows = {r["measurement"]: r for r in document["results"]}
    for instance in ("SQLite", "Postgres"):
        noop = next(m for m in rows if m.startswith(f"{instance} instance: no-op job"))
        # The no-op job copies the real assets' checks: the six load checks.
        assert "6 checks" in noop
        assert rows[f"{instance} instance: ratio"]["value"] > 0
        share = next(r for m, r in rows.items() if m.startswith(f"{instance} instance: our steps"))
        assert 0 < share["value"] < 1


def test_dispatch_throughput_goes_through_the_real_daemon(pg_server_url: str):
    document = run_benchmark(
        "dispatch.py",
        "--sections",
        "throughput",
        "--quick",
        "--throughput-jobs",
        "4",
        server_url=pg_server_url,
    )
    rows = {r["measurement"]: r for r in document["results"]}
    # The script stops with an error unless every outbox job ended COMPLETED with its 10 rows
    # and every trivial run SUCCESS; here it reports both rates and their ratio.
    ingestion = next(r for m, r in rows.items() if m.startswith("ingestion: 4 ten-row jobs"))
    reference = next(r for m, r in rows.items() if m.startswith("reference: 4 runs"))
    assert (ingestion["unit"], reference["unit"]) == ("jobs/min", "runs/min")
    assert ingestion["value"] > 0 and reference["value"] > 0
    ratio = rows["ratio ingestion / reference"]["value"]
    assert abs(ratio - ingestion["value"] / reference["value"]) < 0.01


def test_ingest_benchmark_merges_a_delta_into_tables_of_two_sizes(pg_server_url: str):
    document = run_benchmark(
        "ingest.py",
        "--table-rows",
        "5000,20000",
        "--rows",
        "1000",
        "--methods",
        "copy,ingest-merge",
        server_url=pg_server_url,
    )
    merges = {r["table_rows"]: r for r in document["results"] if r["method"] == "ingest-merge"}
    # The script checks each merge's table: N + 10 % new keys, and the delta's values.
    assert set(merges) == {5000, 20000}
    assert all(r["verified_rows"] == n + 100 for n, r in merges.items())
    appends = [r for r in document["results"] if r["method"] == "ingest"]
    assert appends and all(r["table_rows"] == 0 for r in appends)  # added as the reference


def test_ingest_benchmark_merges_a_delta_of_the_tables_last_keys(pg_server_url: str):
    document = run_benchmark(
        "ingest.py",
        "--table-rows",
        "5000",
        "--rows",
        "1000",
        "--delta-keys",
        "recent",
        "--methods",
        "ingest-merge",
        server_url=pg_server_url,
    )
    assert document["config"]["delta_keys"] == "recent"
    (merge,) = [r for r in document["results"] if r["method"] == "ingest-merge"]
    # Verified by the script: 5,000 + 100 new keys, and the changed values of keys 4,101..5,000.
    assert (merge["table_rows"], merge["verified_rows"]) == (5000, 5100)
