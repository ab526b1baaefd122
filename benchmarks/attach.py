# ruff: noqa: T201
"""Attach-promotion prototype: would an append job reach 65 % of raw COPY's rows/s if its
validated staging partition became storage's partition for that load (rows written once,
promotion as metadata)? Measured before any product code changes.

One invocation generates the events CSV for each `--rows` size, creates a scratch database
`dw_bench_<random>` and measures, each pass in a fresh subprocess timed inside the worker (a
CHECKPOINT before each timed pass; the dataset's tables are created before the timer in every
method, as a running deployment has them):

    copy      raw `COPY ... FROM STDIN (FORMAT csv, HEADER)` into a plain logged table
    ingest    today's append: service.start + service.stage + service.promote (the product path:
              UNLOGGED staging partition, then DELETE previous load + INSERT ... SELECT)
    attach-a  service.start + service.stage (real validation and ADBC COPY into the product's
              UNLOGGED partition), then in one transaction: SET LOGGED (rewrites the partition
              through WAL), a CHECK proving the partition bound, DETACH from dw_staging, SET
              SCHEMA, the lineage columns as fast defaults, DROP _dw_row_number, the BRIN index,
              ATTACH to the partitioned `dw_storage_p.events`, the `_dw_loads` row; then the
              outbox's PROMOTED step and COMPLETED, as service.promote records them
    attach-b  the same with the staging partition created LOGGED from the start (the product's
              CREATE UNLOGGED TABLE statement rewritten in this worker only), no SET LOGGED

`dw_storage_p.events` is `LIKE dw_storage.events` (the product's columns, types, order and
nullability) PARTITION BY LIST (_dw_job_id), with the product's storage indexes as partitioned
indexes and, unless `--default-rows none`, a DEFAULT partition for small jobs holding that many
rows (ATTACH scans it to prove it holds none of the new partition's rows).

After each pass the parent verifies the target: count(*), sum(user_id) and a checksum over every
data and lineage column (job id and loaded-at compared with the job's `_dw_loads` row) equal to
today's INSERT ... SELECT result; `SELECT *` on the partitioned parent gives the product's
columns in the product's order; the attached partition is logged, lives in dw_storage_p and
carries the BRIN index; staging is empty; the job is COMPLETED.

    .venv/bin/python benchmarks/attach.py                                # 1M and 5M rows
    .venv/bin/python benchmarks/attach.py --rows 20000                   # quick check
    .venv/bin/python benchmarks/attach.py --rows 1000000 --repeat 3 --default-rows none,0,5000000
    .venv/bin/python benchmarks/attach.py --check create --index default-only --json > a.json
"""

import argparse
import inspect
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import benchlib as bl

DATASET = "events"
PARTITIONED_SCHEMA = "dw_storage_p"
PARENT = f"{PARTITIONED_SCHEMA}.{DATASET}"
DEFAULT_PARTITION = f"{PARTITIONED_SCHEMA}.{DATASET}_default"
# Rows per small job in the DEFAULT partition's filler (each with its own _dw_loaded_at).
FILLER_JOB_ROWS = 5_000
METHODS = ("copy", "ingest", "attach-a", "attach-b")
LABELS = {
    "copy": "raw COPY (csv)",
    "ingest": "today's append (INSERT ... SELECT)",
    "attach-a": "attach (a): SET LOGGED",
    "attach-b": "attach (b): logged staging",
}
# The kill criterion: append at >= 65 % of raw COPY's rows/s.
TARGET_SHARE = 0.65
SCHEMAS = ("bench_raw", "dw_staging", "dw_storage", PARTITIONED_SCHEMA)
CHECK_MODES = ("add", "create", "none")
INDEX_MODES = ("partitioned", "default-only")


# ================================================================================== workers
# Each runs in its own process: `attach.py --_worker METHOD CONFIG.json`.


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process image's own high-water mark (VmHWM; see ingest.py for why not ru_maxrss)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return max(int(line.split()[1]) / 1024, current_rss_mb())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wal_lsn(url: str) -> str:
    """The WAL insert position (cluster-wide: other databases' writes count too)."""
    return bl.sql(url, "SELECT pg_current_wal_insert_lsn()::text")[0][0]


def wal_bytes(url: str, start: str, end: str) -> int:
    return int(bl.sql(url, f"SELECT pg_wal_lsn_diff('{end}', '{start}')")[0][0])


