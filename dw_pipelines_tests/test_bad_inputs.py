"""Bad (and tricky-but-valid) input files and commands, each run as a real `dw_ingestion_job`.

Every case goes through the outbox and an in-process Dagster run against PostgreSQL, like
`test_ingestion_runs.py`, with `DW_RETRY_MAX_RETRIES=0`:

* A bad file must fail its job on the first attempt (FAILED, `attempts == 1`, no retry, and the
  audit trail goes straight from STARTED to FAILED, i.e. the error was classified permanent), with a
  `last_error` that names the file and, where one exists, the line, row and column; nothing may be
  left in storage or staging for the job, and a good job enqueued afterwards still loads its 6 rows.
* A bad command is refused at enqueue with a `CommandError` naming the field; the same command
  written straight into `dw_ingestion_outbox` (bypassing enqueue) must fail at run time the same
  way a bad file does.
* Valid-but-tricky files (quoted newlines, BOM + CRLF, gzip, non-ASCII) must load exact values.
"""

import datetime as dt
import gzip
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from dw_pipelines.core import validation
from dw_pipelines.core.commands import DwIngestionCommand
from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.db import outbox
from dw_pipelines.core.errors import CommandError
from dw_pipelines.core.ingestion import IngestionService
from dw_pipelines.core.outbox import OutboxJob
from dw_pipelines.definitions import build_definitions
from dw_pipelines.services import build_service, dispose
from dw_pipelines.settings import SAMPLES_DIR, TAG_JOB_ID

ORDERS_SAMPLE = SAMPLES_DIR / "orders_2026-11-24.csv"
ORDERS_HEADER = ORDERS_SAMPLE.read_text(encoding="utf-8").splitlines()[0]
BUSINESS_DATE = "2026-11-24"

# An expected piece of `last_error`: a literal substring, or a compiled pattern to search for.
Expected = str | re.Pattern[str]


# ------------------------------------------------------------------------------- source files


def order_fields(order_id: int, **values: str) -> dict[str, str]:
    """The CSV fields of one valid order; keyword arguments replace single fields."""
    fields = {
        "order_id": str(order_id),
        "customer_id": "7",
        "order_date": BUSINESS_DATE,
        "amount": "19.99",
        "currency": "EUR",
        "status": "paid",
        "is_gift": "false",
        "created_at": "2026-11-24T08:00:00Z",
        "note": "",
    }
    unknown = set(values) - set(fields)
    assert not unknown, f"not an orders column: {unknown}"
    fields.update(values)
    return fields


def order_line(order_id: int, **values: str) -> str:
    return ",".join(order_fields(order_id, **values).values())


def write_lines(path: Path, lines: list[str], newline: str = "\n", encoding="utf-8") -> Path:
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


def write_orders(path: Path, *rows: str, header: str = ORDERS_HEADER) -> Path:
    """A CSV file: the orders header (or `header`) and `rows`, one per line."""
    return write_lines(path, [header, *rows])


def quoted(value: str) -> str:
    """A CSV field holding `value` verbatim (quotes doubled)."""
    return '"' + value.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------- the worker


