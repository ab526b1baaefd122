# ruff: noqa: T201
"""Ingestion benchmark: this project's data path against raw COPY, pandas and dlt.

One invocation generates the data (or takes `--source`), creates a fresh PostgreSQL database
`dw_bench_<random>`, then measures one method after the other, each in a fresh subprocess so
that its peak RSS is its own:

    copy          raw `COPY ... FROM STDIN (FORMAT csv, HEADER)` into a plain table without
                  indexes: the physical reference (for parquet/jsonl sources, of the equivalent
                  CSV file)
    ingest        this project: enqueue, then start + stage + promote through `build_service`,
                  `append` into an empty table
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
the expected data (sum of user_id: the source's, or after a merge the update file's).

    .venv/bin/python benchmarks/ingest.py                    # 1M rows, CSV
    .venv/bin/python benchmarks/ingest.py --rows 10000 --format parquet --repeat 3
    .venv/bin/python benchmarks/ingest.py --files 100 --methods copy,ingest --dagster
    .venv/bin/python benchmarks/ingest.py --methods copy,ingest --s3
    .venv/bin/python benchmarks/ingest.py --methods copy,ingest-merge --merge-changed 1  # snapshot
    .venv/bin/python benchmarks/ingest.py --json > result.json
"""

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
DEFAULT_METHODS = ("copy", "ingest", "ingest-merge", "pandas", "dlt", "dlt-merge")
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
        if merge:  # fill the table with every key; the timed pass then changes every row
            _ingest_pass(service, dataset, files)
            files = config["update_files"]
            checkpoint(config)
        before = current_rss_mb()
        seconds, job_ids = _ingest_pass(service, dataset, files)
        storage_rows = service.warehouse.storage_rows(contract)
        rows_of_jobs = sum(service.warehouse.storage_rows(contract, j) for j in job_ids)
    finally:
        dispose(service)
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "storage_rows": storage_rows,
        "rows_of_measured_jobs": rows_of_jobs,
        "job_ids": job_ids,
    }


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
    "ingest-merge": lambda config: worker_ingest(config, merge=True),
    "pandas": worker_pandas,
    "dlt": worker_dlt,
    "dlt-merge": lambda config: worker_dlt(config, merge=True),
    "dagster": worker_dagster,
    "ingest-s3": worker_ingest_s3,
}


def worker_main(method: str, config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    result = WORKERS[method](config)
    result["peak_rss_mb"] = peak_rss_mb()
    result["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(config["result_path"]).write_text(json.dumps(result))


# =================================================================================== parent


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

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)

    @property
    def copy_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.copy_files)


def prepare_data(args: argparse.Namespace, workdir: Path) -> Data:
    if args.source:
        data = _source_data(args, workdir)
    else:
        bl.log(f"generating {args.rows:,} rows as {args.files} {args.format} file(s) ...")
        files = bl.generate_files(args.rows, args.files, args.format, workdir / "landing")
        updates = bl.generate_files(
            args.rows,
            args.files,
            args.format,
            workdir / "updates",
            update=True,
            percent=args.merge_changed,
        )
        copy_files = files
        if args.format != "csv":
            copy_files = bl.generate_files(args.rows, args.files, "csv", workdir / "copy_csv")
        data = Data(files, updates, copy_files, args.format, args.rows, generated=True)
    data.checksum = bl.user_id_sum(data.files)
    data.update_checksum = bl.user_id_sum(data.update_files)
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


def reset(method: Method, url: str, create: bool) -> None:
    """Drop the method's schemas; with `create`, recreate its plain target table."""
    statements = [f"DROP SCHEMA IF EXISTS {schema} CASCADE" for schema in method.schemas]
    if create and method.plain_table:
        statements += [f"CREATE SCHEMA {method.schemas[0]}", bl.plain_table_ddl(method.table)]
    if create:
        statements.append("CHECKPOINT")  # no leftover dirty pages from the previous method
    bl.sql(url, *statements)


def verify(method: Method, url: str, result: dict, data: Data) -> None:
    """Fail loudly unless the target table holds exactly N rows with the expected data.

    The data check is sum(user_id): after a merge it proves that every row was rewritten with
    the update file's values, whatever lineage columns the method keeps.
    """
    merged = method.mode == "merge"
    expected = data.update_checksum if merged else data.checksum
    found, checksum = bl.sql(url, f"SELECT count(*), sum(user_id) FROM {method.table}")[0]
    problems = []
    if found != data.rows:
        problems.append(f"{method.table} holds {found:,} rows, expected {data.rows:,}")
    if checksum != expected:
        what = "the update file's values in every row" if merged else "the source data"
        problems.append(f"sum(user_id) is {checksum}, expected {expected} ({what})")
    if "storage_rows" in result and result["storage_rows"] != data.rows:
        problems.append(f"storage_rows() says {result['storage_rows']:,}, expected {data.rows:,}")
    if problems:
        raise SystemExit(f"FAILED verification of {method.key}: " + "; ".join(problems))