def worker_copy(config: dict) -> dict:
    """As ingest.py's worker_copy: the file into a plain logged table without indexes."""
    import csv

    import psycopg
    from psycopg import sql

    path = config["file"]
    with open(path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f))
    statement = sql.SQL("COPY bench_raw.events ({}) FROM STDIN (FORMAT csv, HEADER)").format(
        sql.SQL(", ").join(map(sql.Identifier, header))
    )
    with psycopg.connect(config["url"]) as conn:
        start_lsn = wal_lsn(config["url"])
        before = current_rss_mb()
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(statement) as copy, open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - started
    end_lsn = wal_lsn(config["url"])
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "wal_bytes": wal_bytes(config["url"], start_lsn, end_lsn),
        "steps": {"copy": seconds},
    }


def _service(config: dict):
    from dw_pipelines.services import build_service
    from dw_pipelines.settings import Settings

    service = build_service(Settings.from_env(config["env"]))
    contract = service.contracts.get(DATASET)
    # The dataset's tables exist before the timer (a deployment has them), in every method.
    service.warehouse.ensure_tables(contract)
    return service, contract


def _enqueue(service, path: str):
    return service.queue.enqueue(
        {
            "dataset": DATASET,
            "source_uri": path,
            "business_date": bl.BUSINESS_DATE,
            "idempotency_key": f"bench-{uuid.uuid4().hex}",
        }
    ).job


def worker_ingest(config: dict) -> dict:
    from dw_pipelines.services import dispose

    service, _ = _service(config)
    try:
        job = _enqueue(service, config["file"])
        bl.sql(config["url"], "CHECKPOINT")
        run_id = f"bench-{uuid.uuid4().hex}"
        start_lsn = wal_lsn(config["url"])
        before = current_rss_mb()
        started = time.perf_counter()
        service.stage(service.start(job.job_id, run_id), run_id)
        staged = time.perf_counter()
        service.promote(job.job_id, run_id)
        seconds = time.perf_counter() - started
        end_lsn = wal_lsn(config["url"])
        status = service.queue.get(job.job_id).status
    finally:
        dispose(service)
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "wal_bytes": wal_bytes(config["url"], start_lsn, end_lsn),
        "steps": {"stage": staged - started, "promote": seconds - (staged - started)},
        "job_id": job.job_id,
        "status": status,
    }


# The product's statement (core/warehouse/staging.py, `_create_partition`); rewritten in an
# attach worker for a LOGGED partition (b) and/or a CHECK declared with it (`--check create`).
CREATE_PARTITION = re.compile(
    r"^CREATE UNLOGGED TABLE (?P<name>\S+) PARTITION OF (?P<parent>\S+) "
    r"\((?P<column>_dw_job_id) DEFAULT (?P<value>'(?:[^']|'')*')\) "
    r"FOR VALUES IN \((?P=value)\)$"
)


def patch_create_partition(engine, logged: bool, check: bool) -> list[str]:
    """Rewrite the staging partition's CREATE on `engine` (this process only); returns the
    rewritten statements, so the caller can prove the rewrite happened exactly once."""
    import sqlalchemy as sa

    rewritten: list[str] = []
    if not (logged or check):
        return rewritten

    def rewrite(conn, cursor, statement, parameters, context, executemany):
        if not statement.startswith("CREATE UNLOGGED TABLE "):
            return statement, parameters
        match = CREATE_PARTITION.match(statement)
        if match is None:
            raise RuntimeError(f"the product's partition DDL changed: {statement!r}")
        persistence = "" if logged else "UNLOGGED "
        columns = f"{match['column']} DEFAULT {match['value']}"
        if check:
            # Declared on the empty table: valid without a scan, and it implies the storage
            # partition's bound, so the ATTACH needs no scan either.
            columns += f", CHECK ({match['column']} = {match['value']})"
        statement = (
            f"CREATE {persistence}TABLE {match['name']} PARTITION OF {match['parent']} "
            f"({columns}) FOR VALUES IN ({match['value']})"
        )
        rewritten.append(statement)
        return statement, parameters

    sa.event.listen(engine, "before_cursor_execute", rewrite, retval=True)
    return rewritten


