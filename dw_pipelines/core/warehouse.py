"""The warehouse: per-dataset staging and storage tables, bulk staging loads, atomic promotion.

Layout: schema `dw_staging` and `dw_storage`, one table per dataset named after the dataset (on
SQLite the two schemas are attached database files next to the main one), plus
`dw_storage._dw_loads`, one row per (dataset, job) promoted: when, for which tenant, how many rows.

* Staging rows carry `_dw_job_id` and `_dw_row_number` (the 1-based data row in the source file).
  On Postgres `dw_staging.<dataset>` is partitioned by job: each job loads its own UNLOGGED
  partition (scratch that a retry reloads; no WAL), so loading needs no index and discarding a
  job's rows is a DROP, not a million-row DELETE.
* Postgres loads staging with binary COPY straight from Arrow record batches through ADBC
  (`DW_PG_LOAD_METHOD=adbc`; the default `auto` uses it from 1 MiB up) or with text COPY fed by
  Arrow's CSV writer (`copy-csv`); SQLite uses executemany. Tests hold the paths to identical
  storage content.
* Storage rows carry the lineage columns `_dw_job_id`, `_dw_tenant_id` and `_dw_loaded_at`.
  `append`: promotion deletes the job's previous rows (found through `_dw_loads` and a BRIN index
  on `_dw_loaded_at`, cheap to maintain on an append-only table) and inserts the staged ones.
  `merge`: promotion deletes the rows whose values change and inserts new and changed rows, keyed
  by (`_dw_tenant_id`, primary key), so one tenant never touches another's rows and unchanged rows
  keep their lineage (the job that last changed them). Either way promotion is one transaction,
  and re-running it leaves storage as it was.
"""

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import psycopg.conninfo
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.db import create_db_engine
from dw_pipelines.core.errors import ConfigurationError
from dw_pipelines.core.evolution import Evolution, Plan, versions_table
from dw_pipelines.core.faults import NO_FAULTS, Faults
from dw_pipelines.core.prefetch import prefetched
from dw_pipelines.core.tables import (
    JOB_ID_COLUMN,
    LOADED_AT_COLUMN,
    LOADS_TABLE,
    ROW_NUMBER_COLUMN,
    STAGING_SCHEMA,
    STORAGE_SCHEMA,
    TENANT_COLUMN,
    DatasetTables,
    define_tables,
    staging_partition,
)

LOAD_METHODS = ("auto", "adbc", "copy-csv")
# A merge promotion analyzes its storage table's key columns when the job changed more rows
# than this share of the table (plus the floor), from a sample of 300 x ANALYZE_TARGET rows;
# see `_analyze_if_stale`.
ANALYZE_SHARE = 0.1
ANALYZE_MIN_ROWS = 1000
ANALYZE_TARGET = 10
# The rewrite's kept-rows query is a hash anti-join of the staged rows against the whole table.
# PostgreSQL 15 plans it on one process with a cost estimate high enough to JIT-compile it (with
# inlining and optimization: ~1 s of compile time measured), or as a parallel merge join that
# sorts the staged rows in every worker. Told that workers cost nothing to start, without merge
# joins and without JIT, it runs a parallel hash anti-join: 0.69 s instead of 1.25 s for 1M rows
# against 1M. Set for that statement only, and for the same kind of join that finds a large
# in-place merge's changed keys (`Warehouse._merge_by_changed_keys`: 0.44 s instead of 0.85 s).
BULK_ANTI_JOIN_SETTINGS = {
    "parallel_setup_cost": "0",
    "parallel_tuple_cost": "0",
    "enable_mergejoin": "off",
    "jit": "off",
}
# A merge job smaller than this never rewrites its storage table (see `Warehouse.promote`).
MERGE_REWRITE_MIN_ROWS = 100_000
# Staged rows a large merge looks up first to estimate how much of the table it changes.
MERGE_SAMPLE_ROWS = 10_000
# How long a rewrite waits for its locks on the storage table before merging in place instead;
# readers that arrive meanwhile queue behind the waiting lock, so keep it short.
MERGE_REWRITE_LOCK_TIMEOUT = "2s"
# Below this size a new ADBC connection costs more than binary COPY saves (measured: ~30 ms
# per run for a 10-row file).
SMALL_SOURCE_BYTES = 1 << 20
# Batches read and validated ahead of ADBC's sender, on a thread of their own (see
# core/prefetch.py): each holds up to DW_READ_BATCH_ROWS rows. One is enough to keep both busy
# (measured: 2 was no faster), and each more costs a batch of memory.
STAGING_PREFETCH_BATCHES = 1

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionCounts:
    rows: int  # staged rows
    inserted: int  # rows written to storage
    deleted: int  # rows removed first (the job's previous load, or changed merge rows)
    strategy: str = "insert"  # append: "insert"; merge: "in-place" or "rewrite"


