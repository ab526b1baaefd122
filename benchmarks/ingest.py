# ruff: noqa: T201
"""Ingestion benchmark: this project's data path against raw COPY, pandas and dlt.

One invocation generates the data (or takes `--source`), creates a fresh PostgreSQL database
`dw_bench_<random>`, then measures one method after the other, each in a fresh subprocess so
that its peak RSS is its own:

    copy          raw `COPY ... FROM STDIN (FORMAT csv, HEADER)` into a plain table without
                  indexes: the physical reference (for parquet/jsonl sources, of the equivalent
                  CSV file)
    ingest        this project: enqueue, then start + stage + promote through `build_service`,
                  `append` into an empty table; a job of at least DW_ATTACH_MIN_ROWS (1M) rows
                  is attached as a partition of storage, not copied (the "promotion" column)
    ingest-copy   the same with DW_ATTACH_MIN_ROWS=off: every job copied by INSERT ... SELECT
    ingest-merge  the same in `merge` mode into a table that already holds every key: a first
                  job loads the file, the second, measured, job loads the same keys with every
                  row changed (user_id + 1), so every row is rewritten
    pandas        `pandas.read_*` + `DataFrame.to_sql(chunksize=10_000)` append
    dlt           dlt (`pip install -e '.[bench]'`): Arrow batches, CSV loader files (COPY)
    dlt-merge     dlt merge (delete-insert on event_id) into a table holding every key
    dagster       with `--dagster`: `ingest` as a full in-process Dagster run of dw_ingestion_job
    ingest-s3     with `--s3`: `ingest` reading the same file(s) as `s3://` objects from a local
                  S3-protocol server (moto's standalone server on loopback, started here)

The wall time is the load only, measured inside the worker (no process start, no imports, no
enqueue). After each method the parent checks that the target table holds exactly N rows and
the expected data (sum of user_id: the source's, or after a merge the update file's), and for
the service's appends that the measured jobs own exactly those rows (`_dw_job_id`).

`--table-rows N[,N...]` measures instead what a delta costs against the size of the table it
lands in ("cost grows with the delta, not the table"). For each N, smallest first, one delta
file of `--rows` rows is generated: `--delta-new-percent` (10) of them new keys (event_id > N),
the rest existing keys with user_id + 1, so every row changes something: by default evenly
strided over 1..N (each on its own pages: the worst case), with `--delta-keys recent` the N's
last keys (a delta of recent rows, as of orders still changing). Then:

    ingest-merge  the merge table `dw_storage.events_merge` is first filled (not timed) with the
                  events 1..N through the service (enqueue + start/stage/promote, merge jobs of
                  at most 2M rows, so `_dw_loads` and the lineage are real), VACUUM (ANALYZE)d;
                  each repeat then merges the delta into a fresh file-level copy of that
                  database, after a CHECKPOINT: the timed job is the delta's alone
    copy, ingest, pandas, dlt, dagster
                  load the same delta file into an EMPTY table (the reference: x COPY, x ingest)

`ingest` is added when `ingest-merge` is measured without it (the target compares against it).
The ingest and dagster workers create (append: empty) or check (merge) the dataset's tables
before their timer, so both sides time the load alone, not a CREATE TABLE.
The table shows each row's ratio to raw COPY and to the ingest append of the same delta, and
with several sizes to the same method at the smallest size; peak RSS is per worker, so per size.
`--merge-changed`, `--source`, `--s3` and `dlt-merge` do not combine with `--table-rows`.

Generated data is written in chunks of 2^20 rows (same values as one `generate_events` call,
checked at start-up on a small size), so the parent's memory does not grow with `--rows`.

    .venv/bin/python benchmarks/ingest.py                    # 1M rows, CSV
    .venv/bin/python benchmarks/ingest.py --rows 10000 --format parquet --repeat 3
    .venv/bin/python benchmarks/ingest.py --files 100 --methods copy,ingest --dagster
    .venv/bin/python benchmarks/ingest.py --methods copy,ingest --s3
    .venv/bin/python benchmarks/ingest.py --methods copy,ingest-merge --merge-changed 1  # snapshot
    .venv/bin/python benchmarks/ingest.py --json > result.json
    .venv/bin/python benchmarks/ingest.py --table-rows 1000000,10000000 --rows 100000 \
        --methods copy,ingest-merge                          # a 100k delta into 1M and 10M rows
"""

import argparse
import importlib.util
import io
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from unittest import mock

import benchlib as bl

PANDAS_CHUNKSIZE = 10_000
# One statement may bind at most 65,535 parameters (PostgreSQL protocol).
PG_MAX_PARAMETERS = 65_535


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    mode: str
    # Schemas holding the method's target tables: dropped before and after each measurement.
    schemas: tuple[str, ...]
    table: str
    plain_table: bool = False  # the parent creates `table` (no indexes) before the run


METHODS = {
    m.key: m
    for m in (
        Method("copy", "raw COPY (csv)", "append", ("bench_raw",), "bench_raw.events", True),
        Method(
            "ingest",
            "ingest (service)",
            "append",
            ("dw_staging", "dw_storage"),
            "dw_storage.events",
        ),
        Method(
            "ingest-copy",
            "ingest (service, copy)",
            "append",
            ("dw_staging", "dw_storage"),
            "dw_storage.events",
        ),
        Method(
            "ingest-merge",
            "ingest (service)",
            "merge",
            ("dw_staging", "dw_storage"),
            "dw_storage.events_merge",
        ),
        Method("pandas", "pandas.to_sql", "append", ("bench_pandas",), "bench_pandas.events", True),
        Method(
            "dlt",
            "dlt (arrow, csv COPY)",
            "append",
            ("bench_dlt", "bench_dlt_staging"),
            "bench_dlt.events",
        ),
        Method(
            "dlt-merge",
            "dlt (arrow, csv COPY)",
            "merge",
            ("bench_dlt", "bench_dlt_staging"),
            "bench_dlt.events",
        ),
        Method(
            "dagster",
            "ingest (dagster run)",
            "append",
            ("dw_staging", "dw_storage"),
            "dw_storage.events",
        ),
        Method(
            "ingest-s3",
            "ingest (service, s3://)",
            "append",
            ("dw_staging", "dw_storage"),
            "dw_storage.events",
        ),
    )
}
DEFAULT_METHODS = ("copy", "ingest", "ingest-copy", "ingest-merge", "pandas", "dlt", "dlt-merge")
DLT_METHODS = ("dlt", "dlt-merge")
DLT_MISSING = "dlt: not installed (pip install -e '.[bench]')"