@dataclass
class Worker:
    """The outbox, the warehouse and `dw_ingestion_job`, run in process like the sensor would."""

    service: IngestionService
    job_def: dg.JobDefinition
    instance: dg.DagsterInstance
    landing: Path

    @property
    def orders(self) -> DatasetContract:
        return self.service.contracts.get("orders")

    def enqueue(self, source: Path | str, **extra: object) -> OutboxJob:
        command = {
            "dataset": "orders",
            "source_uri": str(source),
            "business_date": BUSINESS_DATE,
            **extra,
        }
        job = self.service.queue.enqueue(command).job
        self.service.queue.claim_due(100)  # as the sensor would: PENDING -> SENT
        return job

    def insert_directly(self, payload: dict, dataset: str = "orders") -> OutboxJob:
        """Write an outbox row with `payload` as is, bypassing enqueue's checks; then claim it."""
        now = dt.datetime.now(dt.UTC)
        with self.service.queue.engine.begin() as conn:
            conn.execute(
                outbox.insert().values(
                    job_id=payload["job_id"],
                    idempotency_key=payload["idempotency_key"],
                    tenant_id=payload["tenant_id"],
                    dataset=dataset,
                    business_date=dt.date.fromisoformat(payload["business_date"]),
                    payload=payload,
                    status="PENDING",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
        self.service.queue.claim_due(100)
        return self.service.queue.get(payload["job_id"])

    def run(self, job: OutboxJob) -> dg.ExecuteInProcessResult:
        return self.job_def.execute_in_process(
            instance=self.instance,
            partition_key=job.business_date.isoformat(),
            tags={TAG_JOB_ID: job.job_id},
            asset_selection=[
                dg.AssetKey(["staging", job.dataset]),
                dg.AssetKey(["storage", job.dataset]),
            ],
            raise_on_error=False,
        )

    def load(
        self, source: Path | str, **extra: object
    ) -> tuple[OutboxJob, dg.ExecuteInProcessResult]:
        job = self.enqueue(source, **extra)
        return job, self.run(job)

    def stored(self, job_id: str) -> list[dict]:
        """The job's rows in dw_storage.orders, by order_id."""
        with self.service.warehouse.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.text(
                        "SELECT * FROM dw_storage.orders WHERE _dw_job_id = :job ORDER BY order_id"
                    ),
                    {"job": job_id},
                ).mappings()
            ]

    def outbox_rows(self) -> int:
        return sum(self.service.queue.count_by_status().values())


@contextmanager
def worker_for(pg_url: str, dw_env, landing: Path, **env: object) -> Iterator[Worker]:
    settings = dw_env(pg_url, DW_RETRY_MAX_RETRIES=0, **env)
    service = build_service(settings)
    job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    try:
        with dg.instance_for_test() as instance:
            yield Worker(service, job_def, instance, landing)
    finally:
        dispose(service)


@pytest.fixture
def worker(pg_url: str, dw_env, landing_dir: Path) -> Iterator[Worker]:
    with worker_for(pg_url, dw_env, landing_dir) as w:
        yield w


@pytest.fixture(params=[None, 1000], ids=["default-batches", "1000-row-batches"])
def batch_worker(request, pg_url: str, dw_env, landing_dir: Path) -> Iterator[Worker]:
    """A worker with the default read batch size, and one reading 1,000 rows at a time."""
    env = {} if request.param is None else {"DW_READ_BATCH_ROWS": request.param}
    with worker_for(pg_url, dw_env, landing_dir, **env) as w:
        yield w


# ------------------------------------------------------------------------------- assertions


def _found(expected: Expected, text: str) -> bool:
    if isinstance(expected, re.Pattern):
        return expected.search(text) is not None
    return expected in text


def assert_failed_cleanly(
    worker: Worker, job: OutboxJob, result: dg.ExecuteInProcessResult, *expected: Expected
) -> OutboxJob:
    """The run failed on its first attempt, permanently, saying `expected`; nothing was written.

    Then a good job enqueued afterwards still completes with the sample's 6 rows.
    """
    row = worker.service.queue.get(job.job_id)
    today = f"status={row.status} attempts={row.attempts} last_error={row.last_error!r}"
    assert not result.success, today
    assert (row.status, row.attempts) == ("FAILED", 1), today
    assert not any(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events), today
    # The error was classified permanent: the row went straight from its one start to FAILED.
    # (With DW_RETRY_MAX_RETRIES=0 a transient error also ends after one attempt, but is
    # recorded as retries exhausted, not as FAILED straight after STARTED.)
    trail = [
        (e.event, e.to_status, e.attempt) for e in worker.service.queue.audit_trail(job.job_id)
    ]
    assert trail[-2:] == [("STARTED", "PROCESSING", 1), ("FAILED", "FAILED", 1)], (
        f"{trail}; {today}"
    )
    missing = [e for e in expected if not _found(e, row.last_error or "")]
    assert not missing, f"last_error lacks {missing}; {today}"
    assert worker.service.warehouse.storage_rows(worker.orders, job.job_id) == 0
    assert worker.service.warehouse.staged_rows(worker.orders, job.job_id) == 0
    assert_next_good_job_completes(worker)
    return row


