# ruff: noqa: T201
"""Shared helpers of the benchmark scripts: test data, contracts, scratch databases, output.

Not part of the package: the scripts in this folder import it as a sibling module
(`python benchmarks/ingest.py` puts this folder on `sys.path`). Only the public API of
`dw_pipelines` is used here and in the scripts.
"""

import json
import os
import platform
import secrets
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

# numpy and pyarrow are imported where used: a benchmark worker that imports this module for
# its constants keeps its memory baseline to what its own method needs.

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BUSINESS_DATE = "2026-11-24"
FORMATS = ("csv", "parquet", "jsonl", "json")

# The benchmark dataset: (name, contract type, SQL type of the plain reference table, nullable).
EVENTS_COLUMNS = (
    ("event_id", "int64", "bigint", False),
    ("user_id", "int64", "bigint", False),
    ("amount", "float64", "double precision", True),
    ("country", "string", "text", True),
    ("status", "string", "text", True),
    ("created_at", "timestamp", "timestamp with time zone", True),
    ("note", "string", "text", True),
)
COLUMN_NAMES = [name for name, *_ in EVENTS_COLUMNS]

_COUNTRIES = ["DE", "FR", "US", "GB", "NL", "ES", "IT", "PL", "SE", "JP", "BR", "IN"]
_STATUSES = ["created", "paid", "shipped", "delivered", "refunded", "cancelled"]
# Note heads, some with a comma or a double quote so CSV quoting is exercised.
_NOTE_HEADS = [
    "gift wrap, red ribbon",
    "leave at the front door",
    "call before delivery",
    "express shipping please",
    "fragile: handle with care",
    "second attempt, new address",
    'customer said "thanks!"',
    "deliver to the neighbour",
    "invoice to the head office",
    "no plastic packaging",
]
_EPOCH_2026 = 1_767_225_600  # 2026-01-01T00:00:00Z


# ----------------------------------------------------------------------------- contracts


def contract_yaml(name: str, write_mode: str) -> str:
    """A dataset contract for the events columns (see README.md, "Dataset contracts")."""
    lines = [
        f"name: {name}",
        f"description: Benchmark events ({write_mode}).",
        f"write_mode: {write_mode}",
        "primary_key: [event_id]",
        "columns:",
    ]
    for column, kind, _, nullable in EVENTS_COLUMNS:
        lines.append(f"  - {{name: {column}, type: {kind}, nullable: {str(nullable).lower()}}}")
    return "\n".join(lines) + "\n"


def write_contracts(folder: Path) -> Path:
    """`events` (append) and `events_merge` (merge) into `folder`, the DW_DATASETS_PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "events.yaml").write_text(contract_yaml("events", "append"))
    (folder / "events_merge.yaml").write_text(contract_yaml("events_merge", "merge"))
    return folder


def plain_table_ddl(qualified_name: str) -> str:
    """CREATE TABLE with the events columns and no index: the physical reference table."""
    columns = ", ".join(
        f"{name} {sql}{'' if nullable else ' NOT NULL'}"
        for name, _, sql, nullable in EVENTS_COLUMNS
    )
    return f"CREATE TABLE {qualified_name} ({columns})"


# ----------------------------------------------------------------------------------- data


def generate_events(rows: int, seed: int = 1) -> "pa.Table":
    """Deterministic events 1..rows (numpy `default_rng(seed)`), built column by column.

    No per-row Python: numpy draws each column, pyarrow builds the strings.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    rng = np.random.default_rng(seed)
    user_id = rng.integers(1, 200_000, rows, dtype=np.int64)
    amount = np.round(rng.uniform(0.5, 5_000.0, rows), 2)
    amount_null = rng.random(rows) < 0.01
    country = rng.integers(0, len(_COUNTRIES), rows)
    status = rng.integers(0, len(_STATUSES), rows)
    created = _EPOCH_2026 + rng.integers(0, 330 * 86_400, rows, dtype=np.int64)
    note_head = rng.integers(0, len(_NOTE_HEADS), rows)
    note_ref = rng.integers(100_000, 1_000_000, rows)
    note_null = rng.random(rows) < 0.05
    notes = pc.binary_join_element_wise(
        pa.array(_NOTE_HEADS).take(pa.array(note_head)),
        pc.cast(pa.array(note_ref), pa.string()),
        " #",
    )
    return pa.table(
        {
            "event_id": pa.array(np.arange(1, rows + 1, dtype=np.int64)),
            "user_id": pa.array(user_id),
            "amount": pa.array(amount, mask=amount_null),
            "country": pa.array(_COUNTRIES).take(pa.array(country)),
            "status": pa.array(_STATUSES).take(pa.array(status)),
            "created_at": pa.array(created, pa.timestamp("s", tz="UTC")),
            "note": pc.if_else(pa.array(note_null), pa.scalar(None, pa.string()), notes),
        }
    )


