"""Prometheus exporter for the outbox: `dw-pipelines metrics serve`.

Every scrape reads the outbox and audit tables afresh (nothing is cached between scrapes) with two
aggregate queries, one per table, inside one read-only transaction (REPEATABLE READ on PostgreSQL,
so both queries see the same snapshot) bounded by `DW_METRICS_STATEMENT_TIMEOUT_MS`.

Metric semantics:

* `dw_worker_jobs_total{status,dataset}`: audit events that moved a job into a terminal
  status (`to_status` COMPLETED or FAILED: events COMPLETED, FAILED, DEAD_LETTERED and
  RECONCILED), labelled with that status. A job that failed, was requeued and then completed
  counts once per label. The dataset comes from joining the audit row to its outbox row (audit
  details do not carry it); when `outbox prune` has deleted the row, the event is counted under
  `dataset="unknown"`.
* `dw_worker_retries_total{dataset}`: RETRY_SCHEDULED audit events (same join).
* Both, and `dw_ingestion_rows_loaded_total{dataset}`, have a sample for every status and every
  dataset of the catalog from the first scrape, 0 until the first event: Prometheus' advice on
  missing series, since `rate()` and `increase()` over a series that appears with its first
  event see no change, and an alert on it would never fire for that event.
* `dw_worker_lag_seconds`: now minus `created_at` of the oldest PENDING row whose
  `next_attempt_at` has come; 0 when there is none.
* `dw_ingestion_outbox_pending`, `dw_ingestion_queue_running_jobs` (SENT + PROCESSING),
  `dw_ingestion_dead_letters` (FAILED): current row counts.
* `dw_ingestion_rows_loaded_total{dataset}`: sum of `rows_loaded` over COMPLETED rows.
* `dw_ingestion_job_duration_seconds`: histogram over COMPLETED rows of `updated_at` (the
  completion) minus the time of the job's last STARTED audit event (`created_at` if none), i.e. the
  duration of the run that completed it, retry waits included.
* `dw_ingestion_contract_errors{dataset}`: problems found in the dataset's contract file(s),
  read from the contract folders at scrape time: 0 for every usable dataset, above 0 for a
  dataset whose contract is refused (its jobs wait PENDING until the file is fixed).
* `dw_worker_scrape_error`: 1 when this scrape's database read failed (the data metrics are then
  left out rather than reported stale), else 0; `dw_worker_scrape_duration_seconds`.

The series computed from outbox rows (rows loaded, the duration histogram) and the dataset label
of the audit counters change when `outbox prune` deletes COMPLETED rows; Prometheus treats that as a
counter reset.

HTTP endpoints on one server: `/metrics`, `/healthz` (200 while the process lives) and `/readyz`
(200 when the database answers `SELECT 1` in time, else 503 with a one-line reason).
"""

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.engine import Connection, Engine

from dw_pipelines.core.db import as_utc, utcnow
from dw_pipelines.settings import Settings

log = logging.getLogger(__name__)

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600)
UNKNOWN_DATASET = "unknown"
_TERMINAL = ("COMPLETED", "FAILED")

_BUCKET_COLUMNS = ",\n  ".join(
    f"SUM(CASE WHEN duration <= {b} THEN 1 ELSE 0 END) AS le_{i}"
    for i, b in enumerate(DURATION_BUCKETS)
)
_DURATION_SQL = {
    "postgresql": "EXTRACT(EPOCH FROM (o.updated_at - {start}))",
    "sqlite": "(julianday(o.updated_at) - julianday({start})) * 86400.0",
}
_LAST_STARTED = (
    "COALESCE((SELECT MAX(a.at) FROM dw_ingestion_audit a "
    "WHERE a.job_id = o.job_id AND a.event = 'STARTED'), o.created_at)"
)
_OUTBOX_SQL = """
SELECT status, dataset, COUNT(*) AS n, SUM(rows_loaded) AS rows_loaded,
  MIN(CASE WHEN status = 'PENDING' AND next_attempt_at <= :now THEN created_at END) AS oldest_due,
  COUNT(duration) AS d_count, SUM(duration) AS d_sum,
  {buckets}
FROM (
  SELECT o.status, o.dataset, o.rows_loaded, o.next_attempt_at, o.created_at,
    CASE WHEN o.status = 'COMPLETED' THEN {duration} END AS duration
  FROM dw_ingestion_outbox o
) AS t
GROUP BY status, dataset
"""
_AUDIT_SQL = """
SELECT a.event, a.to_status, COALESCE(o.dataset, :unknown) AS dataset, COUNT(*) AS n
FROM dw_ingestion_audit a LEFT JOIN dw_ingestion_outbox o ON o.job_id = a.job_id
WHERE a.event = 'RETRY_SCHEDULED' OR a.to_status IN ('COMPLETED', 'FAILED')
GROUP BY a.event, a.to_status, COALESCE(o.dataset, :unknown)
"""