@dataclass(frozen=True)
class _Rewrite:
    removed: int  # stored rows the merge replaces
    restore_key: str  # ALTER TABLE ... ADD CONSTRAINT: the primary key, built once at the end


def create_warehouse_engine(url: str) -> Engine:
    """An engine whose connections see the `dw_staging` and `dw_storage` schemas."""
    engine = create_db_engine(url)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            raise ConfigurationError(
                "DW_WAREHOUSE_URL: an in-memory SQLite warehouse is not supported"
            )
        folder = Path(database).resolve().parent

        def attach(dbapi_connection, _record) -> None:
            for schema in (STAGING_SCHEMA, STORAGE_SCHEMA):
                dbapi_connection.execute(
                    f"ATTACH DATABASE ? AS {schema}", (str(folder / f"{schema}.db"),)
                )
                dbapi_connection.execute(f"PRAGMA {schema}.journal_mode=WAL")

        sa.event.listen(engine, "connect", attach)
    return engine


class Warehouse:
    """Staging and storage tables of the datasets, on one engine.

    Args:
        engine: the warehouse database.
        faults: fault-injection checkpoints (tests only).
        load_method: how Postgres staging is loaded: "adbc" (binary COPY from Arrow),
            "copy-csv" (text COPY on the pooled connection) or "auto" (ADBC from 1 MiB up);
            ignored on SQLite.
        merge_rewrite_share: a merge job that changes at least this share of the stored rows
            rewrites the table instead of updating it in place (Postgres; None: never).
        merge_rewrite_min_rows: jobs with fewer staged rows always merge in place.
    """

    def __init__(
        self,
        engine: Engine,
        faults: Faults = NO_FAULTS,
        load_method: str = "auto",
        merge_rewrite_share: float | None = 0.5,
        merge_rewrite_min_rows: int = MERGE_REWRITE_MIN_ROWS,
    ):
        if load_method not in LOAD_METHODS:
            raise ConfigurationError(
                f"DW_PG_LOAD_METHOD must be one of {', '.join(LOAD_METHODS)}, got {load_method!r}"
            )
        self.engine = engine
        self.faults = faults
        self.load_method = load_method
        self.merge_rewrite_share = merge_rewrite_share
        self.merge_rewrite_min_rows = merge_rewrite_min_rows
        self.dialect = engine.dialect.name
        self._postgres = self.dialect == "postgresql"
        self._metadata = sa.MetaData()
        self._tables: dict[str, DatasetTables] = {}
        # The schema version of each dataset whose tables this process has ensured.
        self._schema_versions: dict[str, int] = {}
        self.loads = sa.Table(
            LOADS_TABLE,
            self._metadata,
            sa.Column("dataset", sa.String(63), primary_key=True),
            sa.Column("job_id", sa.String(128), primary_key=True),
            sa.Column("tenant_id", sa.String(64), nullable=False),
            sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("rows", sa.BigInteger(), nullable=False),
            # The dataset's schema version the job loaded with (NULL: loaded before versions).
            sa.Column("schema_version", sa.Integer(), nullable=True),
            schema=STORAGE_SCHEMA,
        )
        self.versions = versions_table(self._metadata)
        self.evolution = Evolution(
            engine, self._metadata, self.tables, [self.loads, self.versions], faults
        )

    # ------------------------------------------------------------------------------ tables

    def tables(self, contract: DatasetContract) -> DatasetTables:
        if contract.name not in self._tables:
            self._tables[contract.name] = define_tables(self._metadata, contract, self.dialect)
        return self._tables[contract.name]

    def ensure_tables(
        self, contract: DatasetContract, applied_by: str = "dw-pipelines worker"
    ) -> DatasetTables:
        """Create the dataset's tables if missing and apply the safe changes of a changed
        contract (`core.evolution`; raises `SchemaChangeRequired` for the others). Once per
        dataset and process: a run's later steps reuse the answer."""
        tables = self.tables(contract)
        if contract.name not in self._schema_versions:
            version = self.evolution.ensure(contract, applied_by)
            self._schema_versions[contract.name] = version
        return tables

    def schema_version(self, contract: DatasetContract) -> int:
        """The schema version of the dataset's storage (its tables ensured first)."""
        self.ensure_tables(contract)
        return self._schema_versions[contract.name]

    def plan(self, contract: DatasetContract) -> Plan:
        """What storage needs to match the contract (nothing is changed)."""
        return self.evolution.plan(contract)

    def migrate(
        self,
        contract: DatasetContract,
        applied_by: str,
        allow_destructive: bool,
        expected: Plan | None = None,
    ) -> tuple[Plan, int]:
        """Apply the dataset's plan (see `Evolution.apply`); returns it and the new version."""
        applied, version = self.evolution.apply(
            contract, applied_by, allow_destructive, expected=expected
        )
        self._schema_versions[contract.name] = version
        return applied, version

    # ----------------------------------------------------------------------------- staging

    def load_staging(
        self,
        contract: DatasetContract,
        job_id: str,
        batches: Iterable[pa.RecordBatch],
        size_hint: int | None = None,
    ) -> int:
        """Replace the job's staged rows with `batches` (contract schema).

        An exception raised while iterating `batches` (e.g. a contract violation) rolls the load
        back: the job has nothing staged afterwards. `size_hint` (the source's bytes) lets a
        small file skip ADBC's own connection and use the pooled one with text COPY.
        """
        tables = self.ensure_tables(contract, applied_by=f"job {job_id}")
        numbered = _with_lineage(batches, job_id, include_job_id=not self._postgres)
        if not self._postgres:
            with self.engine.begin() as conn:
                staging = tables.staging
                conn.execute(staging.delete().where(staging.c[JOB_ID_COLUMN] == job_id))
                self.faults.hit("staging.copy", conn)
                return self._executemany_into(conn, staging, numbered)
        partition = staging_partition(contract.name, job_id)
        self._create_partition(tables.staging, partition, job_id)
        small = size_hint is not None and size_hint < SMALL_SOURCE_BYTES
        use_adbc = self.load_method == "adbc" or (self.load_method == "auto" and not small)
        try:
            if use_adbc:
                rows = self._adbc_into(partition, contract, numbered)
            else:
                rows = self._copy_csv_into(partition, contract, numbered)
            if contract.write_mode == "merge":
                with self.engine.begin() as conn:
                    # Fresh statistics let the merge join pick hash joins over the partition;
                    # the join needs the row count and the statistics of the columns it filters
                    # and joins on (without the job id's, the planner guesses 0.5 % of the rows).
                    # A small sample is enough for that (one job id; keys unique, checked while
                    # staging): 3,000 rows instead of 30,000, 0.03 s instead of 0.18 s for 1M.
                    keys = ", ".join(
                        _quote(conn, k) for k in [JOB_ID_COLUMN, *contract.primary_key]
                    )
                    conn.execute(sa.text(f"SET LOCAL default_statistics_target = {ANALYZE_TARGET}"))
                    conn.execute(
                        sa.text(f"ANALYZE {STAGING_SCHEMA}.{_quote(conn, partition)} ({keys})")
                    )
            return rows
        except BaseException:
            with contextlib.suppress(Exception):  # the load's own error matters more
                self._drop_partition(partition)
            raise

    def _create_partition(self, parent: sa.Table, partition: str, job_id: str) -> None:
        with self.engine.begin() as conn:
            name = f"{STAGING_SCHEMA}.{_quote(conn, partition)}"
            value = _literal(conn, job_id)
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            # Loads send the data columns only; the partition fills in its job id (a default
            # declared with the partition: one statement, not a CREATE and an ALTER).
            conn.execute(
                sa.text(
                    f"CREATE UNLOGGED TABLE {name} PARTITION OF "
                    f"{STAGING_SCHEMA}.{_quote(conn, parent.name)} "
                    f"({JOB_ID_COLUMN} DEFAULT {value}) FOR VALUES IN ({value})"
                )
            )
            self.faults.hit("staging.copy", conn)

    def _drop_partition(self, partition: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(f"DROP TABLE IF EXISTS {STAGING_SCHEMA}.{_quote(conn, partition)}")
            )

    def _adbc_into(
        self, partition: str, contract: DatasetContract, batches: Iterator[pa.RecordBatch]
    ) -> int:
        schema = _staging_schema(contract)
        failure: list[BaseException] = []

        def guarded() -> Iterator[pa.RecordBatch]:
            # An error raised inside the stream reaches us from ADBC as a generic error;
            # remember the original so the caller sees it (a ContractViolation, say).
            try:
                yield from prefetched(batches, STAGING_PREFETCH_BATCHES, name="dw-staging-read")
            except BaseException as exc:
                failure.append(exc)
                raise

        reader = pa.RecordBatchReader.from_batches(schema, guarded())
        try:
            rows = _adbc_ingest(libpq_conninfo(self.engine.url), STAGING_SCHEMA, partition, reader)
        except Exception:
            if failure:
                raise failure[0] from None
            raise
        return rows

    def _copy_csv_into(
        self, partition: str, contract: DatasetContract, batches: Iterator[pa.RecordBatch]
    ) -> int:
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        rows = 0
        with self.engine.begin() as conn:
            columns = ", ".join(
                _quote(conn, c) for c in [*contract.column_names, ROW_NUMBER_COLUMN]
            )
            statement = (
                f"COPY {STAGING_SCHEMA}.{_quote(conn, partition)} ({columns}) "
                "FROM STDIN (FORMAT csv)"
            )
            with conn.connection.driver_connection.cursor() as cursor:
                with cursor.copy(statement) as copy:
                    for batch in batches:
                        buffer = io.BytesIO()
                        # Arrow writes NULL as an empty field and "" as a quoted empty string,
                        # exactly how Postgres' CSV COPY tells them apart.
                        pacsv.write_csv(batch, buffer, options)
                        copy.write(buffer.getbuffer())
                        rows += batch.num_rows
        return rows

    @staticmethod
    def _executemany_into(
        conn: Connection, table: sa.Table, batches: Iterator[pa.RecordBatch]
    ) -> int:
        rows = 0
        for batch in batches:
            if batch.num_rows:
                conn.execute(table.insert(), batch.to_pylist())
                rows += batch.num_rows
        return rows

    def staged_rows(self, contract: DatasetContract, job_id: str) -> int:
        staging = self.ensure_tables(contract).staging
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).where(staging.c[JOB_ID_COLUMN] == job_id)
            ).scalar_one()

    def has_staged_rows(self, contract: DatasetContract, job_id: str) -> bool:
        """Whether the job has staged rows: stops at the first one, where `staged_rows` counts
        them all (a scan of the whole partition, ~0.1 s per million rows)."""
        staging = self.ensure_tables(contract).staging
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.exists().where(staging.c[JOB_ID_COLUMN] == job_id))
            ).scalar_one()

    def discard_staging(self, contract: DatasetContract, job_id: str) -> None:
        staging = self.ensure_tables(contract).staging
        if self._postgres:
            self._drop_partition(staging_partition(contract.name, job_id))
            return
        with self.engine.begin() as conn:
            conn.execute(staging.delete().where(staging.c[JOB_ID_COLUMN] == job_id))

    # ----------------------------------------------------------------------------- storage

    def promote(
        self, contract: DatasetContract, job_id: str, tenant_id: str, loaded_at: datetime
    ) -> PromotionCounts:
        """Move the job's staged rows into storage in one transaction."""
        tables = self.ensure_tables(contract)
        storage = tables.storage
        data = contract.column_names
        staged, of_job = self._staged_rows(tables.staging, contract, job_id)
        source = sa.select(
            *[staged.c[c] for c in data],
            staged.c[JOB_ID_COLUMN],
            sa.literal(tenant_id, sa.String(64)).label(TENANT_COLUMN),
            sa.literal(loaded_at, sa.DateTime(timezone=True)).label(LOADED_AT_COLUMN),
        ).where(of_job)
        target_columns = [*data, JOB_ID_COLUMN, TENANT_COLUMN, LOADED_AT_COLUMN]
        with self.engine.begin() as conn:
            if contract.write_mode == "append":
                deleted = self._delete_previous_load(conn, contract, storage, job_id)
                inserted = conn.execute(
                    storage.insert().from_select(target_columns, source),
                    execution_options={"preserve_rowcount": True},
                ).rowcount
                rows = inserted  # every staged row; no second scan of staging to count them
            else:
                rows = conn.execute(
                    sa.select(sa.func.count()).select_from(staged).where(of_job)
                ).scalar_one()
                strategy = "in-place"
                key_match, changed = _merge_predicates(storage, staged, contract, tenant_id)
                if self._postgres:
                    # DELETE ... USING, not WHERE EXISTS: PostgreSQL plans the EXISTS form as a
                    # hash semi-join over the whole storage table even for a few staged rows
                    # (measured 0.58-0.73 s for 10,000 staged rows against 1M stored ones),
                    # the join form as index look-ups from the staged rows (0.06-0.08 s), and
                    # still as a hash join when most of the table changes. The staged keys are
                    # unique (checked while staging), so both delete the same rows.
                    delete = storage.delete().where(of_job, key_match, changed)
                else:  # SQLite has no DELETE ... USING
                    delete = storage.delete().where(
                        sa.exists(sa.select(sa.literal(1)).where(of_job, key_match, changed))
                    )
                new_and_changed = storage.insert().from_select(
                    target_columns,
                    source.where(~sa.exists(sa.select(sa.literal(1)).where(key_match))),
                )
                rewritten = self._rewrite_for_merge(
                    conn, storage, staged, of_job, contract, tenant_id, rows
                )
                if rewritten is not None:
                    strategy, deleted = "rewrite", rewritten.removed
                    inserted = _rowcount(conn, new_and_changed)
                    conn.execute(sa.text(rewritten.restore_key))
                elif self._large_in_place(conn, rows):
                    deleted, inserted = self._merge_by_changed_keys(
                        conn, storage, staged, source, target_columns, contract, tenant_id
                    )
                else:
                    deleted = conn.execute(delete).rowcount
                    inserted = _rowcount(conn, new_and_changed)
            self._record_load(
                conn,
                contract.name,
                job_id,
                tenant_id,
                loaded_at,
                rows,
                self._schema_versions[contract.name],
            )
            self.faults.hit("promote.before_commit", conn)
        if self._postgres and contract.write_mode == "merge" and inserted + deleted:
            self._analyze_if_stale(storage, contract, changed_rows=inserted + deleted)
        return PromotionCounts(
            rows=rows,
            inserted=inserted,
            deleted=deleted,
            strategy="insert" if contract.write_mode == "append" else strategy,
        )

    def _staged_rows(
        self, staging: sa.Table, contract: DatasetContract, job_id: str
    ) -> tuple[sa.FromClause, sa.ColumnElement]:
        """What promotion reads the job's staged rows from, and the condition that picks them.

        On Postgres that is the job's own partition, named directly: it holds that job's rows
        only, so no row needs the job-id test that reading through the parent table applies to
        each of them (measured ~0.03 s per scan of 1M rows; a merge scans them three times).
        """
        if not self._postgres:
            staged = staging.alias("staged")
            return staged, staged.c[JOB_ID_COLUMN] == job_id
        partition = sa.table(
            staging_partition(contract.name, job_id),
            *[sa.column(c.name, c.type) for c in staging.columns],
            schema=STAGING_SCHEMA,
        ).alias("staged")
        return partition, sa.true()

    def _large_in_place(self, conn: Connection, rows: int) -> bool:
        """Whether an in-place merge is large enough to find its changed keys first (Postgres,
        from `merge_rewrite_min_rows` staged rows, where the role may create temporary tables)."""
        if not self._postgres or rows < max(self.merge_rewrite_min_rows, 1):
            return False
        return conn.execute(
            sa.text("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
        ).scalar_one()

    def _merge_by_changed_keys(
        self,
        conn: Connection,
        storage: sa.Table,
        staged: sa.FromClause,
        source: sa.Select,
        target_columns: list[str],
        contract: DatasetContract,
        tenant_id: str,
    ) -> tuple[int, int]:
        """Merge a large job in place with one join of the file against the table.

        The plain in-place statements each join every staged row against the table: the delete
        of changed rows and the insert of new and changed ones (0.8-0.9 s and 0.7 s for a 1M-row
        daily snapshot with 1 % changed). Here one join writes the keys of the new and changed
        rows to a temporary table, which is small when few rows change, and the delete and the
        insert then only join those keys (for that snapshot: 0.44 s for the join, 0.1 s for the
        rest). Returns (deleted, inserted), the same as the plain statements give.
        """
        keys = contract.primary_key
        key_match, changed = _merge_predicates(storage, staged, contract, tenant_id)
        stored_key = storage.c[keys[0]]  # NOT NULL in storage: NULL only where no row matched
        changed_keys = (
            sa.select(*[staged.c[k] for k in keys], stored_key.is_not(None).label("_dw_replaces"))
            .select_from(staged.outerjoin(storage, key_match))
            .where(sa.or_(stored_key.is_(None), changed))
        )
        compiled = changed_keys.compile(conn)
        with _planner_settings(conn, BULK_ANTI_JOIN_SETTINGS):  # the same kind of join
            conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE dw_changed_keys ON COMMIT DROP AS {compiled}",
                compiled.params,
            )
        conn.execute(sa.text("ANALYZE dw_changed_keys"))  # a few rows or many: plan the joins
        found = sa.table(
            "dw_changed_keys", *[sa.column(k) for k in keys], sa.column("_dw_replaces", sa.Boolean)
        )
        deleted = conn.execute(
            storage.delete().where(
                storage.c[TENANT_COLUMN] == tenant_id,
                *[storage.c[k] == found.c[k] for k in keys],
                found.c["_dw_replaces"],
            )
        ).rowcount
        is_found = sa.exists(
            sa.select(sa.literal(1)).where(*[found.c[k] == staged.c[k] for k in keys])
        )
        inserted = _rowcount(
            conn, storage.insert().from_select(target_columns, source.where(is_found))
        )
        conn.execute(sa.text("DROP TABLE dw_changed_keys"))
        return deleted, inserted

    def _changes_few_rows(
        self,
        conn: Connection,
        storage: sa.Table,
        staged: sa.FromClause,
        contract: DatasetContract,
        tenant_id: str,
        rows: int,
        estimated: float,
    ) -> bool:
        """Whether a sample of the staged rows shows the job changing far fewer stored rows than
        a rewrite needs, so that the rewrite's kept-rows query need not run to find out.

        A job that sends the whole table again with a few changes (a daily full snapshot) is as
        large as the table, but a rewrite does not pay for it: without this look the kept-rows
        query ran only to be rolled back (0.84 s for a 1M-row snapshot with 1 % changed, whose
        in-place merge then took 1.6 s). About MERGE_SAMPLE_ROWS staged rows, whole pages picked
        at random, are looked up by primary key: ~0.02 s. Only a clear "no" counts (an estimate
        under half the rewrite's threshold); anything else goes on to the exact count.
        """
        percent = min(100.0, 100.0 * MERGE_SAMPLE_ROWS / rows)
        sample = sa.tablesample(
            staged.element, sa.func.system(percent), name="staged_sample", seed=sa.literal(0)
        )
        key_match, changed = _merge_predicates(storage, sample, contract, tenant_id)
        sampled, changing = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(
                    sa.exists(sa.select(sa.literal(1)).where(key_match, changed))
                ),
            ).select_from(sample)
        ).one()
        if not sampled:
            return False
        share = self.merge_rewrite_share or 0.0
        return changing / sampled * rows < 0.5 * share * max(estimated, 0)

    def _rewrite_for_merge(
        self,
        conn: Connection,
        storage: sa.Table,
        staged: sa.FromClause,
        of_job: sa.ColumnElement,
        contract: DatasetContract,
        tenant_id: str,
        rows: int,
    ) -> "_Rewrite | None":
        """Empty the storage table and put back the rows this merge keeps, for a large merge.

        In place, every changed row costs a delete, a new row version and a primary-key entry
        next to its dead predecessor: measured 3.9x a raw COPY of the same rows for a merge
        that changes all of 1M stored rows (docs/benchmarks.md, "Merge: the physical floor").
        When most of the table changes it is cheaper to copy the kept rows aside, TRUNCATE,
        insert without the primary key and build the key once (for the same 1M rows: kept rows
        0.6 s, insert 1.4 s, key build 0.8 s, against 1.6 s for raw COPY). TRUNCATE keeps the
        table itself (its grants, dependent views, comments), and it rolls back with the
        transaction, so a failed promotion leaves storage as it was.

        The cost is an ACCESS EXCLUSIVE lock for the rewrite: readers wait until the promotion
        commits. So it runs only where it pays (this job changes at least `merge_rewrite_share`
        of the stored rows, and at least `merge_rewrite_min_rows` are staged), only on a table
        this role owns, that nothing references by foreign key and that has no triggers of its
        own (TRUNCATE would bypass row triggers), where the role may create temporary tables
        (roles.sql leaves that to PUBLIC's default), and only if the locks come within
        MERGE_REWRITE_LOCK_TIMEOUT. Otherwise the caller merges in place, as if this was never
        tried: everything here runs in a savepoint.

        Returns None to merge in place; otherwise the number of stored rows removed (the changed
        ones) and the statement that restores the primary key, for the caller to run after its
        insert of new and changed rows (which then runs against the kept rows).
        """
        share = self.merge_rewrite_share
        if not self._postgres or share is None or rows < max(self.merge_rewrite_min_rows, 1):
            return None
        name = f"{STORAGE_SCHEMA}.{_quote(conn, storage.name)}"
        estimated, eligible, key_name, key_definition = conn.execute(
            sa.text(
                "SELECT c.reltuples,"
                " pg_has_role(c.relowner, 'USAGE')"
                " AND has_database_privilege(current_database(), 'TEMPORARY')"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint f"
                "                 WHERE f.confrelid = c.oid AND f.contype = 'f')"
                " AND NOT EXISTS (SELECT 1 FROM pg_trigger t"
                "                 WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),"
                " k.conname, pg_get_constraintdef(k.oid)"
                " FROM pg_class c"
                " LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p'"
                " WHERE c.oid = CAST(:name AS regclass)"
            ),
            {"name": f"{STORAGE_SCHEMA}.{storage.name}"},
        ).one()
        # reltuples is an estimate (-1: never analyzed); a job much smaller than the table
        # cannot change half of it, so skip the savepoint and the locks altogether.
        if not eligible or key_name is None or rows < share * max(estimated, 0):
            return None
        if self._changes_few_rows(conn, storage, staged, contract, tenant_id, rows, estimated):
            return None
        key_match, changed = _merge_predicates(storage, staged, contract, tenant_id)
        columns = ", ".join(_quote(conn, c.name) for c in storage.columns)
        savepoint = conn.begin_nested()
        try:
            conn.execute(sa.text(f"SET LOCAL lock_timeout = '{MERGE_REWRITE_LOCK_TIMEOUT}'"))
            # Writers wait from here on (the kept rows must not change under us); readers
            # still read while the kept rows are copied aside.
            conn.execute(sa.text(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE"))
            stored = conn.execute(sa.select(sa.func.count()).select_from(storage)).scalar_one()
            # Kept: rows of other tenants and keys, and rows whose values this job repeats
            # (they keep their lineage, as in place).
            kept_query = sa.select(*storage.columns).where(
                ~sa.exists(sa.select(sa.literal(1)).where(of_job, key_match, changed))
            )
            compiled = kept_query.compile(conn)
            with _planner_settings(conn, BULK_ANTI_JOIN_SETTINGS):
                kept = conn.exec_driver_sql(
                    f"CREATE TEMPORARY TABLE dw_kept_rows ON COMMIT DROP AS {compiled}",
                    compiled.params,
                ).rowcount
            removed = stored - kept
            if removed < share * stored:
                savepoint.rollback()
                return None
            conn.execute(sa.text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
            conn.execute(sa.text("SET LOCAL lock_timeout TO DEFAULT"))
        except sa.exc.OperationalError as exc:  # lock_timeout: lock_not_available
            savepoint.rollback()
            _log.info("merge into %s in place: %s", name, exc.orig or exc)
            return None
        except sa.exc.ProgrammingError as exc:  # a privilege the checks above did not foresee
            savepoint.rollback()
            _log.warning("merge into %s in place: %s", name, exc.orig or exc)
            return None
        savepoint.commit()
        key = _quote(conn, key_name)
        conn.execute(sa.text(f"TRUNCATE {name}"))
        # Without the key while the rows go in: one index build instead of a million inserts.
        conn.execute(sa.text(f"ALTER TABLE {name} DROP CONSTRAINT {key}"))
        conn.execute(sa.text(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM dw_kept_rows"))
        conn.execute(sa.text("DROP TABLE dw_kept_rows"))
        return _Rewrite(
            removed=removed,
            restore_key=f"ALTER TABLE {name} ADD CONSTRAINT {key} {key_definition}",
        )

    def _analyze_if_stale(
        self, storage: sa.Table, contract: DatasetContract, changed_rows: int
    ) -> None:
        """Refresh the planner's picture of a merge table after a job changed a large share of it.

        Merge promotion joins the staged rows against storage. Right after a bulk load the
        planner still has the statistics of the small (or empty) table and hash-joins the whole
        table: measured 0.49-0.56 s for a 10,000-row job into a freshly loaded 1M-row table,
        0.16-0.18 s once analyzed. Autovacuum would analyze it too, but only at its next round,
        after the following jobs ran with bad plans. So a job that changed more than
        autovacuum's own share of the table (10 %, plus a floor so that small tables and small
        jobs never pay for it) analyzes the table right away; smaller changes add up to
        autovacuum's threshold in its usual time. Append promotion never reads storage, so
        append tables are left to autovacuum.

        What the merge join needs is the row count and the statistics of its key columns, from
        a small sample (keys are unique): that costs ~0.01 s instead of 0.16 s for all columns
        of 1M rows. ANALYZE with a column list does not reset the table's count of changes
        since its last full ANALYZE, so autovacuum still gathers the full statistics that other
        queries of the table deserve, in the background.

        After the promotion committed: a failure here (e.g. another ANALYZE holding the lock)
        must not fail a job whose rows are already in storage.
        """
        name = f"{STORAGE_SCHEMA}.{storage.name}"
        try:
            with self.engine.begin() as conn:
                estimated = conn.execute(
                    sa.text("SELECT reltuples FROM pg_class WHERE oid = CAST(:name AS regclass)"),
                    {"name": name},
                ).scalar_one()
                # reltuples is -1 for a table never analyzed (or just truncated by a rewrite).
                if changed_rows <= ANALYZE_SHARE * max(estimated, 0) + ANALYZE_MIN_ROWS:
                    return
                keys = ", ".join(_quote(conn, c) for c in [TENANT_COLUMN, *contract.primary_key])
                conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))
                conn.execute(sa.text(f"SET LOCAL default_statistics_target = {ANALYZE_TARGET}"))
                conn.execute(
                    sa.text(f"ANALYZE {STORAGE_SCHEMA}.{_quote(conn, storage.name)} ({keys})")
                )
        except sa.exc.DBAPIError as exc:
            _log.warning("ANALYZE %s skipped: %s", name, exc.orig or exc)

    def _delete_previous_load(
        self, conn: Connection, contract: DatasetContract, storage: sa.Table, job_id: str
    ) -> int:
        previous = conn.execute(
            sa.select(self.loads.c.loaded_at)
            .where(self.loads.c.dataset == contract.name, self.loads.c.job_id == job_id)
            .with_for_update()
        ).scalar_one_or_none()
        if previous is None:
            return 0
        return conn.execute(
            storage.delete().where(
                storage.c[JOB_ID_COLUMN] == job_id, storage.c[LOADED_AT_COLUMN] == previous
            )
        ).rowcount

    def _record_load(
        self,
        conn: Connection,
        dataset: str,
        job_id: str,
        tenant_id: str,
        loaded_at: datetime,
        rows: int,
        schema_version: int,
    ) -> None:
        insert = postgresql.insert if self._postgres else sqlite.insert
        values = {
            "dataset": dataset,
            "job_id": job_id,
            "tenant_id": tenant_id,
            "loaded_at": loaded_at,
            "rows": rows,
            "schema_version": schema_version,
        }
        statement = insert(self.loads).values(**values)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["dataset", "job_id"],
                set_={
                    k: statement.excluded[k]
                    for k in ("tenant_id", "loaded_at", "rows", "schema_version")
                },
            )
        )

    def storage_rows(self, contract: DatasetContract, job_id: str | None = None) -> int:
        """Rows in storage (of one job). A scan: for checks and tests, not the hot path."""
        storage = self.ensure_tables(contract).storage
        query = sa.select(sa.func.count()).select_from(storage)
        if job_id is not None:
            query = query.where(storage.c[JOB_ID_COLUMN] == job_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()


def _rowcount(conn: Connection, statement: sa.Executable) -> int:
    return conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount


def _merge_predicates(
    storage: sa.Table, staged: sa.FromClause, contract: DatasetContract, tenant_id: str
) -> tuple[sa.ColumnElement, sa.ColumnElement]:
    """(a stored row has a staged row's key, and one of its values differs) for a merge."""
    key_match = sa.and_(
        storage.c[TENANT_COLUMN] == tenant_id,
        *[storage.c[k] == staged.c[k] for k in contract.primary_key],
    )
    changed = sa.or_(
        *[
            storage.c[c].is_distinct_from(staged.c[c])
            for c in contract.column_names
            if c not in contract.primary_key
        ],
        sa.false(),
    )
    return key_match, changed


@contextlib.contextmanager
def _planner_settings(conn: Connection, settings: dict[str, str]) -> Iterator[None]:
    """Planner settings for the statements in the block, in this transaction only."""
    for name, value in settings.items():
        conn.execute(sa.text(f"SET LOCAL {name} = '{value}'"))
    yield
    for name in settings:
        conn.execute(sa.text(f"SET LOCAL {name} TO DEFAULT"))


def libpq_conninfo(url: sa.URL) -> str:
    """The engine's URL as a libpq keyword string (quoting whatever the password holds)."""
    params = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
        **{k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()},
    }
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v is not None})