def assert_next_good_job_completes(worker: Worker) -> None:
    good, result = worker.load(ORDERS_SAMPLE)
    row = worker.service.queue.get(good.job_id)
    assert result.success, f"good job: status={row.status} last_error={row.last_error!r}"
    assert (row.status, row.rows_loaded, row.attempts) == ("COMPLETED", 6, 1)
    assert len(worker.stored(good.job_id)) == 6


def assert_completed(worker: Worker, job: OutboxJob, result: dg.ExecuteInProcessResult, rows: int):
    row = worker.service.queue.get(job.job_id)
    today = f"status={row.status} attempts={row.attempts} last_error={row.last_error!r}"
    assert result.success, today
    assert (row.status, row.rows_loaded) == ("COMPLETED", rows), today
    return worker.stored(job.job_id)


# --------------------------------------------------------------------------- bad source files


def zero_bytes(landing: Path) -> Path:
    path = landing / "zero_bytes.csv"
    path.write_bytes(b"")
    return path


def header_only(landing: Path) -> Path:
    return write_orders(landing / "header_only.csv")


def semicolon_separated(landing: Path) -> Path:
    return write_lines(
        landing / "semicolons.csv",
        [ORDERS_HEADER.replace(",", ";"), order_line(1).replace(",", ";")],
    )


def without_amount(landing: Path) -> Path:
    def drop_amount(line: str) -> str:
        fields = line.split(",")
        del fields[3]
        return ",".join(fields)

    return write_lines(
        landing / "no_amount.csv", [drop_amount(ORDERS_HEADER), drop_amount(order_line(1))]
    )


def with_discount(landing: Path) -> Path:
    return write_orders(
        landing / "discount.csv", order_line(1) + ",0.10", header=ORDERS_HEADER + ",discount"
    )


def blank_currency(landing: Path) -> Path:
    return write_orders(
        landing / "blank_currency.csv", order_line(1), order_line(2), order_line(3, currency="")
    )


def duplicate_key(landing: Path) -> Path:
    return write_orders(landing / "dupes.csv", *[order_line(n) for n in (1, 7, 2, 3, 7, 4)])