def create_metrics_engine(settings: Settings) -> Engine:
    """The exporter's own small pool; connects give up after the connect timeout."""
    url = sa.make_url(settings.database_url)
    timeout = settings.metrics_connect_timeout_seconds
    if url.get_backend_name() == "sqlite":
        # Not `create_db_engine`: its BEGIN IMMEDIATE would take the write lock on every scrape.
        return sa.create_engine(url, connect_args={"timeout": timeout})
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=2,
        max_overflow=2,
        pool_timeout=timeout,
        connect_args={"connect_timeout": timeout},
    )


def redact(text: str, engine: Engine) -> str:
    """One line of `text`, without the database password."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    password = engine.url.password
    if password:
        line = line.replace(str(password), "***")
    return line


def error_line(exc: BaseException, engine: Engine) -> str:
    cause = getattr(exc, "orig", None) or exc
    return redact(f"{type(cause).__name__}: {cause}", engine)


def _read_only(conn: Connection, timeout_ms: int) -> None:
    """Make the current transaction a read-only snapshot with a statement timeout (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_ms)}")


class OutboxCollector(Collector):
    """Reads the outbox and audit tables at scrape time and yields the metric families."""

    def __init__(
        self,
        engine: Engine,
        statement_timeout_ms: int,
        datasets: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        self.engine = engine
        self.statement_timeout_ms = statement_timeout_ms
        # The catalog's datasets, asked at each scrape: each gets its series at 0 before its
        # first event, so that rate() and increase() see the first one (a series that appears
        # with its first event reads as no change).
        self.datasets = datasets
        dialect = engine.dialect.name
        duration = _DURATION_SQL.get(dialect, _DURATION_SQL["postgresql"])
        self._outbox_sql = sa.text(
            _OUTBOX_SQL.format(
                buckets=_BUCKET_COLUMNS, duration=duration.format(start=_LAST_STARTED)
            )
        ).columns(oldest_due=sa.DateTime(timezone=True))
        self._audit_sql = sa.text(_AUDIT_SQL)
        self._lock = threading.Lock()
        self._failing = False

    def describe(self) -> list[Metric]:
        return []  # registering must not touch the database

    def collect(self) -> Iterator[Metric]:
        started = time.monotonic()
        try:
            families = self._read()
            error = 0
        except Exception as exc:  # any database trouble: report it, keep serving
            families = []
            error = 1
            with self._lock:
                self._failing = True
            log.warning("metrics scrape failed: %s", error_line(exc, self.engine))
        else:
            with self._lock:
                if self._failing:
                    log.info("metrics scrape recovered")
                self._failing = False
        yield from families
        yield GaugeMetricFamily(
            "dw_worker_scrape_error",
            "1 if this scrape's database read failed, else 0.",
            value=error,
        )
        yield GaugeMetricFamily(
            "dw_worker_scrape_duration_seconds",
            "Time this scrape spent reading the database.",
            value=time.monotonic() - started,
        )

    def _read(self) -> list[Metric]:
        now = utcnow()
        bind_now = now if self.engine.dialect.name == "postgresql" else now.replace(tzinfo=None)
        with self.engine.connect() as conn, conn.begin():
            _read_only(conn, self.statement_timeout_ms)
            outbox_rows = conn.execute(self._outbox_sql, {"now": bind_now}).mappings().all()
            audit_rows = (
                conn.execute(self._audit_sql, {"unknown": UNKNOWN_DATASET}).mappings().all()
            )
        return self._families(now, outbox_rows, audit_rows, self._known_datasets())

    def _known_datasets(self) -> list[str]:
        try:
            return sorted(self.datasets())
        except Exception as exc:  # unreadable contracts: the series with events still show
            log.warning("metrics: cannot list the datasets: %s", exc)
            return []

    @staticmethod
    def _families(
        now: datetime, outbox_rows: Any, audit_rows: Any, datasets: Sequence[str] = ()
    ) -> list[Metric]:
        counts = {"PENDING": 0, "SENT": 0, "PROCESSING": 0, "COMPLETED": 0, "FAILED": 0}
        rows_loaded: dict[str, int] = {}
        oldest_due: datetime | None = None
        buckets = [0] * len(DURATION_BUCKETS)
        d_count = 0
        d_sum = 0.0
        for row in outbox_rows:
            counts[row["status"]] = counts.get(row["status"], 0) + int(row["n"])
            if row["status"] == "COMPLETED":
                rows_loaded[row["dataset"]] = rows_loaded.get(row["dataset"], 0) + int(
                    row["rows_loaded"] or 0
                )
                d_count += int(row["d_count"] or 0)
                d_sum += float(row["d_sum"] or 0)
                for i in range(len(DURATION_BUCKETS)):
                    buckets[i] += int(row[f"le_{i}"] or 0)
            due = as_utc(row["oldest_due"])
            if due is not None and (oldest_due is None or due < oldest_due):
                oldest_due = due

        jobs = CounterMetricFamily(
            "dw_worker_jobs",
            "Jobs that reached a terminal status, from the audit trail "
            "(COMPLETED; FAILED includes DEAD_LETTERED and RECONCILED to FAILED).",
            labels=["status", "dataset"],
        )
        retries = CounterMetricFamily(
            "dw_worker_retries",
            "Retries scheduled (RETRY_SCHEDULED audit events).",
            labels=["dataset"],
        )
        retried: dict[str, int] = dict.fromkeys(datasets, 0)
        terminal: dict[tuple[str, str], int] = {
            (status, dataset): 0 for status in sorted(_TERMINAL) for dataset in datasets
        }
        for dataset in datasets:
            rows_loaded.setdefault(dataset, 0)
        for row in audit_rows:
            if row["event"] == "RETRY_SCHEDULED":
                retried[row["dataset"]] = retried.get(row["dataset"], 0) + int(row["n"])
            elif row["to_status"] in _TERMINAL:
                key = (row["to_status"], row["dataset"])
                terminal[key] = terminal.get(key, 0) + int(row["n"])
        for dataset, value in sorted(retried.items()):
            retries.add_metric([dataset], value)
        for (status, dataset), value in sorted(terminal.items()):
            jobs.add_metric([status, dataset], value)

        lag = max(0.0, (now - oldest_due).total_seconds()) if oldest_due is not None else 0.0
        loaded = CounterMetricFamily(
            "dw_ingestion_rows_loaded",
            "Rows loaded by COMPLETED jobs (sum of rows_loaded).",
            labels=["dataset"],
        )
        for dataset, value in sorted(rows_loaded.items()):
            loaded.add_metric([dataset], value)
        histogram = HistogramMetricFamily(
            "dw_ingestion_job_duration_seconds",
            "COMPLETED jobs: completion time minus the job's last STARTED event.",
            buckets=[
                *((str(float(b)), buckets[i]) for i, b in enumerate(DURATION_BUCKETS)),
                ("+Inf", d_count),
            ],
            sum_value=d_sum,
        )
        return [
            jobs,
            retries,
            GaugeMetricFamily(
                "dw_worker_lag_seconds",
                "Age of the oldest due PENDING job (0 when none).",
                value=lag,
            ),
            GaugeMetricFamily(
                "dw_ingestion_outbox_pending", "PENDING outbox rows.", value=counts["PENDING"]
            ),
            GaugeMetricFamily(
                "dw_ingestion_queue_running_jobs",
                "SENT and PROCESSING outbox rows.",
                value=counts["SENT"] + counts["PROCESSING"],
            ),
            GaugeMetricFamily(
                "dw_ingestion_dead_letters", "FAILED outbox rows.", value=counts["FAILED"]
            ),
            loaded,
            histogram,
        ]


def check_ready(engine: Engine, timeout_ms: int) -> str | None:
    """None when the database answers `SELECT 1` in time, else a one-line reason (no password)."""
    try:
        with engine.connect() as conn, conn.begin():
            _read_only(conn, timeout_ms)
            conn.exec_driver_sql("SELECT 1").scalar()
    except Exception as exc:
        return f"database unavailable: {error_line(exc, engine)}"
    return None


class ContractCollector(Collector):
    """`dw_ingestion_contract_errors{dataset}` from the contract files, at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        from dw_pipelines.services import load_contracts  # parsed again only when files change

        family = GaugeMetricFamily(
            "dw_ingestion_contract_errors",
            "Problems in a dataset's contract file(s); above 0: the dataset cannot be loaded "
            "(see `dw-pipelines datasets check`).",
            labels=["dataset"],
        )
        try:
            contracts = load_contracts(self.settings)
        except Exception as exc:  # an unreadable folder: report it, keep serving
            log.warning("metrics: cannot read the dataset contracts: %s", exc)
            return
        errors = {contract.name: 0 for contract in contracts}
        for problem in contracts.problems:
            name = problem.dataset or ""
            errors[name] = errors.get(name, 0) + max(len(problem.problems), 1)
        for dataset, count in sorted(errors.items()):
            family.add_metric([dataset], count)
        yield family


def _dataset_names(settings: Settings) -> list[str]:
    """Every dataset of the catalog, its contract usable or not (`services.load_contracts` parses
    the folders again only when a file changed)."""
    from dw_pipelines.services import load_contracts

    contracts = load_contracts(settings)
    return sorted({c.name for c in contracts} | set(contracts.broken_datasets))


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` on one threading HTTP server."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.engine = create_metrics_engine(settings)
        self.ready_timeout_ms = settings.metrics_connect_timeout_seconds * 1000
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(
            OutboxCollector(
                self.engine, settings.metrics_statement_timeout_ms, lambda: _dataset_names(settings)
            )
        )
        self.registry.register(ContractCollector(settings))
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    reason = check_ready(server.engine, server.ready_timeout_ms)
                    if reason is None:
                        self._send(200, b"ok\n")
                    else:
                        self._send(503, (reason + "\n").encode())
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

        return Handler

    def serve_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down cleanly."""
        stop = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s, stopping", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        thread.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.close()
            thread.join(timeout=10)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.engine.dispose()


def serve(settings: Settings, host: str, port: int) -> None:
    server = MetricsServer(settings, host, port)
    bound_host, bound_port = server.address
    log.info(
        "serving metrics on http://%s:%d/metrics (database %s)",
        bound_host,
        bound_port,
        server.engine.url.render_as_string(hide_password=True),
    )
    server.serve_until_signalled()
    log.info("stopped")