def _adbc_ingest(conninfo: str, schema: str, table: str, reader: pa.RecordBatchReader) -> int:
    """Append `reader`'s batches to `schema.table` with ADBC's binary COPY, in one transaction.

    Uses the driver manager's own objects rather than `adbc_driver_postgresql.dbapi`: the DB-API
    layer imports `pyarrow.dataset` and with it pandas (~0.5 s and ~35 MB of resident memory
    per worker process) for nothing this load needs. Imported here, on first use, so that
    processes that never load a large file never pay for the driver.
    """
    import adbc_driver_manager
    import adbc_driver_postgresql

    options = adbc_driver_manager.StatementOptions
    with contextlib.ExitStack() as cleanup:
        database = adbc_driver_postgresql.connect(conninfo)
        cleanup.callback(database.close)
        connection = adbc_driver_manager.AdbcConnection(database)
        cleanup.callback(connection.close)
        connection.set_autocommit(False)
        statement = adbc_driver_manager.AdbcStatement(connection)
        cleanup.callback(statement.close)
        statement.set_options(
            **{
                options.INGEST_TARGET_TABLE.value: table,
                options.INGEST_TARGET_DB_SCHEMA.value: schema,
                options.INGEST_MODE.value: "adbc.ingest.mode.append",
            }
        )
        statement.bind_stream(reader)
        rows = statement.execute_update()
        connection.commit()
    return int(rows)