def prepare_partitioned_storage(config: dict) -> str:
    """`dw_storage_p.events` as the product's storage, partitioned by job; its indexes; the
    DEFAULT partition and its filler. Returns the index method and columns (`USING ...`)."""
    url = config["url"]
    indexes = bl.sql(
        url,
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid = 'dw_storage.events'::regclass",
    )
    statements = [
        f"CREATE SCHEMA {PARTITIONED_SCHEMA}",
        f"CREATE TABLE {PARENT} (LIKE dw_storage.{DATASET} INCLUDING DEFAULTS "
        "INCLUDING CONSTRAINTS INCLUDING COMMENTS) PARTITION BY LIST (_dw_job_id)",
    ]
    using = []
    for (definition,) in indexes:
        # The product's storage is partitioned by now: its index is defined "ON ONLY" the parent.
        definition = definition.replace(" ON ONLY ", " ON ", 1)
        head, sep, tail = definition.partition(f" ON dw_storage.{DATASET} ")
        if not sep:
            raise RuntimeError(f"unexpected index definition {definition!r}")
        using.append(tail)
        if config["index"] == "partitioned":
            statements.append(f"{head} ON {PARENT} {tail}")
    if len(using) != 1 or not using[0].startswith("USING brin"):
        raise RuntimeError(f"expected the product's one BRIN index, found {indexes}")
    default_rows = config["default_rows"]
    if default_rows is not None:
        statements.append(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {PARENT} DEFAULT")
        if config["index"] == "default-only":  # the small jobs' rows keep their BRIN index
            statements.append(f"CREATE INDEX ON {DEFAULT_PARTITION} {using[0]}")
    if default_rows:
        columns = ", ".join([*bl.COLUMN_NAMES, "_dw_tenant_id", "_dw_job_id", "_dw_loaded_at"])
        # Small jobs of FILLER_JOB_ROWS rows each, one _dw_loaded_at per job.
        statements.append(
            f"INSERT INTO {PARENT} ({columns}) SELECT g, 1 + g % 199999, "
            "round((g % 500000) / 100.0, 2), 'DE', 'paid', "
            "timestamptz '2026-01-01' + g * interval '1 second', 'small job ' || g, 'default', "
            f"'small-' || (g - 1) / {FILLER_JOB_ROWS}, "
            f"timestamptz '2026-01-01' + ((g - 1) / {FILLER_JOB_ROWS}) * interval '1 minute'"
            f" FROM generate_series(1, {default_rows}) g"
        )
        # Hint bits set and visibility map full: the ATTACH's scan only reads.
        statements.append(f"VACUUM (FREEZE, ANALYZE) {DEFAULT_PARTITION}")
    statements.append("CHECKPOINT")
    bl.sql(url, *statements)
    return using[0]


def worker_attach(config: dict, logged_staging: bool) -> dict:
    from dw_pipelines.services import dispose

    service, contract = _service(config)
    try:
        using = prepare_partitioned_storage(config)
        rewritten = patch_create_partition(
            service.warehouse.engine, logged=logged_staging, check=config["check"] == "create"
        )
        job = _enqueue(service, config["file"])
        bl.sql(config["url"], "CHECKPOINT")
        run_id = f"bench-{uuid.uuid4().hex}"
        start_lsn = wal_lsn(config["url"])
        before = current_rss_mb()
        started = time.perf_counter()
        staged = service.stage(service.start(job.job_id, run_id), run_id)
        steps = {"stage": time.perf_counter() - started}
        messages = attach_promote(
            service, contract, job.job_id, run_id, staged.rows, config, using, steps
        )
        seconds = time.perf_counter() - started
        end_lsn = wal_lsn(config["url"])
        status = service.queue.get(job.job_id).status
    finally:
        dispose(service)
    if (logged_staging or config["check"] == "create") and len(rewritten) != 1:
        raise RuntimeError(f"expected one rewritten CREATE of the partition, got {rewritten}")
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "wal_bytes": wal_bytes(config["url"], start_lsn, end_lsn),
        "steps": steps,
        "job_id": job.job_id,
        "status": status,
        "rewritten_ddl": rewritten,
        "messages": messages,
    }


