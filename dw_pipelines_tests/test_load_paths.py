"""The fast load paths give exactly the storage content of the simple one, for every type.

Paths: Postgres with ADBC binary COPY (the default), Postgres with text COPY (`copy-csv`),
Postgres with the staged table attached as storage's partition (append), and SQLite with
executemany (the simple path). Sources: CSV, JSONL and Parquet of the same rows.
Small data on purpose: this is about exactness, not speed (see benchmarks/ for speed).
"""

import datetime as dt
import json
import math
import time
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings

UTC = dt.UTC
CONTRACT = """\
name: every_type
write_mode: {mode}
primary_key: [id]
columns:
  - {{name: id, type: int64, nullable: false}}
  - {{name: s, type: string}}
  - {{name: i, type: int64}}
  - {{name: f, type: float64}}
  - {{name: b, type: bool}}
  - {{name: d, type: date}}
  - {{name: ts, type: timestamp}}
  - {{name: amount, type: "decimal(18,6)"}}
  - {{name: big, type: "decimal(38,10)"}}
"""
COLUMNS = ["id", "s", "i", "f", "b", "d", "ts", "amount", "big"]

# (id, s, i, f, b, d, ts, amount, big) as Python values; None is NULL.
ROWS = [
    (1, "plain", 42, 1.5, True, dt.date(2024, 2, 29), dt.datetime(2024, 1, 1, 12, tzinfo=UTC),
     Decimal("12.345678"), Decimal("1234567890123456789012345678.0123456789")),
    (2, "", -9223372036854775808, -0.0, False, dt.date(1900, 1, 1),
     dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), Decimal("-0.000001"),
     Decimal("0.0000000001")),
    (3, None, None, None, None, None, None, None, None),
    (4, "김민준 😀 ünïcödé", 9223372036854775807, 1e308, True, dt.date(9999, 12, 31),
     dt.datetime(2026, 11, 24, 7, 30, tzinfo=UTC), Decimal("999999999999.999999"), Decimal("-5")),
    (5, 'quote " comma , and\nnewline', 0, float("inf"), False, dt.date(2000, 1, 1),
     dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC), Decimal("0"), Decimal("1E+27")),
    (6, "  spaced  ", 7, float("nan"), None, dt.date(2020, 6, 15),
     dt.datetime(2026, 6, 15, 22, 15, 30, 123456, tzinfo=UTC), Decimal("1.5"), None),
]  # fmt: skip


def csv_text(rows) -> str:
    """CSV the way an upstream service writes it: offsets vary, NULL is an empty field."""

    def cell(column: str, value) -> str:
        if value is None:
            return ""
        if column == "b":
            return "true" if value else "false"
        if column == "ts":
            # Same instant, written with a +09:00 offset, to exercise the conversion to UTC.
            return value.astimezone(dt.timezone(dt.timedelta(hours=9))).isoformat()
        if column == "f" and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if isinstance(value, str):
            return '"' + value.replace('"', '""') + '"'
        return str(value)

    lines = [",".join(COLUMNS)]
    lines += [",".join(cell(c, v) for c, v in zip(COLUMNS, row, strict=True)) for row in rows]
    return "\n".join(lines) + "\n"


def jsonl_text(rows) -> str:
    def value(column: str, v):
        if v is None:
            return None
        if column in ("d", "ts"):
            return v.isoformat()
        if column in ("amount", "big"):
            return str(v)
        if column == "f" and not math.isfinite(v):
            return None  # JSON has no NaN/inf; compared separately below
        return v

    return "".join(
        json.dumps({c: value(c, v) for c, v in zip(COLUMNS, row, strict=True)}) + "\n"
        for row in rows
    )