def _quote(conn: Connection, identifier: str) -> str:
    return conn.dialect.identifier_preparer.quote(identifier)


def _literal(conn: Connection, value: str) -> str:
    """A SQL string literal for DDL, where bound parameters are not allowed."""
    return (
        sa.literal(value, sa.String())
        .compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        .string
    )


def _staging_schema(contract: DatasetContract) -> pa.Schema:
    """What a Postgres staging load sends: the data columns and the row number (the partition
    supplies its job id)."""
    fields = list(contract.arrow_schema)
    fields.append(pa.field(ROW_NUMBER_COLUMN, pa.int64(), nullable=False))
    return pa.schema(fields)


def _with_lineage(
    batches: Iterable[pa.RecordBatch], job_id: str, include_job_id: bool
) -> Iterator[pa.RecordBatch]:
    """Append `_dw_row_number` (1-based, continuing across batches) and, if asked, `_dw_job_id`."""
    next_row = 1
    for batch in batches:
        count = batch.num_rows
        columns = list(batch.columns)
        names = list(batch.schema.names)
        if include_job_id:
            columns.append(pa.repeat(pa.scalar(job_id, pa.string()), count))
            names.append(JOB_ID_COLUMN)
        columns.append(pa.array(np.arange(next_row, next_row + count, dtype=np.int64)))
        names.append(ROW_NUMBER_COLUMN)
        yield pa.RecordBatch.from_arrays(columns, names=names)
        next_row += count