def _with_iso_timestamps(table: "pa.Table") -> "pa.Table":
    """created_at as text like `2026-06-14T07:14:20Z` (how the CSV and JSONL files carry it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    index = table.schema.get_field_index("created_at")
    if not pa.types.is_timestamp(table.schema.field(index).type):
        return table
    text = pc.strftime(table.column(index), format="%Y-%m-%dT%H:%M:%SZ")
    return table.set_column(index, "created_at", text)


def write_csv(table: "pa.Table", path: Path) -> None:
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=True, quoting_style="needed")
    pacsv.write_csv(_with_iso_timestamps(table), path, options)


def write_jsonl(table: "pa.Table", path: Path) -> None:
    # pyarrow has no JSON writer; pandas' writer is vectorised C code and escapes strings.
    frame = _with_iso_timestamps(table).to_pandas()
    frame.to_json(path, orient="records", lines=True, force_ascii=False)


def write_json_array(table: "pa.Table", path: Path) -> None:
    """One pretty-printed JSON array of objects (an element per line block), the most common
    JSON export: written from the JSON Lines form, a line at a time."""
    lines = path.with_suffix(".jsonl.tmp")
    write_jsonl(table, lines)
    with lines.open("rb") as source, path.open("wb") as target:
        target.write(b"[\n")
        for index, line in enumerate(source):
            target.write((b",\n  " if index else b"  ") + line.rstrip(b"\n"))
        target.write(b"\n]\n")
    lines.unlink()


def write_table(table: "pa.Table", path: Path, fmt: str) -> None:
    if fmt == "csv":
        write_csv(table, path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif fmt == "jsonl":
        write_jsonl(table, path)
    elif fmt == "json":
        write_json_array(table, path)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def split_rows(rows: int, parts: int) -> list[tuple[int, int]]:
    """(first_id, rows) of `parts` nearly equal slices of 1..rows."""
    base, extra = divmod(rows, parts)
    slices, first = [], 1
    for index in range(parts):
        count = base + (1 if index < extra else 0)
        slices.append((first, count))
        first += count
    return slices


def updated(table: "pa.Table", percent: int = 100) -> "pa.Table":
    """The same keys with `percent` of the rows changed (user_id + 1, on the rows whose event_id
    ends in 00..percent-1, spread evenly through the file): what a merge must rewrite."""
    import pyarrow.compute as pc

    index = table.schema.get_field_index("user_id")
    user_id = table.column(index)
    if percent < 100:
        chosen = pc.less(pc.remainder(table.column("event_id"), 100), percent)
        return table.set_column(index, "user_id", pc.if_else(chosen, pc.add(user_id, 1), user_id))
    return table.set_column(index, "user_id", pc.add(user_id, 1))


def generate_files(
    rows: int, parts: int, fmt: str, folder: Path, update: bool = False, percent: int = 100
) -> list[Path]:
    """The events 1..rows in `parts` files of format `fmt` (one data set, cut into slices).

    With `update`, the same keys with `percent` of the rows changed (see `updated`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    table = generate_events(rows)
    if update:
        table = updated(table, percent)
    paths = []
    for index, (first, count) in enumerate(split_rows(rows, parts)):
        name = "events.{}" if parts == 1 else f"events_{index + 1:04d}.{{}}"
        path = folder / name.format(fmt)
        write_table(table.slice(first - 1, count), path, fmt)
        paths.append(path)
    return paths


def format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"pq": "parquet", "ndjson": "jsonl"}.get(suffix, suffix)
    if fmt not in FORMATS:
        raise SystemExit(f"{path}: unknown format (use .csv, .parquet, .jsonl or .json)")
    return fmt