def attach_promote(
    service,
    contract,
    job_id: str,
    run_id: str,
    rows: int,
    config: dict,
    using: str,
    steps: dict,
) -> dict:
    """The prototype's promotion: the staged partition becomes storage's partition of the load.

    One transaction, so a failure leaves the job staged as before. Returns the server's DEBUG1
    messages per step (which tables were scanned: "verifying table ...").
    """
    from psycopg import sql

    from dw_pipelines.core.ingestion import PromoteResult
    from dw_pipelines.core.outbox import PROMOTED
    from dw_pipelines.core.tables import staging_partition

    warehouse = service.warehouse
    began = time.monotonic()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[name] = steps.get(name, 0.0) + now - clock
        clock = now

    # As service.promote: something to promote, the run holds the job.
    if not warehouse.has_staged_rows(contract, job_id):
        raise RuntimeError(f"job {job_id}: nothing staged")
    job = service.queue.start(job_id, run_id)
    loaded_at = service.queue.clock()
    partition = staging_partition(contract.name, job_id)
    messages: dict[str, list[str]] = {}
    current: list[str] = []
    lap("queue")
    with warehouse.engine.begin() as conn:
        driver = conn.connection.driver_connection

        def on_notice(diagnostic) -> None:
            current.append(diagnostic.message_primary or "")

        def run(name: str, *statements) -> None:
            current.clear()
            for statement in statements:
                conn.exec_driver_sql(statement.as_string(driver))
            messages[name] = messages.get(name, []) + list(current)
            lap(name)

        driver.add_notice_handler(on_notice)
        try:
            conn.exec_driver_sql("SET LOCAL client_min_messages = debug1")
            staged = sql.SQL("dw_staging.{}").format(sql.Identifier(partition))
            stored = sql.SQL("{}.{}").format(
                sql.Identifier(PARTITIONED_SCHEMA), sql.Identifier(partition)
            )
            job_literal = sql.Literal(job_id)
            # The job's previous load, locked as _delete_previous_load does. A re-load would
            # DETACH/DROP its previous partition here: not prototyped.
            previous = conn.execute(
                warehouse.loads.select()
                .where(warehouse.loads.c.dataset == contract.name)
                .where(warehouse.loads.c.job_id == job_id)
                .with_for_update()
            ).first()
            if previous is not None:
                raise NotImplementedError("re-loading a job is not prototyped")
            lap("lookup")
            if config["method"] == "attach-a":
                run("set_logged", sql.SQL("ALTER TABLE {} SET LOGGED").format(staged))
            if config["check"] == "add":
                # Validated by a scan of the partition; the ATTACH then needs none.
                run(
                    "check",
                    sql.SQL("ALTER TABLE {} ADD CHECK (_dw_job_id = {})").format(
                        staged, job_literal
                    ),
                )
            run(
                "detach_alter",
                sql.SQL("ALTER TABLE dw_staging.{} DETACH PARTITION {}").format(
                    sql.Identifier(contract.name), staged
                ),
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    staged, sql.Identifier(PARTITIONED_SCHEMA)
                ),
                # Fast defaults (PG >= 11): catalog only, no rewrite, no NULL check.
                sql.SQL(
                    "ALTER TABLE {} ADD COLUMN _dw_tenant_id varchar(64) NOT NULL DEFAULT {}, "
                    "ADD COLUMN _dw_loaded_at timestamptz NOT NULL DEFAULT {}, "
                    "DROP COLUMN _dw_row_number"
                ).format(stored, sql.Literal(job.tenant_id), sql.Literal(loaded_at)),
                # The stored values stay (attmissingval); storage's columns have no defaults.
                sql.SQL(
                    "ALTER TABLE {} ALTER COLUMN _dw_tenant_id DROP DEFAULT, "
                    "ALTER COLUMN _dw_loaded_at DROP DEFAULT, ALTER COLUMN _dw_job_id DROP DEFAULT"
                ).format(stored),
            )
            # What the ATTACH would otherwise build itself for the parent's partitioned index.
            if config["index"] == "partitioned":
                run("index", sql.SQL("CREATE INDEX ON {} " + using).format(stored))
            run(
                "attach",
                sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                    sql.SQL(PARENT), stored, job_literal
                ),
            )
            record = {
                "dataset": contract.name,
                "job_id": job_id,
                "tenant_id": job.tenant_id,
                "loaded_at": loaded_at,
                "rows": rows,
                "schema_version": warehouse.schema_version(contract),
            }
            # The product's signature is moving (merge ordering records the enqueue time).
            if "enqueued_at" in inspect.signature(warehouse._record_load).parameters:
                record["enqueued_at"] = job.created_at
            warehouse._record_load(conn, **record)
            conn.exec_driver_sql("RESET client_min_messages")
        finally:
            driver.remove_notice_handler(on_notice)
        lap("record_load")
    lap("commit")
    result = PromoteResult(
        job_id=job_id,
        dataset=contract.name,
        tenant_id=job.tenant_id,
        write_mode=contract.write_mode,
        rows=rows,
        inserted=rows,
        deleted=0,
        seconds=time.monotonic() - began,
        strategy="attach",
        schema_version=warehouse.schema_version(contract),
    )
    service.queue.record_step(job_id, run_id, PROMOTED, result.details())
    service.queue.complete(job_id, run_id, rows_loaded=rows, details=result.details())
    lap("queue")
    return messages