# ================================================================================== workers
# Each runs in its own process: `ingest.py --_worker METHOD CONFIG.json`. It returns a dict
# with at least `seconds` (the load only) and `rss_before_mb` (right before the load).


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process image's own high-water mark (VmHWM).

    Not `ru_maxrss`: on Linux it survives fork and exec, so a worker would report the parent's
    peak (the parent holds the generated data) whenever that is higher than its own.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                # The kernel updates its counters lazily: never report less than now.
                return max(int(line.split()[1]) / 1024, current_rss_mb())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def csv_header(path: str) -> list[str]:
    """The column names on a CSV file's first line (COPY's column list follows the file)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f))


def worker_copy(config: dict) -> dict:
    import psycopg
    from psycopg import sql

    statements = [
        sql.SQL("COPY bench_raw.events ({}) FROM STDIN (FORMAT csv, HEADER)").format(
            sql.SQL(", ").join(map(sql.Identifier, csv_header(path)))
        )
        for path in config["copy_files"]
    ]
    with psycopg.connect(config["url"]) as conn:
        before = current_rss_mb()
        started = time.perf_counter()
        for path, statement in zip(config["copy_files"], statements, strict=True):
            with conn.cursor() as cursor, cursor.copy(statement) as copy, open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
            conn.commit()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "rss_before_mb": before}


def checkpoint(config: dict) -> None:
    """After a merge's untimed fill: the timed pass starts from a checkpoint, as every other
    method's load does (`reset` runs one before each), rather than paying for the fill's dirty
    pages and WAL with a checkpoint of its own in the middle of the timed load."""
    bl.sql(config["url"], "CHECKPOINT")


def _enqueue(service, dataset: str, files: list[str]) -> list:
    return [
        service.queue.enqueue(
            {
                "dataset": dataset,
                "source_uri": path,
                "business_date": bl.BUSINESS_DATE,
                "idempotency_key": f"bench-{uuid.uuid4().hex}",
            }
        ).job
        for path in files
    ]


def _ingest_pass(service, dataset: str, files: list[str]) -> tuple[float, list[str]]:
    """Enqueue one job per file (not timed), then start, stage and promote each (timed)."""
    jobs = _enqueue(service, dataset, files)
    started = time.perf_counter()
    for job in jobs:
        run_id = f"bench-{uuid.uuid4().hex}"
        service.stage(service.start(job.job_id, run_id), run_id)
        service.promote(job.job_id, run_id)
    return time.perf_counter() - started, [job.job_id for job in jobs]


def worker_ingest(config: dict, merge: bool = False) -> dict:
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import Settings

    dataset = "events_merge" if merge else "events"
    service = build_service(Settings.from_env(config["env"]))
    try:
        contract = service.contracts.get(dataset)
        files = config["files"]
        if merge and not config.get("prefilled"):
            # Fill the table with every key; the timed pass then changes every row. (With
            # --table-rows the parent filled a database beforehand: the delta is `files`.)
            _ingest_pass(service, dataset, files)
            files = config["update_files"]
            checkpoint(config)
        if config.get("tables_ready"):
            service.warehouse.ensure_tables(contract)  # see measure_table_case
            if service.warehouse.partitioned_storage(contract):
                # and the load month's partitions, made once a month, not per job
                service.warehouse.ensure_load_month(contract, service.queue.clock())
        before = current_rss_mb()
        seconds, job_ids = _ingest_pass(service, dataset, files)
        storage_rows = service.warehouse.storage_rows(contract)
        rows_of_jobs = sum(service.warehouse.storage_rows(contract, j) for j in job_ids)
        strategies = sorted(
            {
                e.details["strategy"]
                for j in job_ids
                for e in service.queue.audit_trail(j)
                if e.event == "PROMOTED"
            }
        )
    finally:
        dispose(service)
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "storage_rows": storage_rows,
        "rows_of_measured_jobs": rows_of_jobs,
        "job_ids": job_ids,
        "strategies": strategies,
    }


def worker_fill(config: dict) -> dict:
    """--table-rows: fill `events_merge` with the table's rows, one merge job per fill file,
    through the service as `worker_ingest` loads (untimed; progress on stderr)."""
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import Settings

    service = build_service(Settings.from_env(config["env"]))
    files = config["fill_files"]
    job_ids = []
    started = time.perf_counter()
    try:
        for index, path in enumerate(files, 1):
            job_ids += _ingest_pass(service, "events_merge", [path])[1]
            bl.log(
                f"    fill job {index}/{len(files)} promoted "
                f"({time.perf_counter() - started:.1f} s so far)"
            )
    finally:
        dispose(service)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rss_before_mb": 0.0, "job_ids": job_ids}


def worker_ingest_s3(config: dict) -> dict:
    # The AWS SDK inside pyarrow takes its endpoint credentials from the process environment.
    os.environ.update(config["s3"]["process_env"])
    return worker_ingest({**config, "files": config["s3"]["files"]})


def worker_dagster(config: dict) -> dict:
    # Resources inside a run read DW_* from the process environment.
    os.environ.update(config["env"])
    import dagster as dg

    from dw_pipelines.definitions import build_definitions
    from dw_pipelines.services import build_service, dispose
    from dw_pipelines.settings import Settings

    settings = Settings.from_env()
    job_def = build_definitions(settings).resolve_job_def("dw_ingestion_job")
    service = build_service(settings)
    selection = [dg.AssetKey(["staging", "events"]), dg.AssetKey(["storage", "events"])]
    try:
        if config.get("tables_ready"):  # see measure_table_case
            service.warehouse.ensure_tables(service.contracts.get("events"))
        with dg.instance_for_test() as instance:
            jobs = _enqueue(service, "events", config["files"])
            before = current_rss_mb()
            started = time.perf_counter()
            for job in jobs:
                job_def.execute_in_process(
                    instance=instance,
                    partition_key=bl.BUSINESS_DATE,
                    tags={"dw/job_id": job.job_id},
                    asset_selection=selection,
                )
            seconds = time.perf_counter() - started
        contract = service.contracts.get("events")
        storage_rows = service.warehouse.storage_rows(contract)
    finally:
        dispose(service)
    return {"seconds": seconds, "rss_before_mb": before, "storage_rows": storage_rows}


def _read_frame(pd, path: str):
    fmt = bl.format_of(Path(path))
    if fmt == "parquet":
        return pd.read_parquet(path)
    if fmt in ("jsonl", "json"):
        return pd.read_json(path, lines=fmt == "jsonl", convert_dates=["created_at"])
    return pd.read_csv(path, parse_dates=["created_at"])


def worker_pandas(config: dict) -> dict:
    import pandas as pd
    import sqlalchemy as sa

    method = None if config["pandas_method"] == "default" else "multi"
    chunksize = PANDAS_CHUNKSIZE
    if method == "multi":
        chunksize = min(chunksize, PG_MAX_PARAMETERS // len(bl.COLUMN_NAMES))
    engine = sa.create_engine(bl.sqlalchemy_url(config["url"]))
    try:
        before = current_rss_mb()
        started = time.perf_counter()
        for path in config["files"]:
            _read_frame(pd, path).to_sql(
                "events",
                engine,
                schema="bench_pandas",
                if_exists="append",
                index=False,
                chunksize=chunksize,
                method=method,
            )
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return {"seconds": seconds, "rss_before_mb": before, "chunksize": chunksize}


def arrow_batches(path: str) -> Iterator:
    """One source file as Arrow record batches typed like the contract (dlt's input)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    types = {
        "int64": pa.int64(),
        "float64": pa.float64(),
        "string": pa.string(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    schema = pa.schema([(name, types[kind]) for name, kind, *_ in bl.EVENTS_COLUMNS])
    fmt = bl.format_of(Path(path))
    if fmt == "parquet":
        yield from pq.ParquetFile(path).iter_batches(batch_size=65_536)
    elif fmt == "jsonl":
        yield from pajson.open_json(path, parse_options=pajson.ParseOptions(explicit_schema=schema))
    else:
        yield from pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(column_types=schema))


def worker_dlt(config: dict, merge: bool = False) -> dict:
    home = Path(config["workdir"]) / f"dlt-{uuid.uuid4().hex}"
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"  # no network calls from the benchmark
    os.environ["DLT_DATA_DIR"] = str(home)  # nothing written to ~/.dlt or the repository
    os.environ["DLT_PROJECT_DIR"] = str(home)
    # Lineage column per row, like the project's _dw_job_id (also proves the merge's updates).
    os.environ["NORMALIZE__PARQUET_NORMALIZER__ADD_DLT_LOAD_ID"] = "true"
    import dlt
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet  # noqa: F401  (the readers are imported before the timer starts)
    import sqlalchemy as sa

    url = sa.make_url(config["url"])
    if url.password is None:
        # dlt refuses credentials without a password; trust/peer auth ignores this one.
        url = url.set(password="unused")
    pipeline = dlt.pipeline(
        pipeline_name="dw_bench_merge" if merge else "dw_bench_append",
        pipelines_dir=str(home / "pipelines"),
        destination=dlt.destinations.postgres(
            credentials=url.render_as_string(hide_password=False)
        ),
        dataset_name="bench_dlt",
    )
    hints = {"write_disposition": "merge", "primary_key": "event_id"} if merge else {}

    def load_all(files: list[str]) -> list[str]:
        """One pipeline run per file, as separate uploads would arrive."""
        load_ids = []
        for path in files:
            info = pipeline.run(
                arrow_batches(path),
                table_name="events",
                loader_file_format="csv",
                **({"write_disposition": "append"} | hints),
            )
            info.raise_on_failed_jobs()
            load_ids.extend(info.loads_ids)
        return load_ids

    files = config["files"]
    if merge:  # fill the table with every key; the timed pass then changes every row
        load_all(files)
        files = config["update_files"]
        checkpoint(config)
    before = current_rss_mb()
    started = time.perf_counter()
    load_ids = load_all(files)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rss_before_mb": before, "load_ids": load_ids}


WORKERS = {
    "copy": worker_copy,
    "ingest": worker_ingest,
    "ingest-copy": lambda config: worker_ingest(
        {**config, "env": {**config["env"], "DW_ATTACH_MIN_ROWS": "off"}}
    ),
    "ingest-merge": lambda config: worker_ingest(config, merge=True),
    "pandas": worker_pandas,
    "dlt": worker_dlt,
    "dlt-merge": lambda config: worker_dlt(config, merge=True),
    "dagster": worker_dagster,
    "ingest-s3": worker_ingest_s3,
    "fill": worker_fill,
}


def worker_main(method: str, config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    result = WORKERS[method](config)
    result["peak_rss_mb"] = peak_rss_mb()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(config["result_path"]).write_text(json.dumps(result))


# =================================================================================== parent


# --------------------------------------------------------------------- generated data, chunked
# bl.generate_events builds every row in memory: 645 MB peak for 3M rows (about 4.3 GB at 20M),
# and bl.user_id_sum re-reads each file whole (1.0 GB at 3M rows, about 6.7 GB at 20M). So the
# parent generates GEN_CHUNK_ROWS rows at a time, through bl.generate_events itself, with the
# values one call for all rows gives: numpy draws a column in pieces exactly as in one call (the
# bit generator's state carries over), so each of generate_events' draws gets its own generator,
# positioned where a single generation's draw of that column would start. `check_chunks`
# compares the two on a small size at every start. The files are byte for byte those of
# bl.generate_files, except that Parquet row groups may be cut differently with --files > 1.
GEN_CHUNK_ROWS = 1 << 20  # pyarrow's default Parquet row group (1Mi rows): the same groups
_PROBE_ROWS = 7_919  # a size none of generate_events' constants equals: marks the size argument


class _DrawRecorder:
    """Stands in for numpy's Generator in one probe call of bl.generate_events: records each draw
    (method name, arguments) and passes it on."""

    def __init__(self, rng) -> None:
        self._rng = rng
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        method = getattr(self._rng, name)

        def draw(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return method(*args, **kwargs)

        return draw


class _DrawDispatcher:
    """Stands in for numpy's Generator in bl.generate_events: the k-th draw goes to the k-th
    generator (positioned by `event_chunks`)."""

    def __init__(self, calls: list, generators: list) -> None:
        self._pending = list(zip([name for name, *_ in calls], generators, strict=True))

    def __getattr__(self, name: str):
        if not self._pending or self._pending[0][0] != name:
            raise RuntimeError(f"bl.generate_events drew {name!r} out of the recorded order")
        return getattr(self._pending.pop(0)[1], name)


def _generate_with(rng, rows: int, seed: int):
    import numpy as np

    with mock.patch.object(np.random, "default_rng", lambda *_args, **_kwargs: rng):
        return bl.generate_events(rows, seed)


def _sized(values, count: int):
    """A recorded draw's arguments with the probe size replaced by `count`."""
    if isinstance(values, dict):
        return {k: count if type(v) is int and v == _PROBE_ROWS else v for k, v in values.items()}
    return tuple(count if type(v) is int and v == _PROBE_ROWS else v for v in values)


def event_chunks(rows: int, seed: int = 1, chunk: int = GEN_CHUNK_ROWS) -> Iterator:
    """bl.generate_events(rows, seed) as consecutive Arrow tables of up to `chunk` rows."""
    import copy

    import numpy as np
    import pyarrow as pa

    recorder = _DrawRecorder(np.random.default_rng(seed))
    _generate_with(recorder, _PROBE_ROWS, seed)
    for name, args, kwargs in recorder.calls:
        marked = [v for v in (*args, *kwargs.values()) if type(v) is int and v == _PROBE_ROWS]
        if len(marked) != 1:
            raise SystemExit(f"bl.generate_events' draw {name}{args} has no single size argument")
    # One generator per draw, at the state a single generation reaches before that draw.
    rng = np.random.default_rng(seed)
    generators = []
    for index, (name, args, kwargs) in enumerate(recorder.calls):
        generators.append(copy.deepcopy(rng))
        if index + 1 < len(recorder.calls):
            for start in range(0, rows, chunk):
                count = min(chunk, rows - start)
                getattr(rng, name)(*_sized(args, count), **_sized(kwargs, count))
    for start in range(0, rows, chunk):
        count = min(chunk, rows - start)
        table = _generate_with(_DrawDispatcher(recorder.calls, generators), count, seed)
        ids = pa.array(np.arange(start + 1, start + count + 1, dtype=np.int64))
        yield table.set_column(table.schema.get_field_index("event_id"), "event_id", ids)


def check_chunks() -> None:
    """Fail loudly unless chunked generation gives what one bl.generate_events call gives."""
    import pyarrow as pa

    rows = 10_007
    whole = bl.generate_events(rows)
    if not pa.concat_tables(event_chunks(rows, chunk=3_000)).equals(whole):
        raise SystemExit("FAILED: chunked generation differs from bl.generate_events")


class _FileWriter:
    """One file of format `fmt` written from consecutive tables: the bytes bl.write_table writes
    for their concatenation (Parquet: one row group per table of up to 1Mi rows)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt = path, fmt
        self._parquet = None
        self._file = None
        self._rows = 0

    def write(self, table) -> None:
        if not table.num_rows:
            return
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
            self._rows += table.num_rows
            return
        if self._file is None:
            self._file = open(self.path, "wb")  # closed in `close`
            if self.fmt == "json":
                self._file.write(b"[\n")
        buffer = io.BytesIO()
        if self.fmt == "csv":
            bl.write_csv(table, buffer)
            data = buffer.getbuffer()
            # Every piece carries the header line: keep the first one only.
            self._file.write(
                data if not self._rows else data[bytes(data[:65536]).index(b"\n") + 1 :]
            )
        else:
            bl.write_jsonl(table, buffer)
            if self.fmt == "jsonl":
                self._file.write(buffer.getbuffer())
            else:  # the array: as bl.write_json_array wraps the JSON Lines
                for index, line in enumerate(buffer.getvalue().splitlines()):
                    self._file.write((b",\n  " if index or self._rows else b"  ") + line)
        self._rows += table.num_rows

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._file is not None:
            if self.fmt == "json":
                self._file.write(b"\n]\n")
            self._file.close()


class EventFiles:
    """`parts` files of nearly equal rows (named as bl.generate_files names them) written from
    consecutive tables of `rows` rows in all; `checksum` is their sum(user_id)."""

    def __init__(self, folder: Path, fmt: str, rows: int, parts: int = 1, stem: str = "events"):
        folder.mkdir(parents=True, exist_ok=True)
        self._sizes = [count for _, count in bl.split_rows(rows, parts)]
        self._names = [
            f"{stem}.{fmt}" if parts == 1 else f"{stem}_{index + 1:04d}.{fmt}"
            for index in range(parts)
        ]
        self.folder, self.fmt = folder, fmt
        self.paths: list[Path] = []
        self.checksum = 0
        self._writer: _FileWriter | None = None
        self._left = 0

    def write(self, table) -> None:
        import pyarrow.compute as pc

        self.checksum += pc.sum(table.column("user_id")).as_py() or 0
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                index = len(self.paths)
                self.paths.append(self.folder / self._names[index])
                self._writer, self._left = _FileWriter(self.paths[-1], self.fmt), self._sizes[index]
            take = min(self._left, table.num_rows - offset)
            self._writer.write(table.slice(offset, take))
            offset += take
            self._left -= take
            if not self._left:
                self._writer.close()
                self._writer = None

    def close(self) -> list[Path]:
        if self._writer is not None or len(self.paths) != len(self._sizes):
            raise RuntimeError(f"{self.folder}: fewer rows written than announced")
        return self.paths


def _log_progress(what: str, done: int, rows: int, every: int = 4 * GEN_CHUNK_ROWS) -> None:
    if rows > every and (done % every < GEN_CHUNK_ROWS or done == rows):
        bl.log(f"  {what}: {done:,}/{rows:,} rows")


@dataclass
class Data:
    files: list[Path]  # what the methods load
    update_files: list[Path]  # the same keys, --merge-changed % of the rows changed: timed merge
    copy_files: list[Path]  # CSV equivalents, for raw COPY
    fmt: str
    rows: int
    generated: bool
    checksum: int = 0  # sum(user_id) of `files`
    update_checksum: int = 0  # sum(user_id) of `update_files`

    # Cached: --table-rows removes each size's files once measured.
    @cached_property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    @cached_property
    def copy_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.copy_files)


def prepare_data(args: argparse.Namespace, workdir: Path, methods: list[Method]) -> Data:
    if args.source:
        data = _source_data(args, workdir)
        data.checksum = bl.user_id_sum(data.files)
        data.update_checksum = bl.user_id_sum(data.update_files)
        return data
    # Update files only for a merge, the CSV equivalent only for raw COPY of another format.
    merge = any(m.mode == "merge" for m in methods)
    copy_csv = args.format != "csv" and any(m.key == "copy" for m in methods)
    bl.log(f"generating {args.rows:,} rows as {args.files} {args.format} file(s) ...")
    files = EventFiles(workdir / "landing", args.format, args.rows, args.files)
    updates = EventFiles(workdir / "updates", args.format, args.rows, args.files) if merge else None
    copies = EventFiles(workdir / "copy_csv", "csv", args.rows, args.files) if copy_csv else None
    done = 0
    for chunk in event_chunks(args.rows):
        files.write(chunk)
        if updates is not None:
            updates.write(bl.updated(chunk, args.merge_changed))
        if copies is not None:
            copies.write(chunk)
        done += chunk.num_rows
        _log_progress("generated", done, args.rows)
    paths = files.close()
    data = Data(
        paths,
        updates.close() if updates else [],
        copies.close() if copies else (paths if args.format == "csv" else []),
        args.format,
        args.rows,
        generated=True,
        checksum=files.checksum,
        update_checksum=updates.checksum if updates else 0,
    )
    return data


def _source_data(args: argparse.Namespace, workdir: Path) -> Data:
    """`--source` files, their update variant and (for parquet/jsonl) their CSV equivalent."""
    files = [Path(p).resolve() for p in args.source]
    formats = {bl.format_of(p) for p in files}
    if len(formats) != 1:
        raise SystemExit("--source files must all have the same format")
    fmt = formats.pop()
    rows, updates, copy_files = 0, [], []
    for path in files:
        table = bl.read_table(path)
        rows += table.num_rows
        updates.append(workdir / "updates" / path.name)
        updates[-1].parent.mkdir(parents=True, exist_ok=True)
        bl.write_table(bl.updated(table, args.merge_changed), updates[-1], fmt)
        if fmt == "csv":
            copy_files.append(path)
        else:
            copy_files.append(workdir / "copy_csv" / f"{path.stem}.csv")
            copy_files[-1].parent.mkdir(parents=True, exist_ok=True)
            bl.write_csv(table, copy_files[-1])
    return Data(files, updates, copy_files, fmt, rows, generated=False)


# ---------------------------------------------------------------------- --table-rows: the data
# The fill is Parquet whatever --format says: the same values in a third of CSV's bytes, faster
# to write and to load (it is not timed); the table it leaves is what the CSV would leave.
FILL_FORMAT = "parquet"
FILL_FILE_ROWS = 2_000_000  # one merge job per fill file
NEW_KEYS_SEED = 2  # the delta's new rows: generate_events(new, seed 2), event_id moved past N


@dataclass
class TableCase:
    """One --table-rows size: its fill (events 1..N as generate_events(N) gives them) and the
    delta file(s) every method of this size loads."""

    table_rows: int
    new_rows: int  # delta rows with new keys N+1..N+new
    changed_rows: int  # delta rows with existing keys (delta_keys: strided over 1..N or the last)
    delta: Data
    folders: list[Path]
    fill_files: list[Path]
    fill_checksum: int  # sum(user_id) of the fill
    merged_checksum: int  # sum(user_id) of the table after the delta's merge

    @property
    def merged_rows(self) -> int:
        return self.table_rows + self.new_rows


def delta_split(rows: int, new_percent: int) -> tuple[int, int]:
    """(new keys, changed existing keys) of a `rows`-row delta."""
    new = rows * new_percent // 100
    return new, rows - new


def delta_keys(table_rows: int, count: int, spread: str = "strided"):
    """`count` distinct existing keys of 1..table_rows, ascending (count <= table_rows):
    "strided" evenly over the whole range (1 first), "recent" the last `count` keys."""
    import numpy as np

    if spread == "recent":
        return np.arange(table_rows - count + 1, table_rows + 1, dtype=np.int64)
    return 1 + (np.arange(count, dtype=np.int64) * table_rows) // max(count, 1)


def prepare_table_case(
    args: argparse.Namespace, table_rows: int, workdir: Path, methods: list[Method]
) -> TableCase:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    fill = any(m.key == "ingest-merge" for m in methods)
    new, changed = delta_split(args.rows, args.delta_new_percent)
    folder = workdir / f"table_{table_rows}"
    fill_parts = -(-table_rows // FILL_FILE_ROWS)
    bl.log(
        f"table {table_rows:,}: generating the fill ({fill_parts} {FILL_FORMAT} file(s))"
        if fill
        else f"table {table_rows:,}: generating the table's rows (for the delta's values)"
    )
    fill_files = EventFiles(folder / "fill", FILL_FORMAT, table_rows, fill_parts, stem="fill")
    keys = delta_keys(table_rows, changed, args.delta_keys)
    before, fill_checksum, done = [], 0, 0
    # The fill's rows in chunks; the rows of the delta's existing keys are kept, as the fill has
    # them (the delta then changes user_id).
    for chunk in event_chunks(table_rows):
        if fill:
            fill_files.write(chunk)
        fill_checksum += pc.sum(chunk.column("user_id")).as_py()
        low, high = np.searchsorted(keys, [done + 1, done + chunk.num_rows + 1])
        before.append(chunk.take(pa.array(keys[low:high] - done - 1)))
        done += chunk.num_rows
        _log_progress("generated", done, table_rows)
    before = pa.concat_tables(before)
    fresh = bl.generate_events(new, seed=NEW_KEYS_SEED)
    fresh = fresh.set_column(
        fresh.schema.get_field_index("event_id"),
        "event_id",
        pa.array(np.arange(table_rows + 1, table_rows + new + 1, dtype=np.int64)),
    )
    delta = pa.concat_tables([bl.updated(before), fresh])  # changed keys first, then new ones
    copy_csv = args.format != "csv" and any(m.key == "copy" for m in methods)
    sinks = [EventFiles(folder / "delta", args.format, args.rows, args.files)]
    if copy_csv:
        sinks.append(EventFiles(folder / "delta_csv", "csv", args.rows, args.files))
    for start in range(0, delta.num_rows, GEN_CHUNK_ROWS):
        for sink in sinks:
            sink.write(delta.slice(start, GEN_CHUNK_ROWS))
    paths = sinks[0].close()
    data = Data(
        paths,
        [],
        sinks[1].close() if copy_csv else (paths if args.format == "csv" else []),
        args.format,
        args.rows,
        generated=True,
        checksum=sinks[0].checksum,
    )
    _ = (data.bytes, data.copy_bytes)  # measured now: the files go once measured
    before_checksum = pc.sum(before.column("user_id")).as_py() or 0
    return TableCase(
        table_rows=table_rows,
        new_rows=new,
        changed_rows=changed,
        delta=data,
        folders=[folder / "fill", *{p.parent for p in [*data.files, *data.copy_files]}],
        fill_files=fill_files.close() if fill else [],
        fill_checksum=fill_checksum,
        merged_checksum=fill_checksum - before_checksum + data.checksum,
    )


# ------------------------------------------------------------------------- databases, workers


def worker_config(
    url: str, workdir: Path, datasets: Path, args: argparse.Namespace, data: Data, roots=()
) -> dict:
    roots = sorted({*map(str, roots), *(str(p.parent) for p in [*data.files, *data.update_files])})
    return {
        "url": url,
        "workdir": str(workdir),
        "files": [str(p) for p in data.files],
        "update_files": [str(p) for p in data.update_files],
        "copy_files": [str(p) for p in data.copy_files],
        "pandas_method": args.pandas_method,
        "env": {
            "DW_DATABASE_URL": bl.sqlalchemy_url(url),
            "DW_LANDING_ROOT": os.pathsep.join(roots),
            "DW_DATASETS_PATH": str(datasets),
            "DW_HOME": str(workdir / "home"),
            **({"DW_ATTACH_MIN_ROWS": args.attach_min_rows} if args.attach_min_rows else {}),
        },
    }


def retarget(config: dict, url: str) -> dict:
    """The same worker configuration against another database."""
    return {
        **config,
        "url": url,
        "env": {**config["env"], "DW_DATABASE_URL": bl.sqlalchemy_url(url)},
    }


def clone_database(server_url: str, template_url: str) -> str:
    """A new `dw_bench_<random>` database, a file-level copy of `template_url`'s."""
    import psycopg

    name = f"dw_bench_{secrets.token_hex(4)}"
    template = template_url.rsplit("/", 1)[1].split("?", 1)[0]
    with psycopg.connect(bl.libpq_url(server_url), autocommit=True) as conn:
        # FILE_COPY (PostgreSQL 15+; the only way before) copies the files after a checkpoint
        # instead of writing every block of a multi-GB database to the WAL (WAL_LOG, 15's
        # default). Autovacuum workers still in the template are told to leave.
        strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"{strategy}')
    return bl.database_url(server_url, name)


def reset(method: Method, url: str, create: bool) -> None:
    """Drop the method's schemas; with `create`, recreate its plain target table."""
    statements = [f"DROP SCHEMA IF EXISTS {schema} CASCADE" for schema in method.schemas]
    if create and method.plain_table:
        statements += [f"CREATE SCHEMA {method.schemas[0]}", bl.plain_table_ddl(method.table)]
    if create:
        statements.append("CHECKPOINT")  # no leftover dirty pages from the previous method
    bl.sql(url, *statements)


@dataclass(frozen=True)
class Expected:
    """What the target table must hold after a measurement."""

    rows: int  # count(*)
    checksum: int  # sum(user_id)
    what: str  # what the checksum stands for (in the failure message)
    loaded: int  # rows the timed load reads
    # --table-rows merges: the measured job owns `loaded` rows of storage (its lineage), and
    # dw_storage._dw_loads holds (jobs, rows) for the dataset.
    lineage: bool = False
    loads: tuple[int, int] | None = None


def verify(method: Method, url: str, result: dict, expected: Expected) -> None:
    """Fail loudly unless the target table holds exactly the expected rows and data.

    The data check is sum(user_id): after a merge it proves that every row was rewritten with
    the update file's values, whatever lineage columns the method keeps.
    """
    found, checksum = bl.sql(url, f"SELECT count(*), sum(user_id) FROM {method.table}")[0]
    problems = []
    if found != expected.rows:
        problems.append(f"{method.table} holds {found:,} rows, expected {expected.rows:,}")
    if checksum != expected.checksum:
        problems.append(
            f"sum(user_id) is {checksum}, expected {expected.checksum} ({expected.what})"
        )
    if "storage_rows" in result and result["storage_rows"] != expected.rows:
        problems.append(
            f"storage_rows() says {result['storage_rows']:,}, expected {expected.rows:,}"
        )
    if expected.lineage and result.get("rows_of_measured_jobs") != expected.loaded:
        problems.append(
            f"the measured job owns {result.get('rows_of_measured_jobs')} storage rows "
            f"(_dw_job_id), expected {expected.loaded:,}"
        )
    if expected.loads is not None:
        dataset = method.table.rsplit(".", 1)[1]
        loads = tuple(
            bl.sql(
                url,
                "SELECT count(*), coalesce(sum(rows), 0) FROM dw_storage._dw_loads "
                f"WHERE dataset = '{dataset}'",
            )[0]
        )
        if loads != expected.loads:
            problems.append(f"_dw_loads holds (jobs, rows) {loads}, expected {expected.loads}")
    if problems:
        raise SystemExit(f"FAILED verification of {method.key}: " + "; ".join(problems))


def run_worker(key: str, config: dict, workdir: Path, passthrough: bool = False) -> dict:
    """One worker in a fresh interpreter; its output goes to a log shown on failure (with
    `passthrough`, to this process's stderr as it comes)."""
    tag = f"{key}-{uuid.uuid4().hex[:8]}"
    config_path = workdir / f"{tag}.json"
    log_path = workdir / f"{tag}.log"
    config = {**config, "result_path": str(workdir / f"{tag}.result.json")}
    config_path.write_text(json.dumps(config))
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        output = sys.stderr if passthrough else log_file
        completed = subprocess.run(
            [sys.executable, __file__, "--_worker", key, str(config_path)],
            stdout=output,
            stderr=subprocess.STDOUT if not passthrough else output,
            check=False,
        )
    process_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(
            f"FAILED: worker {key} exited {completed.returncode}"
            + (" (its output is above)" if passthrough else ":\n" + "\n".join(tail))
        )
    result = json.loads(Path(config["result_path"]).read_text())
    result["process_seconds"] = process_seconds
    return result


@contextmanager
def _fresh_tables(method: Method, config: dict, keep: bool) -> Iterator[dict]:
    """A repeat against the run's database: the method's tables dropped before (and after)."""
    reset(method, config["url"], create=True)
    yield config
    if not keep:
        reset(method, config["url"], create=False)  # keeps the database small between methods


def measure(
    method: Method,
    config: dict,
    expected: Expected,
    repeat: int,
    workdir: Path,
    keep_tables: bool = False,
    target=None,
    extra: dict | None = None,
    prefix: str = "",
) -> dict:
    """`repeat` measurements of `method`; each runs inside `target(last)` (a context manager
    yielding the worker configuration), by default against fresh tables of `config`'s database."""
    samples = []
    for index in range(repeat):
        last = index + 1 == repeat
        context = target(last) if target else _fresh_tables(method, config, keep_tables)
        suffix = f" ({index + 1}/{repeat})" if repeat > 1 else ""
        with context as run_config:
            bl.log(f"  {prefix}{method.key}{suffix} ...")
            result = run_worker(method.key, run_config, workdir)
            verify(method, run_config["url"], result, expected)
        bl.log(f"  {prefix}{method.key}{suffix}: {result['seconds']:.2f} s")
        samples.append(result)
    seconds = bl.median([s["seconds"] for s in samples])
    return {
        "method": method.key,
        "label": method.label,
        "mode": method.mode,
        "rows": expected.loaded,
        "files": len(config["files"]),
        "table_rows": expected.loaded if method.mode == "merge" else 0,
        "delta_for_table_rows": None,
        **(extra or {}),
        "seconds": round(seconds, 4),
        "seconds_all": [round(s["seconds"], 4) for s in samples],
        "rows_per_second": round(expected.loaded / seconds),
        "rss_before_load_mb": round(max(s["rss_before_mb"] for s in samples), 1),
        "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples), 1),
        "process_seconds": round(bl.median([s["process_seconds"] for s in samples]), 3),
        "verified_rows": expected.rows,
        # how the service promoted (append: insert or attach; merge: in-place or rewrite)
        "promotion": ", ".join(sorted({x for s in samples for x in s.get("strategies", [])})),
    }


def fill_table(case: TableCase, config: dict, workdir: Path) -> dict:
    """Load the fill into `config`'s database through the service (not timed), then VACUUM
    (ANALYZE) it and check it; returns the fill worker's result."""
    url = config["url"]
    bl.log(
        f"  filling {case.table_rows:,} rows as {len(case.fill_files)} merge job(s) through the "
        "service (not timed) ..."
    )
    result = run_worker(
        "fill", {**config, "fill_files": list(map(str, case.fill_files))}, workdir, passthrough=True
    )
    # A table that size in production has been vacuumed and analyzed long since; here it would
    # be autovacuum's next target (10M fresh inserts), competing with the timed delta for the
    # two cores. So the fill ends with both done, untimed.
    started = time.perf_counter()
    bl.sql(url, "VACUUM (ANALYZE)")
    result["vacuum_seconds"] = time.perf_counter() - started
    expected = Expected(
        case.table_rows,
        case.fill_checksum,
        "the fill's data",
        case.table_rows,
        loads=(len(case.fill_files), case.table_rows),
    )
    verify(METHODS["ingest-merge"], url, {}, expected)
    bl.log(
        f"  filled: {result['seconds']:.1f} s, VACUUM (ANALYZE) {result['vacuum_seconds']:.1f} s"
    )
    return result


def measure_table_case(
    case: TableCase,
    methods: list[Method],
    args: argparse.Namespace,
    base_config: dict,
    workdir: Path,
) -> list[dict]:
    """Every method for one --table-rows size: appends of the delta into empty tables of the run's
    database, the merge of the delta into copies of a filled database."""
    results = []
    extra = {"delta_for_table_rows": case.table_rows, "new_keys": case.new_rows}
    # The service's workers create (append) or check (merge) the dataset's tables before the
    # timer, once per process: both timed jobs then start with the tables there, empty or full,
    # and the ratio compares the loads alone (a fresh append would also time the CREATE TABLEs).
    base_config = {**base_config, "tables_ready": True}
    prefix = f"[{case.table_rows:,}] "
    appended = Expected(case.delta.rows, case.delta.checksum, "the delta file", case.delta.rows)
    with ExitStack() as stack:
        for method in methods:
            if method.key != "ingest-merge":
                results.append(
                    measure(
                        method,
                        base_config,
                        appended,
                        args.repeat,
                        workdir,
                        args.keep_db,
                        extra=extra,
                        prefix=prefix,
                    )
                )
                continue
            # Each repeat must start from the pre-delta table. Re-filling costs minutes at 10M
            # rows, and a "revert" merge cannot remove the new keys (a merge never deletes) and
            # leaves the dead row versions of two rewrites behind. So the fill runs once, into a
            # database of its own, and each repeat merges into a fresh file-level copy of it:
            # the same pages, statistics and _dw_loads as after the fill (PostgreSQL's shared
            # buffers start cold for the copy, as for a large table most of which is not cached).
            template = stack.enter_context(bl.scratch_database(args.server_url, keep=args.keep_db))
            fill = fill_table(case, retarget(base_config, template), workdir)

            @contextmanager
            def filled_copy(last: bool, template: str = template) -> Iterator[dict]:
                url = clone_database(args.server_url, template)
                try:
                    bl.sql(url, "CHECKPOINT")
                    yield {**retarget(base_config, url), "prefilled": True}
                finally:
                    if args.keep_db and last:
                        bl.log(f"kept database {url} (the last merge)")
                    else:
                        bl.drop_database(args.server_url, url)

            merged = Expected(
                case.merged_rows,
                case.merged_checksum,
                "the fill with the delta's values",
                case.delta.rows,
                lineage=True,
                loads=(
                    len(case.fill_files) + len(case.delta.files),
                    case.table_rows + case.delta.rows,
                ),
            )
            results.append(
                measure(
                    method,
                    base_config,
                    merged,
                    args.repeat,
                    workdir,
                    target=filled_copy,
                    prefix=prefix,
                    extra={
                        **extra,
                        "table_rows": case.table_rows,
                        "changed_keys": case.changed_rows,
                        "fill_jobs": len(case.fill_files),
                        "fill_seconds": round(fill["seconds"], 2),
                        "fill_vacuum_seconds": round(fill["vacuum_seconds"], 2),
                    },
                )
            )
    return results


def selected_methods(args: argparse.Namespace) -> tuple[list[Method], list[str]]:
    keys = [k.strip() for k in args.methods.split(",") if k.strip()] if args.methods else []
    keys = keys or list(TABLE_DEFAULT_METHODS if args.table_rows else DEFAULT_METHODS)
    if args.dagster and "dagster" not in keys:
        keys.append("dagster")
    if args.s3 and "ingest-s3" not in keys:
        keys.append("ingest-s3")
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.table_rows:
        refused = [k for k in keys if k in TABLE_REFUSED_METHODS]
        if refused:
            raise SystemExit(f"--table-rows does not support {', '.join(refused)}")
        if "ingest-merge" in keys and "ingest" not in keys:
            keys.insert(keys.index("ingest-merge"), "ingest")  # the target's reference
            bl.log("adding ingest: the append of the same delta is the merge's reference")
    skipped = []
    if importlib.util.find_spec("dlt") is None and any(k in DLT_METHODS for k in keys):
        keys = [k for k in keys if k not in DLT_METHODS]
        skipped.append(DLT_MISSING)
    return [METHODS[k] for k in keys], skipped


TABLE_DEFAULT_METHODS = ("copy", "ingest", "ingest-merge")
TABLE_REFUSED_METHODS = ("dlt-merge", "ingest-s3")


def notes(data: Data, args: argparse.Namespace, methods: list[Method]) -> list[str]:
    keys = {m.key for m in methods}
    found = [
        "wall s = the load only, timed inside a fresh worker process (no start-up, no imports, "
        "no enqueue); median of --repeat; x COPY = wall s / raw COPY's wall s",
        "verification: count(*) = N and sum(user_id) = the loaded file's (merge: the update's)",
    ]
    if any(m.mode == "merge" for m in methods):
        changed = (
            "every row changed (user_id + 1), so every row is rewritten"
            if args.merge_changed == 100
            else f"{args.merge_changed} % of the rows changed (user_id + 1), spread through the "
            "file: a full snapshot with few changes"
        )
        found.append(
            "merge rows: a first job/run loads the file (not timed); the timed second one loads "
            f"the same keys with {changed}; a CHECKPOINT runs between the two"
        )
    return found + _method_notes(data, args, keys)


def _method_notes(data: Data, args: argparse.Namespace, keys: set[str]) -> list[str]:
    found = []
    if data.fmt != "csv" and "copy" in keys:
        found.append(
            f"raw COPY reads the equivalent CSV ({data.copy_bytes / 1e6:.1f} MB); the other "
            f"methods read the {data.fmt} file(s) ({data.bytes / 1e6:.1f} MB)"
        )
    if len(data.files) > 1:
        found.append(
            f"{len(data.files)} files: one COPY / job / to_sql / dlt run / Dagster run per file, "
            "sequentially"
        )
    if "pandas" in keys:
        chunk = PANDAS_CHUNKSIZE
        if args.pandas_method == "multi":
            chunk = min(chunk, PG_MAX_PARAMETERS // len(bl.COLUMN_NAMES))
        found.append(f"pandas: read_* + to_sql(method={args.pandas_method}, chunksize={chunk:,})")
    if "ingest-s3" in keys:
        found.append(
            "ingest (s3://): the same file(s) uploaded to moto's S3 server on 127.0.0.1 (a "
            "subprocess) and read with pyarrow's S3FileSystem: HEAD + ranged GETs over HTTP"
        )
    if keys & set(DLT_METHODS):
        found.append(
            "dlt: pipeline.run(arrow record batches, loader_file_format='csv') with a "
            "_dlt_load_id per row, one run per file; merge = delete-insert on event_id"
        )
    return found


def table_notes(
    cases: list[TableCase], args: argparse.Namespace, methods: list[Method], results: list[dict]
) -> list[str]:
    keys = {m.key for m in methods}
    case = cases[0]
    found = [
        "wall s = the load only, timed inside a fresh worker process (no start-up, no imports, "
        "no enqueue); median of --repeat; x COPY / x ingest = wall s / the wall s of raw COPY / "
        "ingest append of the same delta file into an empty table; x smallest = wall s / the "
        "same method's at the smallest table",
        f"delta, per table size N: {args.rows:,} rows, {case.changed_rows:,} existing keys "
        + (
            "evenly strided over 1..N"
            if args.delta_keys == "strided"
            else f"N-{case.changed_rows - 1:,}..N (the last, --delta-keys recent)"
        )
        + f" with user_id + 1 (every row changes) and {case.new_rows:,} new keys "
        f"N+1..N+{case.new_rows:,} ({args.delta_new_percent} %); every method of a size loads the "
        "same delta file(s)",
    ]
    if "ingest-merge" in keys:
        found.append(
            "merge rows: the table is filled first (not timed) with events 1..N as merge jobs of "
            f"<= {FILL_FILE_ROWS:,} rows ({FILL_FORMAT}) through the service, then VACUUM "
            "(ANALYZE); each repeat merges the delta into a fresh file-level copy of that "
            "database (CREATE DATABASE ... TEMPLATE), after a CHECKPOINT"
        )
        found.append(
            "verification: appends count(*) = delta rows and sum(user_id) = the delta's; merges "
            "count(*) = N + new keys, sum(user_id) = the fill's with the delta's values, the "
            "delta job owns all its rows (_dw_job_id), _dw_loads = fill jobs + delta job"
        )
    else:
        found.append("verification: count(*) = delta rows and sum(user_id) = the delta's")
    if keys & {"ingest", "ingest-merge", "dagster"}:
        found.append(
            "ingest and Dagster rows: the dataset's tables are created (append: empty) or "
            "checked (merge) before the timer, by the same worker process"
        )
    by = {(r["delta_for_table_rows"], r["method"]): r for r in results}
    smallest = cases[0].table_rows
    for case in cases:
        merge = by.get((case.table_rows, "ingest-merge"))
        if merge is None:
            continue
        parts = []
        if merge["ratio_to_ingest"] is not None:
            parts.append(f"{merge['ratio_to_ingest']:.2f}x the ingest append (target <= 2x)")
        if merge["ratio_to_copy"] is not None:
            parts.append(f"{merge['ratio_to_copy']:.2f}x raw COPY")
        if case.table_rows != smallest and merge["ratio_to_smallest_table"] is not None:
            parts.append(
                f"{merge['ratio_to_smallest_table']:.2f}x the same delta into {smallest:,} rows "
                "(target <= 1.2x)"
            )
        rss = [f"merge {merge['peak_rss_mb']:.0f} MB"]
        rss += [
            f"{key} {by[(case.table_rows, key)]['peak_rss_mb']:.0f} MB"
            for key in ("ingest", "copy")
            if (case.table_rows, key) in by
        ]
        found.append(
            f"table {case.table_rows:,}: merge of the delta {merge['seconds']:.2f} s = "
            + ", ".join(parts)
            + "; peak RSS "
            + ", ".join(rss)
        )
    if len(cases) > 1:
        controls = [
            f"{key} {by[(cases[-1].table_rows, key)]['ratio_to_smallest_table']:.2f}x"
            for key in ("copy", "ingest")
            if (cases[-1].table_rows, key) in by
        ]
        if controls:
            found.append(
                f"control: the appends load the same number of rows at every size; largest vs "
                f"smallest: {', '.join(controls)} (the machine's noise)"
            )
    return found + _method_notes(cases[0].delta, args, keys)


def add_ratios(results: list[dict]) -> None:
    """`ratio_to_copy` / `ratio_to_ingest`: wall time relative to raw COPY / the ingest append of
    the same rows (within one --table-rows size); `ratio_to_smallest_table`: relative to the same
    method at the smallest --table-rows size. None where the reference was not measured."""

    def ratio(seconds: float, reference: float | None) -> float | None:
        return round(seconds / reference, 3) if reference else None

    sizes = sorted({r["delta_for_table_rows"] for r in results if r["delta_for_table_rows"]})
    seconds = {(r["delta_for_table_rows"], r["method"]): r["seconds"] for r in results}
    for r in results:
        size = r["delta_for_table_rows"]
        r["ratio_to_copy"] = ratio(r["seconds"], seconds.get((size, "copy")))
        r["ratio_to_ingest"] = ratio(r["seconds"], seconds.get((size, "ingest")))
        r["ratio_to_smallest_table"] = (
            ratio(r["seconds"], seconds.get((sizes[0], r["method"]))) if sizes else None
        )


def _ratio_cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render(document: dict) -> str:
    data = document["data"]
    table_mode = data.get("table_rows") is not None
    rows = []
    for r in document["results"]:
        cells = [
            r["label"],
            r["mode"],
            r.get("promotion") or "-",
            f"{r['files']:,}",
            f"{r['seconds']:.3f}" if r["seconds"] < 1 else f"{r['seconds']:.2f}",
            f"{r['rows_per_second']:,}",
            _ratio_cell(r["ratio_to_copy"]),
        ]
        if table_mode:
            target = "empty" if r["mode"] == "append" else f"{r['table_rows']:,} rows"
            cells = [f"{r['delta_for_table_rows']:,}", target, *cells]
            cells.append(_ratio_cell(r["ratio_to_ingest"]))
            if len(data["table_rows"]) > 1:
                cells.append(_ratio_cell(r["ratio_to_smallest_table"]))
        rows.append([*cells, f"{r['rss_before_load_mb']:.0f}", f"{r['peak_rss_mb']:.0f}"])
    machine = document["machine"]
    repeat = document["config"]["repeat"]
    if table_mode:
        first = (
            f"dw_pipelines ingestion benchmark: a {data['rows']:,}-row delta "
            f"({data['new_keys']:,} new keys, {data['changed_keys']:,} changed), "
            f"{data['files']} {data['format']} file(s), {data['bytes'] / 1e6:.1f} MB, into "
            f"tables of {', '.join(f'{n:,}' for n in data['table_rows'])} rows, "
            f"repeat {repeat} (median)"
        )
    else:
        first = (
            f"dw_pipelines ingestion benchmark: {data['rows']:,} rows, {data['files']} "
            f"{data['format']} file(s), {data['bytes'] / 1e6:.1f} MB, repeat {repeat} (median)"
        )
    header = [
        first,
        f"machine: {machine['cpus']} CPUs, Python {machine['python']}, PostgreSQL "
        f"{machine['postgres']}, load average {machine['load_average_1m']} at start",
        f"database: {document['database']} "
        f"({'kept' if document['config']['keep_db'] else 'dropped'})",
        "",
    ]
    columns = ["method", "mode", "promotion", "files", "wall s", "rows/s", "x COPY"]
    if table_mode:
        columns = ["delta for", "target", *columns, "x ingest"]
        if len(data["table_rows"]) > 1:
            columns.append("x smallest")
    table = bl.render_table([*columns, "RSS before MB", "peak RSS MB"], rows)
    footer = ["", *document["skipped"], *[f"- {n}" for n in document["notes"]]]
    return "\n".join([*header, table, *footer])


def _table_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of row counts: {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError("--table-rows needs row counts >= 1")
    return sizes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--format", choices=bl.FORMATS, default="csv", help="generated format")
    parser.add_argument("--files", type=int, default=1, help="split the rows into K files")
    parser.add_argument("--source", nargs="+", help="load these files (events columns) instead")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per method (median)")
    parser.add_argument(
        "--attach-min-rows",
        metavar="N|off",
        help="DW_ATTACH_MIN_ROWS for the service's methods (default: the product's, 1M); "
        "ingest-copy always runs with off",
    )
    parser.add_argument(
        "--merge-changed",
        type=int,
        default=100,
        metavar="PERCENT",
        help="share of the rows the timed merge changes (100: all; 1: a daily full snapshot)",
    )
    parser.add_argument(
        "--table-rows",
        type=_table_sizes,
        metavar="N[,N...]",
        help="merge a --rows delta into tables of N rows (appends: the same delta, empty table)",
    )
    parser.add_argument(
        "--delta-new-percent",
        type=int,
        default=10,
        metavar="PERCENT",
        help="with --table-rows: share of the delta with new keys (the rest changes existing)",
    )
    parser.add_argument(
        "--delta-keys",
        choices=("strided", "recent"),
        default="strided",
        help="with --table-rows: the delta's existing keys evenly strided over the table (the "
        "worst case) or its last ones (recent rows)",
    )
    parser.add_argument("--methods", help=f"comma-separated subset of: {', '.join(METHODS)}")
    parser.add_argument("--dagster", action="store_true", help="add the full Dagster run")
    parser.add_argument(
        "--s3", action="store_true", help="add ingest-s3: the same file(s) from a local S3 server"
    )
    parser.add_argument("--pandas-method", choices=("default", "multi"), default="default")
    parser.add_argument(
        "--keep-db",
        action="store_true",
        help="keep the database and each method's last loaded tables for inspection",
    )
    parser.add_argument("--server-url", default=os.environ.get("DW_BENCH_SERVER_URL"))
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    args.server_url = args.server_url or bl.DEFAULT_SERVER_URL
    if not 0 <= args.merge_changed <= 100:
        parser.error("--merge-changed must be a percentage from 0 to 100")
    if not 0 <= args.delta_new_percent <= 100:
        parser.error("--delta-new-percent must be a percentage from 0 to 100")
    if args.rows < 1 or args.files < 1 or args.repeat < 1:
        parser.error("--rows, --files and --repeat must be >= 1")
    if args.files > args.rows:
        parser.error("--files must not exceed --rows")
    if args.source and args.files != 1:
        parser.error("--files splits generated data; with --source pass several files instead")
    if args.table_rows:
        if args.source:
            parser.error("--table-rows generates its data; it does not combine with --source")
        if args.merge_changed != 100:
            parser.error("--table-rows changes every existing key it sends; no --merge-changed")
        changed = delta_split(args.rows, args.delta_new_percent)[1]
        if changed > args.table_rows[0]:
            parser.error(f"the delta's {changed:,} existing keys need --table-rows >= {changed:,}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods, skipped = selected_methods(args)
    workdir = Path(tempfile.mkdtemp(prefix="dw_bench_"))
    s3_server = None
    try:
        if not args.source:
            check_chunks()
        datasets = bl.write_contracts(workdir / "datasets")
        machine = bl.machine_info(args.server_url)
        if args.table_rows:
            return _main_tables(args, methods, skipped, workdir, datasets, machine)
        data = prepare_data(args, workdir, methods)
        with bl.scratch_database(args.server_url, keep=args.keep_db) as url:
            config = worker_config(url, workdir, datasets, args, data)
            if any(m.key == "ingest-s3" for m in methods):
                s3_server, config["s3"] = start_s3(data, workdir)
                config["env"]["DW_LANDING_ROOT"] += os.pathsep + S3_ROOT
                config["env"]["DW_S3_ENDPOINT_URL"] = s3_server.endpoint
            bl.log(
                f"database {url.rsplit('/', 1)[1]}; {data.rows:,} rows in {len(data.files)} file(s)"
            )
            results = []
            for m in methods:
                merged = m.mode == "merge"
                expected = Expected(
                    data.rows,
                    data.update_checksum if merged else data.checksum,
                    "the update file's values in every row" if merged else "the source data",
                    data.rows,
                    lineage=m.key in ("ingest", "ingest-copy"),
                )
                results.append(
                    measure(m, config, expected, args.repeat, workdir, keep_tables=args.keep_db)
                )
        add_ratios(results)
        for line in skipped:
            bl.log(line)
        document = {
            "benchmark": "ingest",
            "config": {
                "rows": data.rows,
                "format": data.fmt,
                "files": len(data.files),
                "repeat": args.repeat,
                "methods": [m.key for m in methods],
                "pandas_method": args.pandas_method,
                "merge_changed_percent": args.merge_changed,
                "table_rows": None,
                "keep_db": args.keep_db,
                "source": [str(p) for p in data.files] if not data.generated else None,
            },
            "machine": machine,
            "database": url.rsplit("/", 1)[1],
            "data": {
                "rows": data.rows,
                "files": len(data.files),
                "format": data.fmt,
                "bytes": data.bytes,
                "copy_reference_format": "csv",
                "copy_reference_bytes": data.copy_bytes if data.copy_files else None,
            },
            "results": results,
            "skipped": skipped,
            "notes": notes(data, args, methods),
        }
        print(bl.dump_json(document) if args.json else render(document))
        return 0
    finally:
        if s3_server is not None:
            s3_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _main_tables(
    args: argparse.Namespace,
    methods: list[Method],
    skipped: list[str],
    workdir: Path,
    datasets: Path,
    machine: dict,
) -> int:
    """--table-rows: per size (smallest first), generate the fill and the delta, measure every
    method, then remove that size's files before the next one."""
    results, cases = [], []
    with bl.scratch_database(args.server_url, keep=args.keep_db) as url:
        bl.log(f"database {url.rsplit('/', 1)[1]}; table sizes {args.table_rows}")
        for table_rows in args.table_rows:
            case = prepare_table_case(args, table_rows, workdir, methods)
            config = worker_config(url, workdir, datasets, args, case.delta, roots=case.folders)
            results += measure_table_case(case, methods, args, config, workdir)
            for folder in case.folders:
                shutil.rmtree(folder, ignore_errors=True)
            cases.append(case)
    add_ratios(results)
    for line in skipped:
        bl.log(line)
    delta = cases[0].delta
    document = {
        "benchmark": "ingest",
        "config": {
            "rows": args.rows,
            "format": args.format,
            "files": args.files,
            "repeat": args.repeat,
            "methods": [m.key for m in methods],
            "pandas_method": args.pandas_method,
            "merge_changed_percent": None,
            "table_rows": args.table_rows,
            "delta_new_percent": args.delta_new_percent,
            "delta_keys": args.delta_keys,
            "keep_db": args.keep_db,
            "source": None,
        },
        "machine": machine,
        "database": url.rsplit("/", 1)[1],
        "data": {
            "rows": args.rows,
            "files": args.files,
            "format": args.format,
            "bytes": delta.bytes,
            "copy_reference_format": "csv",
            "copy_reference_bytes": delta.copy_bytes if delta.copy_files else None,
            "table_rows": args.table_rows,
            "new_keys": cases[0].new_rows,
            "changed_keys": cases[0].changed_rows,
            "fill_format": FILL_FORMAT,
            "fill_file_rows": FILL_FILE_ROWS,
        },
        "results": results,
        "skipped": skipped,
        "notes": table_notes(cases, args, methods, results),
    }
    print(bl.dump_json(document) if args.json else render(document))
    return 0


S3_BUCKET = "dw-bench"
S3_ROOT = f"s3://{S3_BUCKET}/landing"


def start_s3(data: Data, workdir: Path) -> tuple:
    """Start moto's S3 server on loopback and upload the data files (not timed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dw_pipelines_tests.s3_support import REGION, start_moto_server

    server = start_moto_server(workdir / "moto.log")
    client = server.client()
    client.create_bucket(Bucket=S3_BUCKET)
    files = []
    for path in data.files:
        key = f"landing/{path.name}"
        client.upload_file(str(path), S3_BUCKET, key)
        files.append(f"s3://{S3_BUCKET}/{key}")
    bl.log(f"uploaded {len(files)} file(s) to {S3_ROOT} on {server.endpoint}")
    process_env = {
        # moto without IAM enforcement accepts any key; the SDK needs one to sign requests.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return server, {"files": files, "process_env": process_env}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