def parquet_file(path: Path, rows) -> None:
    columns = list(zip(*rows, strict=True))
    table = pa.table(
        {
            "id": pa.array(columns[0], pa.int64()),
            "s": pa.array(columns[1], pa.string()),
            "i": pa.array(columns[2], pa.int64()),
            "f": pa.array(columns[3], pa.float64()),
            "b": pa.array(columns[4], pa.bool_()),
            "d": pa.array(columns[5], pa.date32()),
            "ts": pa.array(columns[6], pa.timestamp("us", tz="UTC")),
            "amount": pa.array(columns[7], pa.decimal128(18, 6)),
            "big": pa.array(columns[8], pa.decimal128(38, 10)),
        }
    )
    pq.write_table(table, path)


def normalized(row: dict) -> tuple:
    """A row as comparable values: UTC datetimes, exact decimals, NaN as a marker."""
    out = []
    for column in COLUMNS:
        value = row[column]
        if isinstance(value, dt.datetime):
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        elif isinstance(value, Decimal):
            value = value.normalize()
        elif isinstance(value, float) and math.isnan(value):
            value = "NaN"
        out.append(value)
    return tuple(out)


def expected(rows) -> list[tuple]:
    return [normalized(dict(zip(COLUMNS, row, strict=True))) for row in rows]


def expected_on(path: str, rows) -> list[tuple]:
    want = expected(rows)
    if path.startswith("sqlite"):
        # SQLite has no NaN: it stores a NaN REAL as NULL (a documented limit of the embedded
        # default; Postgres keeps NaN).
        want = [tuple(None if v == "NaN" else v for v in row) for row in want]
    return want


def load(url: str, tmp: Path, source: Path, mode: str = "append", **env) -> tuple:
    """Load `source` as one job; return (storage rows, service) for the caller to inspect."""
    contracts = tmp / "contracts"
    contracts.mkdir(exist_ok=True)
    (contracts / "every_type.yaml").write_text(CONTRACT.format(mode=mode))
    settings = make_settings(url, tmp / "home", source.parent, DW_DATASETS_PATH=contracts, **env)
    service = build_service(settings)
    job = service.queue.enqueue(
        {"dataset": "every_type", "source_uri": str(source), "business_date": "2026-11-24"}
    ).job
    held = service.start(job.job_id, "run-1")
    service.stage(held, "run-1")
    service.promote(job.job_id, "run-1")
    return job, service


def storage(service) -> list[dict]:
    storage_table = service.warehouse.tables(service.contracts.get("every_type")).storage
    with service.warehouse.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(sa.select(storage_table).order_by(storage_table.c.id)).mappings()
        ]


@pytest.fixture
def csv_source(landing_dir: Path) -> Path:
    path = landing_dir / "every_type.csv"
    path.write_text(csv_text(ROWS), encoding="utf-8")
    return path