WORKERS = {
    "copy": worker_copy,
    "ingest": worker_ingest,
    "attach-a": lambda config: worker_attach(config, logged_staging=False),
    "attach-b": lambda config: worker_attach(config, logged_staging=True),
}


def worker_main(method: str, config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    result = WORKERS[method](config)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(config["result_path"]).write_text(json.dumps(result))


# =================================================================================== parent


def reset(url: str, method: str) -> None:
    statements = [f"DROP SCHEMA IF EXISTS {schema} CASCADE" for schema in SCHEMAS]
    if method == "copy":
        statements += ["CREATE SCHEMA bench_raw", bl.plain_table_ddl("bench_raw.events")]
    statements.append("CHECKPOINT")
    bl.sql(url, *statements)


def run_worker(method: str, config: dict, workdir: Path) -> dict:
    tag = f"{method}-{uuid.uuid4().hex[:8]}"
    config = {**config, "method": method, "result_path": str(workdir / f"{tag}.result.json")}
    config_path = workdir / f"{tag}.json"
    log_path = workdir / f"{tag}.log"
    config_path.write_text(json.dumps(config))
    with open(log_path, "wb") as log_file:
        completed = subprocess.run(
            [sys.executable, __file__, "--_worker", method, str(config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if completed.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise SystemExit(
            f"FAILED: worker {method} exited {completed.returncode}:\n" + "\n".join(tail)
        )
    return json.loads(Path(config["result_path"]).read_text())


def content(url: str, table: str, job_id: str) -> tuple:
    """(rows of the job, sum(user_id), checksum over data + lineage, _dw_loads.rows) of `table`.

    The lineage enters as the tenant itself, and as whether the row's job id and loaded-at are
    the job's `_dw_loads` values (the ids differ between methods, so not the values)."""
    data = ", ".join(f"s.{c}" for c in bl.COLUMN_NAMES)
    query = (
        "WITH l AS (SELECT job_id, tenant_id, loaded_at, rows FROM dw_storage._dw_loads "
        f"WHERE dataset = '{DATASET}' AND job_id = '{job_id}') "
        f"SELECT count(*), sum(s.user_id), md5(string_agg(md5(row({data}, s._dw_tenant_id, "
        "s._dw_tenant_id = l.tenant_id, s._dw_job_id = l.job_id, "
        "s._dw_loaded_at = l.loaded_at)::text), '' ORDER BY s.event_id)), min(l.rows) "
        f"FROM {table} s JOIN l ON s._dw_job_id = l.job_id"
    )
    return tuple(bl.sql(url, "SET TimeZone = 'UTC'", query)[0])


def columns_of(url: str, schema: str, table: str) -> dict:
    import psycopg

    with psycopg.connect(url) as conn:
        cursor = conn.execute(f"SELECT * FROM {schema}.{table} LIMIT 0")
        star = [(c.name, c.type_code) for c in cursor.description]
        catalog = conn.execute(
            "SELECT column_name, data_type, character_maximum_length, is_nullable "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
    return {"select_star": star, "catalog": [list(r) for r in catalog]}


def verify(method: str, url: str, result: dict, rows: int, checksum: int, reference: dict) -> None:
    """Fail loudly unless the method's target holds exactly the expected content."""
    problems = []
    if method == "copy":
        found, total = bl.sql(url, "SELECT count(*), sum(user_id) FROM bench_raw.events")[0]
        if (found, total) != (rows, checksum):
            problems.append(f"bench_raw.events: {found:,} rows, sum {total} (want {checksum})")
    else:
        if result["status"] != "COMPLETED":
            problems.append(f"job status {result['status']}")
        table = "dw_storage.events" if method == "ingest" else PARENT
        expected_total = rows + (result.get("default_rows") or 0)
        total = bl.sql(url, f"SELECT count(*) FROM {table}")[0][0]
        if total != expected_total:
            problems.append(f"{table} holds {total:,} rows, expected {expected_total:,}")
        found = content(url, table, result["job_id"])
        if found[0] != rows or found[1] != checksum or found[3] != rows:
            problems.append(f"{table}: job rows/sum/_dw_loads.rows {found[:2]}, {found[3]}")
        columns = columns_of(url, *table.split("."))
        if method == "ingest":
            reference.setdefault("content", found[2])
            reference.setdefault("columns", columns)
            if found[2] != reference["content"]:
                problems.append("ingest runs disagree on the content checksum")
        else:
            problems += verify_attached(url, result, found, columns, reference)
    if problems:
        raise SystemExit(f"FAILED verification of {method}: " + "; ".join(problems))


def verify_attached(url: str, result: dict, found: tuple, columns: dict, reference: dict) -> list:
    problems = []
    if "content" not in reference:
        return ["no reference: run the ingest method first"]
    if found[2] != reference["content"]:
        problems.append(f"content checksum {found[2]} != today's append {reference['content']}")
    if columns != reference["columns"]:
        problems.append(f"columns {columns} != the product's storage {reference['columns']}")
    if columns != columns_of(url, "dw_storage", DATASET):
        problems.append("columns differ from this database's dw_storage.events")
    product_rows = bl.sql(url, "SELECT count(*) FROM dw_storage.events")[0][0]
    if product_rows:
        problems.append(f"the product's dw_storage.events holds {product_rows} rows")
    left = bl.sql(
        url, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'dw_staging.events'::regclass"
    )[0][0]
    if left:
        problems.append(f"{left} partition(s) left in dw_staging.events")
    partitions = bl.sql(
        url,
        "SELECT n.nspname, c.relpersistence, pg_get_expr(c.relpartbound, c.oid) "
        f"FROM pg_partition_tree('{PARENT}'::regclass) t JOIN pg_class c ON c.oid = t.relid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf "
        "AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'",
    )
    bound = f"FOR VALUES IN ('{result['job_id']}')"
    if partitions != [(PARTITIONED_SCHEMA, "p", bound)]:
        problems.append(f"attached partitions {partitions}, expected one logged with {bound}")
    indexed = bl.sql(
        url,
        "SELECT count(*) FROM pg_index i JOIN pg_inherits h ON h.inhrelid = i.indexrelid "
        f"WHERE h.inhparent = (SELECT indexrelid FROM pg_index WHERE indrelid = '{PARENT}'"
        "::regclass LIMIT 1)",
    )[0][0]
    with_default = result.get("default_rows") is not None
    expected = 1 + with_default if result["index"] == "partitioned" else 0
    if indexed != expected:
        problems.append(f"{indexed} partition indexes attached to the parent's BRIN index")
    return problems


def scans(result: dict) -> str:
    """Which tables the attach transaction scanned to validate constraints (DEBUG1 messages)."""
    found = []
    for step, messages in result.get("messages", {}).items():
        for message in messages:
            if message.startswith("verifying table"):
                found.append(f"{step} scanned {message.split(' ', 2)[2]}")
            elif "implied by existing constraints" in message:
                found.append(f"{step}: {message}")
    return "; ".join(found)


def summarise(method: str, variant, samples: list[dict], rows: int) -> dict:
    seconds = bl.median([s["seconds"] for s in samples])
    step_names = list(dict.fromkeys(k for s in samples for k in s["steps"]))
    steps = {k: round(bl.median([s["steps"].get(k, 0.0) for s in samples]), 4) for k in step_names}
    return {
        "method": method,
        "label": LABELS[method],
        "rows": rows,
        "default_rows": variant,
        "seconds": round(seconds, 4),
        "seconds_all": [round(s["seconds"], 4) for s in samples],
        "rows_per_second": round(rows / seconds),
        "steps": steps,
        "wal_mb": round(bl.median([s["wal_bytes"] for s in samples]) / 2**20, 1),
        "peak_rss_mb": round(max(s["peak_rss_mb"] for s in samples), 1),
        "scans": scans(samples[-1]),
        "rewritten_ddl": samples[-1].get("rewritten_ddl"),
    }


def add_ratios(results: list[dict]) -> None:
    copy = next(r["seconds"] for r in results if r["method"] == "copy")
    for r in results:
        r["ratio_to_copy"] = round(r["seconds"] / copy, 3)
        r["share_of_copy_rows_per_second"] = round(copy / r["seconds"], 3)
        r["meets_target"] = r["method"] == "copy" or copy / r["seconds"] >= TARGET_SHARE


def measure_size(args, rows: int, url: str, workdir: Path, datasets: Path) -> list[dict]:
    folder = workdir / f"rows_{rows}"
    bl.log(f"generating {rows:,} rows of CSV ...")
    folder.mkdir(parents=True)
    table = bl.generate_events(rows)
    path = folder / "events.csv"
    bl.write_csv(table, path)
    checksum = bl.user_id_sum([path])
    del table
    config = {
        "url": url,
        "file": str(path),
        "check": args.check,
        "index": args.index,
        "env": {
            "DW_DATABASE_URL": bl.sqlalchemy_url(url),
            "DW_LANDING_ROOT": str(folder),
            "DW_DATASETS_PATH": str(datasets),
            "DW_HOME": str(workdir / "home"),
            # The prototype compares against the copy, and stages as it did before the product
            # attached (unlogged; variant b rewrites the CREATE): the product's attach is off.
            "DW_ATTACH_MIN_ROWS": "off",
        },
    }
    runs = []  # (method, default rows or None)
    for method in args.methods:
        variants = args.default_rows if method.startswith("attach") else [None]
        runs += [(method, variant) for variant in variants]
    samples: dict[tuple, list[dict]] = {run: [] for run in runs}
    reference: dict = {}
    for index in range(args.repeat):  # rounds interleave the methods: drift hits all alike
        for method, variant in runs:
            reset(url, method)
            tag = f"  {rows:,} {method}" + (f" default={variant}" if method != "copy" else "")
            tag += f" ({index + 1}/{args.repeat})" if args.repeat > 1 else ""
            bl.log(f"{tag} ...")
            result = run_worker(method, {**config, "default_rows": variant}, workdir)
            result["default_rows"] = variant
            result["index"] = args.index
            verify(method, url, result, rows, checksum, reference)
            bl.log(f"{tag}: {result['seconds']:.3f} s  {fmt_steps(result['steps'])}")
            samples[(method, variant)].append(result)
    if not args.keep_db:
        reset(url, "none")
    results = [summarise(m, v, samples[(m, v)], rows) for m, v in runs]
    add_ratios(results)
    return results


def fmt_steps(steps: dict) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in steps.items())


def default_label(result: dict) -> str:
    if not result["method"].startswith("attach"):
        return "-"
    return "none" if result["default_rows"] is None else f"{result['default_rows']:,}"


def render(document: dict) -> str:
    machine = document["machine"]
    lines = [
        f"attach-promotion prototype: sizes {', '.join(f'{r:,}' for r in document['rows'])} rows,"
        f" CSV, repeat {document['repeat']} (median), --check {document['check']}, --index "
        f"{document['index']}",
        f"machine: {machine['cpus']} CPUs, Python {machine['python']}, PostgreSQL "
        f"{machine['postgres']} (wal_level {document['wal_level']}), load average "
        f"{machine['load_average_1m']} at start, {document['load_average_end']} at end",
        "",
    ]
    rows = []
    for r in document["results"]:
        steps = r["steps"]
        ddl = sum(
            v for k, v in steps.items() if k in ("lookup", "detach_alter", "index", "record_load")
        )
        rows.append(
            [
                f"{r['rows']:,}",
                r["label"],
                default_label(r),
                f"{r['seconds']:.3f}",
                f"{r['ratio_to_copy']:.2f}x",
                f"{100 * r['share_of_copy_rows_per_second']:.0f}",
                f"{steps.get('stage', steps.get('copy', 0)):.3f}",
                f"{steps['promote']:.3f}" if "promote" in steps else "",
                f"{steps['set_logged']:.3f}" if "set_logged" in steps else "",
                f"{steps['check']:.3f}" if "check" in steps else "",
                f"{ddl:.3f}" if "attach" in steps else "",
                f"{steps['attach']:.3f}" if "attach" in steps else "",
                f"{steps.get('commit', 0) + steps.get('queue', 0):.3f}"
                if "attach" in steps
                else "",
                f"{r['wal_mb']:.0f}",
                f"{r['peak_rss_mb']:.0f}",
                "" if r["method"] == "copy" else ("yes" if r["meets_target"] else "no"),
            ]
        )
    headers = [
        "rows", "method", "default part.", "wall s", "x COPY", "% COPY", "stage s", "promote s",
        "SET LOGGED s", "CHECK s", "DDL s", "ATTACH s", "commit+queue s", "WAL MB",
        "peak RSS MB", ">= 65 %",
    ]  # fmt: skip
    lines.append(bl.render_table(headers, rows))
    lines.append("")
    for r in document["results"]:
        if r["scans"]:
            lines.append(f"- {r['rows']:,} {r['method']} default={r['default_rows']}: {r['scans']}")
    lines += [f"- {n}" for n in document["notes"]]
    return "\n".join(lines)


NOTES = [
    "wall s: timed inside a fresh worker, from service.start (copy: the COPY) to the job's "
    "COMPLETED; median of --repeat; x COPY = wall / raw COPY's wall; % COPY = COPY's wall / "
    "wall (share of COPY's rows/s); the kill criterion is >= 65 % (x COPY <= 1.54)",
    "the dataset's tables (and dw_storage_p.events with its DEFAULT partition) exist before the "
    "timer in every method; ingest.py times their creation inside its first job",
    "stage s: service.start + service.stage (CREATE partition + validation + ADBC binary COPY); "
    "DDL s: the _dw_loads lock, DETACH + SET SCHEMA + lineage columns + DROP COLUMN, the BRIN "
    "index, the _dw_loads row; commit+queue s: COMMIT, has_staged_rows, outbox start/PROMOTED/"
    "COMPLETED",
    "WAL MB: pg_current_wal_insert_lsn() before and after the timed pass (cluster-wide: other "
    "databases' writes count too)",
    "--check add: ALTER TABLE ADD CHECK scans the partition once (CHECK s), the ATTACH none; "
    "create: the CHECK is declared in the staging partition's CREATE (no scan at all); none: the "
    "ATTACH scans. --index partitioned: each attached partition gets the parent's BRIN index "
    "(built in DDL s); default-only: only the DEFAULT partition has it",
    "default part.: rows in dw_storage_p.events' DEFAULT partition (small jobs' rows); none: no "
    "DEFAULT partition. The lines above the notes list the scans the server reported (DEBUG1 "
    "'verifying table ...') per step",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", default="1000000,5000000", help="comma-separated sizes (default 1M,5M)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="passes per method (median)")
    parser.add_argument(
        "--default-rows",
        default="0",
        help="comma-separated rows in storage's DEFAULT partition for the attach methods; "
        "'none' for no DEFAULT partition (e.g. none,0,5000000)",
    )
    parser.add_argument(
        "--check",
        choices=CHECK_MODES,
        default="add",
        help="how the partition's bound is proven before ATTACH: add = ALTER TABLE ADD CHECK "
        "(one validating scan), create = declared in the staging partition's CREATE (no scan; "
        "rewrites the product's statement in the worker), none = ATTACH scans",
    )
    parser.add_argument(
        "--index",
        choices=INDEX_MODES,
        default="partitioned",
        help="partitioned = the product's BRIN index on the parent, so every attached partition "
        "gets one (built before the ATTACH); default-only = a BRIN index on the DEFAULT "
        "partition only (an attached job is dropped whole on re-load, so needs none)",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help=", ".join(METHODS))
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    parser.add_argument("--server-url", default=os.environ.get("DW_BENCH_SERVER_URL"))
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    args.server_url = args.server_url or bl.DEFAULT_SERVER_URL
    try:
        args.rows = [int(r) for r in args.rows.split(",") if r.strip()]
        args.default_rows = [
            None if v.strip() == "none" else int(v) for v in args.default_rows.split(",")
        ]
    except ValueError as exc:
        parser.error(f"--rows/--default-rows: {exc}")
    if not args.rows or min(args.rows) < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be >= 1")
    if any(v is not None and v < 0 for v in args.default_rows):
        parser.error("--default-rows must be >= 0 or 'none'")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    # COPY is the ratios' base, today's append the content reference of the attach methods.
    args.methods = [m for m in METHODS if m in {"copy", "ingest", *methods}]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dw_bench_attach_"))
    try:
        datasets = bl.write_contracts(workdir / "datasets")
        machine = bl.machine_info(args.server_url)
        wal_level = bl.sql(args.server_url, "SHOW wal_level")[0][0]
        results = []
        with bl.scratch_database(args.server_url, keep=args.keep_db) as url:
            bl.log(f"database {url.rsplit('/', 1)[1]}")
            for rows in args.rows:
                results += measure_size(args, rows, url, workdir, datasets)
        document = {
            "benchmark": "attach",
            "rows": args.rows,
            "repeat": args.repeat,
            "check": args.check,
            "index": args.index,
            "default_rows": args.default_rows,
            "machine": machine,
            "wal_level": wal_level,
            "load_average_end": round(os.getloadavg()[0], 2),
            "database": url.rsplit("/", 1)[1],
            "results": results,
            "notes": NOTES,
        }
        print(bl.dump_json(document) if args.json else render(document))
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--_worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
