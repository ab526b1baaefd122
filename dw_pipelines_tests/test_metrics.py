"""Integration tier: `dw-pipelines metrics serve` as a subprocess, scraped over HTTP, on PostgreSQL.

The outbox is filled through the queue API (enqueue, claim, start, retry, complete, fail, dead
letter, requeue) with an injected clock, so every value the exporter reports is known exactly;
only the lag depends on the wall clock and is checked within a window.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

import dw_pipelines
from dw_pipelines.core.db import utcnow
from dw_pipelines.core.outbox import DwIngestionJobQueue
from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR
from dw_pipelines_tests.conftest import make_settings

SOURCE_ROOT = Path(dw_pipelines.__file__).resolve().parent.parent
PASSWORD = "m3trics-s3cret-pw"
PENDING_AGE = 100.0


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, base: datetime, seconds: float) -> None:
        self.now = base + timedelta(seconds=seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Exporter:
    def __init__(self, proc: subprocess.Popen, base: str, log_path: Path) -> None:
        self.proc = proc
        self.base = base
        self.log_path = log_path

    def get(self, path: str) -> tuple[int, str]:
        return get(self.base + path)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200, body
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture
def start_exporter(tmp_path: Path, landing_dir: Path) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start(url: str, **extra_env: str) -> Exporter:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DW_")}
        env.update(
            DW_HOME=str(tmp_path / "dw-home"),
            DW_DATABASE_URL=url,
            DW_LANDING_ROOT=os.pathsep.join([str(landing_dir), str(SAMPLES_DIR)]),
            DW_METRICS_CONNECT_TIMEOUT_SECONDS="2",
            DW_METRICS_STATEMENT_TIMEOUT_MS="3000",
            PYTHONPATH=os.pathsep.join(
                p for p in [str(SOURCE_ROOT), os.environ.get("PYTHONPATH", "")] if p
            ),
            **extra_env,
        )
        log_path = tmp_path / f"exporter-{port}.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dw_pipelines.cli",
                    "metrics",
                    "serve",
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                ],
                env=env,
                cwd=tmp_path,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        exporter = Exporter(proc, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, exporter.log()
            try:
                if exporter.get("/healthz")[0] == 200:
                    return exporter
            except OSError:
                pass
            assert time.monotonic() < deadline, exporter.log()
            time.sleep(0.1)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def fill(queue: DwIngestionJobQueue, clock: Clock) -> None:
    """Jobs in every state, with known timings, relative to a base two hours ago."""
    base = utcnow() - timedelta(hours=2)

    def cmd(job_id: str, dataset: str) -> dict:
        source = "orders_2026-11-24.csv" if dataset == "orders" else "customers.csv"
        return {
            "job_id": job_id,
            "dataset": dataset,
            "source_uri": str(SAMPLES_DIR / source),
            "business_date": "2024-01-02",
        }

    clock.at(base, 0)
    for job_id, dataset in [
        ("c1", "orders"),
        ("c2", "orders"),
        ("r1", "orders"),
        ("s1", "orders"),
        ("c3", "customers"),
        ("f1", "customers"),
        ("d1", "customers"),
    ]:
        queue.enqueue(cmd(job_id, dataset))
    assert len(queue.claim_due(100)) == 7  # all SENT; s1 stays there

    # r1: PROCESSING, waiting for its first retry.
    clock.at(base, 5)
    queue.start("r1", "run-r1")
    queue.schedule_retry("r1", "run-r1", "lost connection", 30, 1)

    # c1: 20 s run, 10 rows.
    clock.at(base, 10)
    queue.start("c1", "run-c1")
    clock.at(base, 30)
    queue.complete("c1", "run-c1", 10, {})

    # c2: fails, is requeued and completes in a second run of 45 s (from its last STARTED).
    clock.at(base, 10)
    queue.start("c2", "run-c2a")
    clock.at(base, 15)
    queue.fail("c2", "run-c2a", "disk full")
    clock.at(base, 100)
    queue.requeue("c2", "run-c2b", "tester")
    clock.at(base, 500)
    queue.start("c2", "run-c2b")
    clock.at(base, 545)
    queue.complete("c2", "run-c2b", 5, {})

    # c3: a 4000 s run, beyond the last finite bucket.
    clock.at(base, 10)
    queue.start("c3", "run-c3")
    clock.at(base, 4010)
    queue.complete("c3", "run-c3", 7, {})

    # f1: failed by the sensor (no run); d1: two retries, then dead-lettered.
    clock.at(base, 20)
    queue.fail("f1", None, "unknown dataset", require_run=False)
    queue.start("d1", "run-d1")
    queue.schedule_retry("d1", "run-d1", "timeout", 10, 1)
    queue.schedule_retry("d1", "run-d1", "timeout", 20, 2)
    clock.at(base, 60)
    queue.dead_letter("d1", "run-d1", "timeout", 3)

    # Pending: two due (the oldest PENDING_AGE seconds old), one not due for an hour.
    now = utcnow()
    clock.now = now - timedelta(seconds=PENDING_AGE)
    queue.enqueue(cmd("p1", "orders"))
    clock.now = now - timedelta(seconds=50)
    queue.enqueue(cmd("p2", "customers"))
    clock.now = now + timedelta(hours=1)
    queue.enqueue(cmd("p3", "orders"))


def with_password(url: str) -> str:
    """The same database with a password in the URL (trust auth ignores it)."""
    return sa.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def test_metrics_report_the_outbox_exactly(
    pg_url: str, tmp_path: Path, landing_dir: Path, start_exporter
) -> None:
    clock = Clock(utcnow())
    settings = make_settings(pg_url, tmp_path / "dw-home", landing_dir)
    queue = build_queue(settings)
    queue.clock = clock
    try:
        fill(queue, clock)
    finally:
        queue.engine.dispose()
    filled_at = time.monotonic()

    exporter = start_exporter(with_password(pg_url))
    assert exporter.get("/readyz") == (200, "ok\n")
    status, body = exporter.get("/metrics")
    assert status == 200
    assert PASSWORD not in body
    samples = exporter.samples()
    elapsed = time.monotonic() - filled_at

    lag = samples.pop(("dw_worker_lag_seconds", ()))
    assert PENDING_AGE <= lag <= PENDING_AGE + elapsed + 1
    assert samples.pop(("dw_worker_scrape_duration_seconds", ())) >= 0

    def buckets(counts: list[int]) -> dict:
        les = ["1.0", "5.0", "15.0", "30.0", "60.0", "120.0", "300.0", "600.0", "1800.0"]
        les += ["3600.0", "+Inf"]
        return {
            ("dw_ingestion_job_duration_seconds_bucket", (("le", le),)): float(c)
            for le, c in zip(les, counts, strict=True)
        }

    assert samples == {
        ("dw_worker_jobs_total", (("dataset", "orders"), ("status", "COMPLETED"))): 2.0,
        ("dw_worker_jobs_total", (("dataset", "orders"), ("status", "FAILED"))): 1.0,
        ("dw_worker_jobs_total", (("dataset", "customers"), ("status", "COMPLETED"))): 1.0,
        ("dw_worker_jobs_total", (("dataset", "customers"), ("status", "FAILED"))): 2.0,
        ("dw_worker_retries_total", (("dataset", "orders"),)): 1.0,
        ("dw_worker_retries_total", (("dataset", "customers"),)): 2.0,
        ("dw_ingestion_outbox_pending", ()): 3.0,
        ("dw_ingestion_queue_running_jobs", ()): 2.0,
        ("dw_ingestion_dead_letters", ()): 2.0,
        ("dw_ingestion_rows_loaded_total", (("dataset", "orders"),)): 15.0,
        ("dw_ingestion_rows_loaded_total", (("dataset", "customers"),)): 7.0,
        **buckets([0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 3]),
        ("dw_ingestion_job_duration_seconds_count", ()): 3.0,
        ("dw_ingestion_job_duration_seconds_sum", ()): 4065.0,
        ("dw_ingestion_contract_errors", (("dataset", "customers"),)): 0.0,
        ("dw_ingestion_contract_errors", (("dataset", "orders"),)): 0.0,
        ("dw_worker_scrape_error", ()): 0.0,
    }
    types = {f.name: f.type for f in text_string_to_metric_families(body)}
    assert types == {
        "dw_worker_jobs": "counter",
        "dw_worker_retries": "counter",
        "dw_worker_lag_seconds": "gauge",
        "dw_ingestion_outbox_pending": "gauge",
        "dw_ingestion_queue_running_jobs": "gauge",
        "dw_ingestion_dead_letters": "gauge",
        "dw_ingestion_rows_loaded": "counter",
        "dw_ingestion_job_duration_seconds": "histogram",
        "dw_ingestion_contract_errors": "gauge",
        "dw_worker_scrape_error": "gauge",
        "dw_worker_scrape_duration_seconds": "gauge",
    }
    assert exporter.get("/nope")[0] == 404

    exporter.proc.send_signal(signal.SIGTERM)
    assert exporter.proc.wait(timeout=15) == 0
    assert "Traceback" not in exporter.log()
    assert PASSWORD not in exporter.log()


def test_an_empty_outbox_already_has_every_series_at_zero(
    pg_url: str, tmp_path: Path, start_exporter
) -> None:
    """Before the first job: every terminal status of every dataset in the catalog (a broken
    contract's dataset included) is a series at 0, so that rate() and increase() see the first
    event (Prometheus: "avoid missing metrics")."""
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "events.yaml").write_text(
        "name: events\nwrite_mode: append\nprimary_key: []\ncolumns: [{name: id, type: int64}]\n"
    )
    (folder / "broken.yaml").write_text("name: broken\nwrite_mode: sideways\n")

    exporter = start_exporter(pg_url, DW_DATASETS_PATH=str(folder))
    samples = exporter.samples()

    datasets = ["broken", "customers", "events", "orders"]
    zero = {
        **{
            ("dw_worker_jobs_total", (("dataset", d), ("status", s))): 0.0
            for d in datasets
            for s in ("COMPLETED", "FAILED")
        },
        **{("dw_worker_retries_total", (("dataset", d),)): 0.0 for d in datasets},
        **{("dw_ingestion_rows_loaded_total", (("dataset", d),)): 0.0 for d in datasets},
    }
    assert {k: v for k, v in samples.items() if k in zero} == zero
    counted = {k for k in samples if k[0] in {name for name, _ in zero} and k not in zero}
    assert counted == set()  # no other dataset or status appears
    assert samples[("dw_ingestion_contract_errors", (("dataset", "broken"),))] > 0
    assert samples[("dw_worker_scrape_error", ())] == 0.0


def test_database_outage_is_reported_and_recovers(
    pg_url: str, pg_admin: sa.Engine, start_exporter
) -> None:
    name = sa.make_url(pg_url).database
    exporter = start_exporter(with_password(pg_url))
    responses: list[str] = []

    def scrape() -> dict:
        samples = exporter.samples()
        responses.append(repr(samples))
        return samples

    assert exporter.get("/readyz")[0] == 200
    empty = scrape()
    assert empty[("dw_worker_scrape_error", ())] == 0
    assert empty[("dw_ingestion_outbox_pending", ())] == 0
    assert empty[("dw_worker_lag_seconds", ())] == 0

    try:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
                ),
                {"d": name},
            )
        status, reason = exporter.get("/readyz")
        responses.append(reason)
        assert status == 503
        assert reason.startswith("database unavailable: ")
        assert len(reason.strip().splitlines()) == 1
        down = scrape()
        assert down[("dw_worker_scrape_error", ())] == 1
        assert ("dw_ingestion_outbox_pending", ()) not in down
        assert scrape()[("dw_worker_scrape_error", ())] == 1
        assert exporter.get("/healthz")[0] == 200
        assert exporter.proc.poll() is None
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))

    deadline = time.monotonic() + 30
    while exporter.get("/readyz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert scrape()[("dw_worker_scrape_error", ())] == 0
    assert exporter.proc.poll() is None

    for text in [*responses, exporter.get("/healthz")[1], exporter.get("/readyz")[1]]:
        assert PASSWORD not in text
    exporter.proc.send_signal(signal.SIGINT)
    assert exporter.proc.wait(timeout=15) == 0
    log = exporter.log()
    assert PASSWORD not in log
    assert "Traceback" not in log
    assert "metrics scrape failed: " in log
    assert "metrics scrape recovered" in log