def run_worker(method: Method, config: dict, workdir: Path) -> dict:
    """One measurement in a fresh interpreter; its output goes to a log shown on failure."""
    tag = f"{method.key}-{uuid.uuid4().hex[:8]}"
    config_path = workdir / f"{tag}.json"
    log_path = workdir / f"{tag}.log"
    config = {**config, "result_path": str(workdir / f"{tag}.result.json")}
    config_path.write_text(json.dumps(config))
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        completed = subprocess.run(
            [sys.executable, __file__, "--_worker", method.key, str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            check=False,
        )
    process_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(
            f"FAILED: worker {method.key} exited {completed.returncode}:\n" + "\n".join(tail)
        )
    result = json.loads(Path(config["result_path"]).read_text())
    result["process_seconds"] = process_seconds
    return result


def measure(
    method: Method,
    base_config: dict,
    data: Data,
    repeat: int,
    workdir: Path,
    keep_tables: bool = False,
) -> dict:
    samples = []
    for index in range(repeat):
        url = base_config["url"]
        reset(method, url, create=True)
        suffix = f" ({index + 1}/{repeat})" if repeat > 1 else ""
        bl.log(f"  {method.key}{suffix} ...")
        result = run_worker(method, base_config, workdir)
        verify(method, url, result, data)
        if not keep_tables:
            reset(method, url, create=False)  # keeps the database small between methods
        bl.log(f"  {method.key}{suffix}: {result['seconds']:.2f} s")
        samples.append(result)
    seconds = bl.median([s["seconds"] for s in samples])
    return {
        "method": method.key,
        "label": method.label,
        "mode": method.mode,
        "rows": data.rows,
        "files": len(data.files),
        "seconds": round(seconds, 4),
        "seconds_all": [round(s["seconds"], 4) for s in samples],
        "rows_per_second": round(data.rows / seconds),
        "rss_before_load_mb": round(max(s["rss_before_mb"] for s in samples), 1),
        "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples), 1),
        "process_seconds": round(bl.median([s["process_seconds"] for s in samples]), 3),
        "verified_rows": data.rows,
    }


def selected_methods(args: argparse.Namespace) -> tuple[list[Method], list[str]]:
    keys = [k.strip() for k in args.methods.split(",") if k.strip()] if args.methods else []
    keys = keys or list(DEFAULT_METHODS)
    if args.dagster and "dagster" not in keys:
        keys.append("dagster")
    if args.s3 and "ingest-s3" not in keys:
        keys.append("ingest-s3")
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    skipped = []
    if importlib.util.find_spec("dlt") is None and any(k in DLT_METHODS for k in keys):
        keys = [k for k in keys if k not in DLT_METHODS]
        skipped.append(DLT_MISSING)
    return [METHODS[k] for k in keys], skipped


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


def add_ratios(results: list[dict]) -> None:
    """`ratio_to_copy`: wall time relative to raw COPY (None when copy was not measured)."""
    copy = next((r["seconds"] for r in results if r["method"] == "copy"), None)
    for result in results:
        result["ratio_to_copy"] = round(result["seconds"] / copy, 3) if copy else None


def render(document: dict) -> str:
    data = document["data"]
    rows = [
        [
            r["label"],
            r["mode"],
            f"{r['files']:,}",
            f"{r['seconds']:.3f}" if r["seconds"] < 1 else f"{r['seconds']:.2f}",
            f"{r['rows_per_second']:,}",
            "n/a" if r["ratio_to_copy"] is None else f"{r['ratio_to_copy']:.2f}x",
            f"{r['rss_before_load_mb']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
        ]
        for r in document["results"]
    ]
    machine = document["machine"]
    header = [
        f"dw_pipelines ingestion benchmark: {data['rows']:,} rows, {data['files']} {data['format']}"
        f" file(s), {data['bytes'] / 1e6:.1f} MB, repeat {document['config']['repeat']} (median)",
        f"machine: {machine['cpus']} CPUs, Python {machine['python']}, PostgreSQL "
        f"{machine['postgres']}, load average {machine['load_average_1m']} at start",
        f"database: {document['database']} "
        f"({'kept' if document['config']['keep_db'] else 'dropped'})",
        "",
    ]
    table = bl.render_table(
        ["method", "mode", "files", "wall s", "rows/s", "x COPY", "RSS before MB", "peak RSS MB"],
        rows,
    )
    footer = ["", *document["skipped"], *[f"- {n}" for n in document["notes"]]]
    return "\n".join([*header, table, *footer])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--format", choices=bl.FORMATS, default="csv", help="generated format")
    parser.add_argument("--files", type=int, default=1, help="split the rows into K files")
    parser.add_argument("--source", nargs="+", help="load these files (events columns) instead")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per method (median)")
    parser.add_argument(
        "--merge-changed",
        type=int,
        default=100,
        metavar="PERCENT",
        help="share of the rows the timed merge changes (100: all; 1: a daily full snapshot)",
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
    if args.rows < 1 or args.files < 1 or args.repeat < 1:
        parser.error("--rows, --files and --repeat must be >= 1")
    if args.files > args.rows:
        parser.error("--files must not exceed --rows")
    if args.source and args.files != 1:
        parser.error("--files splits generated data; with --source pass several files instead")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods, skipped = selected_methods(args)
    workdir = Path(tempfile.mkdtemp(prefix="dw_bench_"))
    s3_server = None
    try:
        data = prepare_data(args, workdir)
        datasets = bl.write_contracts(workdir / "datasets")
        machine = bl.machine_info(args.server_url)
        with bl.scratch_database(args.server_url, keep=args.keep_db) as url:
            roots = sorted({str(p.parent) for p in [*data.files, *data.update_files]})
            config = {
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
                },
            }
            if any(m.key == "ingest-s3" for m in methods):
                s3_server, config["s3"] = start_s3(data, workdir)
                config["env"]["DW_LANDING_ROOT"] += os.pathsep + S3_ROOT
                config["env"]["DW_S3_ENDPOINT_URL"] = s3_server.endpoint
            bl.log(
                f"database {url.rsplit('/', 1)[1]}; {data.rows:,} rows in {len(data.files)} file(s)"
            )
            results = [
                measure(m, config, data, args.repeat, workdir, keep_tables=args.keep_db)
                for m in methods
            ]
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
                "copy_reference_bytes": data.copy_bytes,
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