def truncated_parquet(landing: Path) -> Path:
    path = landing / "cut.parquet"
    table = pa.table(
        {
            "order_id": pa.array(range(1, 1001), pa.int64()),
            "customer_id": pa.array([7] * 1000, pa.int64()),
            "order_date": pa.array([dt.date(2026, 11, 24)] * 1000),
            "amount": pa.array([Decimal("19.99")] * 1000, pa.decimal128(12, 2)),
            "currency": ["EUR"] * 1000,
            "status": ["paid"] * 1000,
            "is_gift": [False] * 1000,
            "created_at": pa.array(
                [dt.datetime(2026, 11, 24, 8, tzinfo=dt.UTC)] * 1000, pa.timestamp("us", "UTC")
            ),
            "note": [f"order {n}" for n in range(1000)],
        }
    )
    pq.write_table(table, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def gzip_named_csv(landing: Path) -> Path:
    path = landing / "gzip_bytes.csv"
    path.write_bytes(gzip.compress(ORDERS_SAMPLE.read_bytes()))
    return path


def latin1_note(landing: Path) -> Path:
    path = landing / "latin1.csv"
    lines = [ORDERS_HEADER, order_line(1), order_line(2, note="Größe: XL")]
    return write_lines(path, lines, encoding="latin-1")


def nul_in_note(landing: Path) -> Path:
    return write_orders(landing / "nul_byte.csv", order_line(1), order_line(2, note="a\x00b"))


FILE_ROW_2 = ("line 3", "row 2")

BAD_FILES = [
    pytest.param(zero_bytes, ["zero_bytes.csv", re.compile(r"(?i)\bempty\b")], id="empty-file"),
    pytest.param(header_only, ["header_only.csv", "no data rows"], id="header-only"),
    pytest.param(
        semicolon_separated,
        [
            "semicolons.csv",
            "line 1",
            re.compile(r"missing column.*'order_id', 'customer_id', 'order_date'"),
        ],
        id="semicolon-delimiter",
    ),
    pytest.param(
        without_amount,
        ["no_amount.csv", "line 1", re.compile(r"missing column\S* 'amount'")],
        id="missing-column",
    ),
    pytest.param(
        with_discount,
        ["discount.csv", "line 1", re.compile(r"unexpected column\S* 'discount'")],
        id="extra-column",
    ),
    pytest.param(
        blank_currency,
        ["blank_currency.csv, line 4, row 3, column 'currency'", "not nullable"],
        id="null-in-required-column",
    ),
    pytest.param(
        duplicate_key,
        [
            "dupes.csv, line 3, row 2, column 'order_id'",
            "duplicate primary key (order_id=7) on rows 2 and 5 (lines 3 and 6)",
        ],
        id="duplicate-primary-key",
    ),
    pytest.param(
        truncated_parquet,
        ["cut.parquet", re.compile(r"(?i)corrupt|not a readable parquet")],
        id="truncated-parquet",
    ),
    pytest.param(
        gzip_named_csv,
        ["gzip_bytes.csv", re.compile(r"(?i)compressed"), ".csv.gz"],
        id="gzip-named-csv",
    ),
    pytest.param(
        latin1_note,
        ["latin1.csv", *FILE_ROW_2, "column 'note'", re.compile(r"(?i)utf-?8")],
        id="latin1-in-utf8-file",
    ),
    pytest.param(
        nul_in_note,
        ["nul_byte.csv", *FILE_ROW_2, "column 'note'", re.compile(r"(?i)\bNUL\b|0x00|\\x00")],
        id="nul-byte-in-text",
    ),
]


@pytest.mark.parametrize(("make_file", "expected"), BAD_FILES)
def test_bad_file_fails_on_first_attempt_and_writes_nothing(
    worker: Worker, make_file: Callable[[Path], Path], expected: list[Expected]
):
    job, result = worker.load(make_file(worker.landing))

    assert_failed_cleanly(worker, job, result, *expected)


def test_type_mismatch_deep_in_a_large_file_names_line_row_and_column(batch_worker: Worker):
    rows = [order_line(n) for n in range(1, 60_001)]
    rows[49_999] = order_line(50_000, amount="twelve")
    source = write_orders(batch_worker.landing / "big.csv", *rows)

    job, result = batch_worker.load(source)

    assert_failed_cleanly(
        batch_worker,
        job,
        result,
        "big.csv, line 50001, row 50000, column 'amount': value 'twelve'",
    )


def test_a_duplicate_key_among_spilled_key_hashes_is_found(
    batch_worker: Worker, monkeypatch: pytest.MonkeyPatch
):
    # Key hashes past 5,000 rows go to the tracker's temporary file: a key of the first rows
    # repeated near the end is still found, with both rows named.
    monkeypatch.setattr(validation, "KEY_HASHES_IN_MEMORY", 5_000)
    rows = [order_line(n) for n in range(1, 30_001)]
    rows[28_000] = order_line(42)
    source = write_orders(batch_worker.landing / "late_dupe.csv", *rows)

    job, result = batch_worker.load(source)

    assert_failed_cleanly(
        batch_worker, job, result, "duplicate primary key (order_id=42) on rows 42 and 28001"
    )


def test_a_10_mb_field_is_refused_naming_the_row(worker: Worker):
    source = write_orders(
        worker.landing / "huge_field.csv",
        order_line(1),
        order_line(2, note="x" * (10 << 20)),
        order_line(3),
    )

    job, result = worker.load(source)

    row = assert_failed_cleanly(
        worker,
        job,
        result,
        "huge_field.csv",
        *FILE_ROW_2,
        re.compile(r"(?i)too (large|long|big)|exceeds|oversize|limit"),
    )
    assert "straddl" not in row.last_error


# ------------------------------------------------------------------ sources outside the landing


def outside_file(worker: Worker) -> Path:
    """A valid orders file next to, not inside, the landing root."""
    outside = worker.landing.parent / "outside"
    outside.mkdir(exist_ok=True)
    return write_orders(outside / "orders.csv", order_line(1))


def dotdot_path(worker: Worker) -> str:
    outside_file(worker)
    return str(worker.landing / ".." / "outside" / "orders.csv")


def symlink_out(worker: Worker) -> str:
    link = worker.landing / "link.csv"
    link.symlink_to(outside_file(worker))
    return str(link)


ESCAPING_PATHS = [
    pytest.param(dotdot_path, id="dotdot-escape"),
    pytest.param(symlink_out, id="symlink-to-outside"),
]


@pytest.mark.parametrize("make_uri", ESCAPING_PATHS)
def test_enqueue_refuses_a_source_outside_the_landing_root(worker: Worker, make_uri):
    with pytest.raises(CommandError) as refused:
        worker.enqueue(make_uri(worker))

    assert refused.value.field == "source_uri"
    assert "outside the landing roots" in str(refused.value)
    assert worker.outbox_rows() == 0


@pytest.mark.parametrize("make_uri", ESCAPING_PATHS)
def test_run_fails_an_outbox_row_whose_source_escapes_the_landing_root(worker: Worker, make_uri):
    uri = make_uri(worker)
    payload = DwIngestionCommand(
        dataset="orders", source_uri=uri, business_date=BUSINESS_DATE
    ).to_payload()
    job = worker.insert_directly(payload)

    result = worker.run(job)

    assert_failed_cleanly(worker, job, result, f"source_uri '{uri}'", "outside the landing roots")


# ----------------------------------------------------------------- bad names in the command

UNKNOWN_DATASET = "no_such_dataset"
DATASET_INJECTION = "orders; DROP TABLE x"
TENANT_INJECTION = "t'; DROP TABLE dw_ingestion_outbox; --"

BAD_NAMES = [
    pytest.param("dataset", UNKNOWN_DATASET, id="unknown-dataset"),
    pytest.param("dataset", DATASET_INJECTION, id="sql-in-dataset"),
    pytest.param("tenant_id", TENANT_INJECTION, id="sql-in-tenant"),
]


def outbox_table_exists(worker: Worker) -> bool:
    return sa.inspect(worker.service.queue.engine).has_table("dw_ingestion_outbox")


@pytest.mark.parametrize(("field", "value"), BAD_NAMES)
def test_enqueue_refuses_a_bad_dataset_or_tenant_name(worker: Worker, field: str, value: str):
    with pytest.raises(CommandError) as refused:
        worker.enqueue(ORDERS_SAMPLE, **{field: value})

    assert refused.value.field == field
    assert worker.outbox_rows() == 0
    assert outbox_table_exists(worker)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("dataset", UNKNOWN_DATASET, id="unknown-dataset"),
        pytest.param("dataset", DATASET_INJECTION, id="sql-in-dataset"),
        pytest.param("tenant_id", TENANT_INJECTION, id="sql-in-tenant"),
    ],
)
def test_run_fails_an_outbox_row_with_a_bad_dataset_or_tenant_name(
    worker: Worker, field: str, value: str
):
    payload = DwIngestionCommand(
        dataset="orders", source_uri=str(ORDERS_SAMPLE), business_date=BUSINESS_DATE
    ).to_payload()
    job = worker.insert_directly({**payload, field: value}, dataset="orders")

    result = worker.run(job)

    assert_failed_cleanly(worker, job, result, field, value)
    assert outbox_table_exists(worker)