PATHS = {
    "postgres-adbc": ("pg_url", {"DW_PG_LOAD_METHOD": "adbc"}),
    "postgres-copy-csv": ("pg_url", {"DW_PG_LOAD_METHOD": "copy-csv"}),
    # Append: the staging table becomes storage's partition (promote_attach.py), from 1 row.
    "postgres-attach": ("pg_url", {"DW_ATTACH_MIN_ROWS": "1"}),
    "sqlite-executemany": ("sqlite_url", {}),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_every_type_loads_exactly_on_every_path(
    path: str, request: pytest.FixtureRequest, csv_source: Path, tmp_path: Path
):
    fixture, env = PATHS[path]
    job, service = load(request.getfixturevalue(fixture), tmp_path, csv_source, **env)
    try:
        rows = storage(service)
        promoted = [e for e in service.queue.audit_trail(job.job_id) if e.event == "PROMOTED"]
    finally:
        dispose(service)
    strategy = "attach" if path == "postgres-attach" else "insert"
    assert promoted[-1].details["strategy"] == strategy
    assert [normalized(r) for r in rows] == expected_on(path, ROWS)
    assert {r["_dw_job_id"] for r in rows} == {job.job_id}
    assert rows[1]["s"] == "" and rows[2]["s"] is None  # empty string is not NULL


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parquet_and_jsonl_load_the_same_rows_as_csv(
    fmt: str, pg_url: str, landing_dir: Path, tmp_path: Path
):
    source = landing_dir / f"every_type.{fmt}"
    if fmt == "parquet":
        parquet_file(source, ROWS)
        want = expected(ROWS)
    else:
        source.write_text(jsonl_text(ROWS), encoding="utf-8")
        # JSON cannot carry NaN or infinity: those two rows arrive as NULL.
        want = [
            normalized({**dict(zip(COLUMNS, row, strict=True)), "f": None})
            if isinstance(row[3], float) and not math.isfinite(row[3])
            else normalized(dict(zip(COLUMNS, row, strict=True)))
            for row in ROWS
        ]
    _, service = load(pg_url, tmp_path, source)
    try:
        assert [normalized(r) for r in storage(service)] == want
    finally:
        dispose(service)


@pytest.mark.parametrize("path", list(PATHS))
def test_merge_rewrites_changed_rows_and_keeps_unchanged_ones_on_every_path(
    path: str, request: pytest.FixtureRequest, landing_dir: Path, tmp_path: Path
):
    fixture, env = PATHS[path]
    url = request.getfixturevalue(fixture)
    first = landing_dir / "v1.csv"
    first.write_text(csv_text(ROWS), encoding="utf-8")
    changed = [
        ROWS[0],  # unchanged
        (2, "now set", *ROWS[1][2:]),  # one column changes
        ROWS[2],  # unchanged, all NULL: NULLs compare as equal
        (7, "new", 1, 2.0, True, dt.date(2026, 1, 1), dt.datetime(2026, 1, 1, tzinfo=UTC),
         Decimal("1"), Decimal("2")),
    ]  # fmt: skip
    second = landing_dir / "v2.csv"
    second.write_text(csv_text(changed), encoding="utf-8")

    job1, service = load(url, tmp_path, first, mode="merge", **env)
    dispose(service)
    job2 = service.queue.enqueue(
        {"dataset": "every_type", "source_uri": str(second), "business_date": "2026-11-24"}
    ).job
    service = build_service(
        make_settings(url, tmp_path / "home", landing_dir,
                      DW_DATASETS_PATH=tmp_path / "contracts", **env)
    )  # fmt: skip
    try:
        held = service.start(job2.job_id, "run-2")
        service.stage(held, "run-2")
        result = service.promote(job2.job_id, "run-2")
        rows = {r["id"]: r for r in storage(service)}
    finally:
        dispose(service)

    assert (result.rows, result.deleted, result.inserted) == (4, 1, 2)
    want = {row[0]: row for row in [*ROWS, changed[3]]}
    want[2] = changed[1]
    assert [normalized(rows[k]) for k in sorted(rows)] == expected_on(
        path, [want[k] for k in sorted(want)]
    )
    lineage = {k: r["_dw_job_id"] for k, r in rows.items()}
    assert lineage[1] == lineage[3] == job1.job_id  # unchanged rows keep their lineage
    assert lineage[2] == lineage[7] == job2.job_id


def run_job(service, source: Path, run_id: str):
    job = service.queue.enqueue(
        {"dataset": "every_type", "source_uri": str(source), "business_date": "2026-11-24"}
    ).job
    service.stage(service.start(job.job_id, run_id), run_id)
    return job


@pytest.mark.parametrize("path", ["postgres-adbc", "sqlite-executemany"])
def test_duplicate_keys_are_reported_by_converted_value_with_rows_and_lines(
    path: str, request: pytest.FixtureRequest, landing_dir: Path, tmp_path: Path
):
    # "7" and " 7 " are the same int64 key once converted; the check keeps only hashes, so the
    # report comes from re-reading the file and must name the same rows and lines as before.
    fixture, env = PATHS[path]
    source = landing_dir / "dups.csv"
    source.write_text(
        'id,s,i,f,b,d,ts,amount,big\n7,a,,,,,,,\n8,"two\nlines",,,,,,,\n 7 ,c,,,,,,,\n7,d,,,,,,,\n',
        encoding="utf-8",
    )
    with pytest.raises(Exception) as raised:
        load(request.getfixturevalue(fixture), tmp_path, source, **env)
    message = str(raised.value)
    assert "duplicate primary key (id=7) on rows 1 and 3 (lines 2 and 5); 3 rows share it" in (
        message
    )


def test_large_merges_refresh_the_storage_statistics_and_small_ones_do_not(
    pg_url: str, landing_dir: Path, tmp_path: Path
):
    big = landing_dir / "big.csv"
    big.write_text(
        "id,s,i,f,b,d,ts,amount,big\n" + "".join(f"{n},v{n},{n},,,,,,\n" for n in range(3000)),
        encoding="utf-8",
    )
    small = landing_dir / "small.csv"
    small.write_text("id,s,i,f,b,d,ts,amount,big\n1,changed,,,,,,,\n", encoding="utf-8")

    def statistics(service) -> tuple[float, int]:
        """(the planner's row estimate, how many times the table was ANALYZEd by hand)"""
        with service.warehouse.engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT c.reltuples, s.analyze_count FROM pg_class c "
                    "JOIN pg_stat_user_tables s ON s.relid = c.oid "
                    "WHERE c.oid = 'dw_storage.every_type'::regclass"
                )
            ).one()

    _, service = load(pg_url, tmp_path, big, mode="merge")
    try:
        # Analyzed right after the first load: the planner knows the 3,000 rows.
        assert statistics(service) == (3000, 1)
        with service.warehouse.engine.connect() as conn:
            analyzed = conn.execute(
                sa.text(
                    "SELECT attname FROM pg_stats WHERE schemaname = 'dw_storage' "
                    "AND tablename = 'every_type' ORDER BY attname"
                )
            ).scalars()
            assert list(analyzed) == ["_dw_tenant_id", "id"]  # the merge join's columns only

        # ... and the count of changes since the last full ANALYZE stays for autovacuum, which
        # then gathers the statistics of every column. The load's own counts reach the stats
        # system when its backend exits (or goes idle a while): close the pool, wait for them,
        # and analyze once more as a large job would.
        service.warehouse.engine.dispose()

        def changes_since_analyze() -> int:
            with service.warehouse.engine.connect() as conn:
                return conn.execute(
                    sa.text(
                        "SELECT n_mod_since_analyze FROM pg_stat_user_tables "
                        "WHERE relid = 'dw_storage.every_type'::regclass"
                    )
                ).scalar_one()

        deadline = time.monotonic() + 10
        while changes_since_analyze() < 3000 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert changes_since_analyze() >= 3000
        contract = service.contracts.get("every_type")
        storage = service.warehouse.tables(contract).storage
        service.warehouse._analyze_if_stale(storage, contract, changed_rows=3000)
        assert statistics(service) == (3000, 2)
        assert changes_since_analyze() >= 3000
        service.warehouse.engine.dispose()  # the next job's statistics start from here

        second = run_job(service, small, "run-2")
        result = service.promote(second.job_id, "run-2")
        assert (result.deleted, result.inserted) == (1, 1)
        assert statistics(service) == (3000, 2)  # 2 changed rows of 3,000: no ANALYZE
    finally:
        dispose(service)


@pytest.mark.parametrize("path", ["postgres-adbc", "sqlite-executemany"])
def test_has_staged_rows_follows_staging(
    path: str, request: pytest.FixtureRequest, csv_source: Path, tmp_path: Path
):
    fixture, env = PATHS[path]
    job, service = load(request.getfixturevalue(fixture), tmp_path, csv_source, **env)
    try:
        contract = service.contracts.get("every_type")
        assert not service.warehouse.has_staged_rows(contract, job.job_id)  # promoted: dropped
        again = run_job(service, csv_source, "run-2")
        assert service.warehouse.has_staged_rows(contract, again.job_id)
        assert service.warehouse.staged_rows(contract, again.job_id) == len(ROWS)
    finally:
        dispose(service)