def user_id_sum(paths: Sequence[Path]) -> int:
    """sum(user_id) over the files: a checksum of what a loaded table must hold."""
    import pyarrow.compute as pc

    return sum(pc.sum(read_table(p).column("user_id")).as_py() for p in paths)


def read_table(path: Path) -> "pa.Table":
    """A whole source file as an Arrow table (for row counts and format conversion only)."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    fmt = format_of(path)
    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "jsonl":
        return pajson.read_json(path)
    if fmt == "json":  # the array, through the package's own JSON Lines rewrite
        from dw_pipelines.core.jsonarray import JsonArrayLines

        with open(path, "rb") as raw:
            return pajson.read_json(JsonArrayLines(raw))
    # As the package reads CSV: an unquoted empty field is NULL, "" an empty string.
    options = pacsv.ConvertOptions(strings_can_be_null=True, quoted_strings_can_be_null=False)
    return pacsv.read_csv(path, convert_options=options)


# ------------------------------------------------------------------------------- database


def sqlalchemy_url(libpq_url: str) -> str:
    return "postgresql+psycopg://" + libpq_url.split("://", 1)[1]


def libpq_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


def database_url(server_url: str, name: str) -> str:
    """`server_url` with its database replaced by `name` (libpq form)."""
    base, _, tail = libpq_url(server_url).rpartition("/")
    query = "?" + tail.split("?", 1)[1] if "?" in tail else ""
    return f"{base}/{name}{query}"


def create_database(server_url: str) -> str:
    """A new empty database `dw_bench_<random>`; returns its libpq URL."""
    import psycopg

    name = f"dw_bench_{secrets.token_hex(4)}"
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(server_url, name)


def drop_database(server_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> None:
    """The package's own migrations: outbox and audit tables."""
    from dw_pipelines.core.db import create_db_engine
    from dw_pipelines.core.migrations import upgrade

    engine = create_db_engine(sqlalchemy_url(url))
    try:
        upgrade(engine)
    finally:
        engine.dispose()


@contextmanager
def scratch_database(server_url: str, keep: bool = False) -> Iterator[str]:
    """A migrated `dw_bench_<random>` database, dropped on exit unless `keep`."""
    url = create_database(server_url)
    try:
        migrate(url)
        yield url
    finally:
        if keep:
            log(f"kept database {url}")
        else:
            drop_database(server_url, url)


@contextmanager
def empty_database(server_url: str, keep: bool = False) -> Iterator[str]:
    """A new empty `dw_bench_<random>` database (for Dagster's own storage), dropped on exit."""
    url = create_database(server_url)
    try:
        yield url
    finally:
        if keep:
            log(f"kept database {url}")
        else:
            drop_database(server_url, url)


def server_version(server_url: str) -> str:
    import psycopg

    with psycopg.connect(libpq_url(server_url)) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


def sql(url: str, *statements: str) -> list[tuple]:
    """Run statements in one autocommit session; returns the rows of the last one."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        result = []
        for statement in statements:
            cursor = conn.execute(statement)
            result = cursor.fetchall() if cursor.description else []
        return result


# --------------------------------------------------------------------------------- output


def log(message: str) -> None:
    """Progress goes to stderr so `--json` keeps stdout to one document."""
    print(message, file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def machine_info(server_url: str) -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": server_version(server_url),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "versions": package_versions(),
    }


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("dw_pipelines", "dagster", "pyarrow", "pandas", "SQLAlchemy", "psycopg", "dlt"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table; numbers right-aligned."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def numeric(text: str) -> bool:
        stripped = text.replace(",", "").replace(".", "").replace("x", "").replace("-", "")
        return stripped.isdigit()

    lines = []
    for index, row in enumerate(cells):
        parts = [
            cell.rjust(width) if index and numeric(cell) else cell.ljust(width)
            for cell, width in zip(row, widths, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def dump_json(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=False, default=str)