@pytest.mark.parametrize("field", ["requested_by", "source_uri", "idempotency_key"])
def test_enqueue_refuses_an_oversize_command_field(worker: Worker, field: str):
    megabyte = "x" * (1 << 20)
    source = megabyte if field == "source_uri" else ORDERS_SAMPLE
    extra = {} if field == "source_uri" else {field: megabyte}

    with pytest.raises(CommandError) as refused:
        worker.enqueue(source, **extra)

    assert refused.value.field == field
    assert len(str(refused.value)) < 1000  # the message does not echo the megabyte back
    assert worker.outbox_rows() == 0


# ------------------------------------------------------------------ tricky files that must load


def notes_by_order(rows: list[dict]) -> dict[int, str | None]:
    return {r["order_id"]: r["note"] for r in rows}


MULTILINE_NOTE = 'first line\nsecond line, with a comma and a "quote"'


def test_quoted_values_with_newlines_commas_and_quotes_load_exactly(worker: Worker):
    source = write_orders(
        worker.landing / "multiline.csv",
        order_line(1, note=quoted(MULTILINE_NOTE)),
        order_line(2, note=quoted("a, b")),
        order_line(3, note=quoted('say "hi"')),
        order_line(4, note=quoted("two\n\nblank lines")),
        order_line(5),
    )

    job, result = worker.load(source)

    rows = assert_completed(worker, job, result, rows=5)
    assert notes_by_order(rows) == {
        1: MULTILINE_NOTE,
        2: "a, b",
        3: 'say "hi"',
        4: "two\n\nblank lines",
        5: None,
    }


