"""Staging loads: a job's validated batches into its own staging partition (PostgreSQL: binary
COPY through ADBC or text COPY; SQLite: executemany), and the partition's life cycle."""

import contextlib
import io
from collections.abc import Iterable, Iterator

import numpy as np
import psycopg.conninfo
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.prefetch import prefetched
from dw_pipelines.core.tables import (
    JOB_ID_COLUMN,
    ROW_NUMBER_COLUMN,
    STAGING_SCHEMA,
    staging_partition,
)
from dw_pipelines.core.warehouse.promote_merge import ANALYZE_TARGET
from dw_pipelines.core.warehouse.sql import _literal, _quote

LOAD_METHODS = ("auto", "adbc", "copy-csv")
# Below this size a new ADBC connection costs more than binary COPY saves (measured: ~30 ms
# per run for a 10-row file).
SMALL_SOURCE_BYTES = 1 << 20
# Below this size the staging partition is created logged: an UNLOGGED table spares the WAL of
# its rows, but CREATE writes and fsyncs an init fork for it, its TOAST table and that table's
# index at once (measured: 5-6 ms against 3 ms for a logged one), more than the WAL of a few
# kilobytes of rows costs.
LOGGED_SMALL_SOURCE_BYTES = 64 << 10
# Batches read and validated ahead of ADBC's sender, on a thread of their own (see
# core/prefetch.py): each holds up to DW_READ_BATCH_ROWS rows. One is enough to keep both busy
# (measured: 2 was no faster), and each more costs a batch of memory.
STAGING_PREFETCH_BATCHES = 1


class StagingLoads:
    """The staging half of `Warehouse` (a mixin: it uses the warehouse's engine and tables)."""

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
        logged = self.stage_logged(contract, size_hint) or (
            size_hint is not None and size_hint < LOGGED_SMALL_SOURCE_BYTES
        )
        self._create_partition(tables.staging, partition, job_id, logged)
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

    def _create_partition(
        self, parent: sa.Table, partition: str, job_id: str, logged: bool = False
    ) -> None:
        """The job's staging partition: UNLOGGED scratch (no WAL; a crash empties it, and a
        retry stages again), or logged when promotion may attach it to storage or the file is
        small (LOGGED_SMALL_SOURCE_BYTES)."""
        with self.engine.begin() as conn:
            name = f"{STAGING_SCHEMA}.{_quote(conn, partition)}"
            value = _literal(conn, job_id)
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
            # Loads send the data columns only; the partition fills in its job id (a default
            # declared with the partition: one statement, not a CREATE and an ALTER).
            conn.execute(
                sa.text(
                    f"CREATE {'' if logged else 'UNLOGGED '}TABLE {name} PARTITION OF "
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
        numbers = np.arange(next_row, next_row + count, dtype=np.int64)
        # Wrapped, not converted: pa.array(ndarray) imports numpy.ma on its first call (0.16-0.23
        # s of every run process, measured), for a column that needs no conversion at all.
        columns.append(pa.Array.from_buffers(pa.int64(), count, [None, pa.py_buffer(numbers)]))
        names.append(ROW_NUMBER_COLUMN)
        yield pa.RecordBatch.from_arrays(columns, names=names)
        next_row += count