def test_a_bad_value_after_multiline_values_reports_its_real_line(worker: Worker):
    source = write_orders(
        worker.landing / "multiline_bad.csv",
        order_line(1, note=quoted(MULTILINE_NOTE)),  # lines 2-3
        order_line(2, note=quoted("x\ny\nz")),  # lines 4-6
        order_line(3),  # line 7
        order_line(4, amount="abc"),  # line 8
    )

    job, result = worker.load(source)

    assert_failed_cleanly(
        worker, job, result, "multiline_bad.csv, line 8, row 4, column 'amount': value 'abc'"
    )


def test_utf8_bom_and_crlf_line_endings_load_exactly(worker: Worker):
    source = worker.landing / "bom_crlf.csv"
    lines = [
        "\ufeff" + ORDERS_HEADER,
        order_line(1, note="windows"),
        order_line(2),
        order_line(3, note=quoted("inner\r\nbreak")),
    ]
    write_lines(source, lines, newline="\r\n")

    job, result = worker.load(source)

    rows = assert_completed(worker, job, result, rows=3)
    assert notes_by_order(rows) == {1: "windows", 2: None, 3: "inner\r\nbreak"}
    assert rows[0]["created_at"] == dt.datetime(2026, 11, 24, 8, tzinfo=dt.UTC)


def test_a_gzip_compressed_csv_gz_file_loads(worker: Worker):
    source = worker.landing / "orders_2026-11-24.csv.gz"
    source.write_bytes(gzip.compress(ORDERS_SAMPLE.read_bytes()))

    job, result = worker.load(source)

    rows = assert_completed(worker, job, result, rows=6)
    assert [r["order_id"] for r in rows] == [1001, 1002, 1003, 1004, 1005, 1006]
    assert rows[3]["note"] == "Größe: XL"
    assert rows[5]["note"] == 'said "thanks"'
    assert rows[1]["amount"] == Decimal("250.00")


UNICODE_NOTES = {
    1: "김민준 님의 주문",
    2: "🎉🚀 party",
    3: "👩‍💻 family: 👨‍👩‍👧‍👦",  # ZWJ sequences
    4: "e\u0301 combining, ß, Ωmega, 中文",
}


def test_korean_and_emoji_values_load_exactly(worker: Worker):
    source = write_orders(
        worker.landing / "unicode.csv",
        *[order_line(n, note=quoted(note), status="배송중") for n, note in UNICODE_NOTES.items()],
    )

    job, result = worker.load(source)

    rows = assert_completed(worker, job, result, rows=4)
    assert notes_by_order(rows) == UNICODE_NOTES
    assert {r["status"] for r in rows} == {"배송중"}
