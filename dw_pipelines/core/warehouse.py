"""The warehouse: per-dataset staging and storage tables, bulk staging loads, atomic promotion.

Layout: schema `dw_staging` and `dw_storage`, one table per dataset named after the dataset (on
SQLite the two schemas are attached database files next to the main one).

* Staging rows carry `_dw_job_id` and `_dw_row_number` (the 1-based data row in the source file,
  so set-based checks such as primary-key duplicates can still name the row). On Postgres staging
  is UNLOGGED: it is scratch that a retry reloads, so it need not survive a server crash.
* Storage rows carry the lineage columns `_dw_job_id`, `_dw_tenant_id` and `_dw_loaded_at`.
  `append` datasets: promotion deletes the job's rows and inserts the staged ones. `merge`
  datasets: promotion upserts on (`_dw_tenant_id`, primary key), so one tenant never overwrites
  another's rows. Either way promotion is a single transaction, and re-running it is idempotent.
* Postgres loads staging with `COPY ... FROM STDIN (FORMAT csv)` fed by Arrow's C++ CSV writer;
  SQLite uses executemany.
"""

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from dw_pipelines.core.contracts import ColumnType, DatasetContract
from dw_pipelines.core.db import create_db_engine
from dw_pipelines.core.errors import ConfigurationError
from dw_pipelines.core.faults import NO_FAULTS, Faults

STAGING_SCHEMA = "dw_staging"
STORAGE_SCHEMA = "dw_storage"
JOB_ID_COLUMN = "_dw_job_id"
ROW_NUMBER_COLUMN = "_dw_row_number"
TENANT_COLUMN = "_dw_tenant_id"
LOADED_AT_COLUMN = "_dw_loaded_at"
STORAGE_LINEAGE_COLUMNS = (JOB_ID_COLUMN, TENANT_COLUMN, LOADED_AT_COLUMN)


class _DecimalAsText(sa.types.TypeDecorator):
    """SQLite has no exact decimal type: keep decimals exact as their text form."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else str(value)

    def process_result_value(self, value, dialect):
        from decimal import Decimal

        return None if value is None else Decimal(value)


def sql_type(column_type: ColumnType, dialect_name: str) -> sa.types.TypeEngine:
    if column_type.name == "decimal":
        if dialect_name == "sqlite":
            return _DecimalAsText()
        return sa.Numeric(column_type.precision, column_type.scale, asdecimal=True)
    return {
        "string": sa.Text(),
        "int64": sa.BigInteger(),
        "float64": sa.Double(),
        "bool": sa.Boolean(create_constraint=False),
        "date": sa.Date(),
        "timestamp": sa.DateTime(timezone=True),
    }[column_type.name]


@dataclass(frozen=True)
class DatasetTables:
    staging: sa.Table
    storage: sa.Table


@dataclass(frozen=True)
class DuplicateKey:
    key: dict[str, object]
    rows: tuple[int, ...]  # 1-based data rows holding the key, first ones first
    occurrences: int


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
    """Staging and storage tables of the datasets, on one engine."""

    def __init__(self, engine: Engine, faults: Faults = NO_FAULTS):
        self.engine = engine
        self.faults = faults
        self.dialect = engine.dialect.name
        self._metadata = sa.MetaData()
        self._tables: dict[str, DatasetTables] = {}
        self._ensured: set[str] = set()

    # ------------------------------------------------------------------------------ tables

    def tables(self, contract: DatasetContract) -> DatasetTables:
        if contract.name not in self._tables:
            self._tables[contract.name] = self._define(contract)
        return self._tables[contract.name]

    def _define(self, contract: DatasetContract) -> DatasetTables:
        def data_columns(primary_key: bool) -> list[sa.Column]:
            return [
                sa.Column(
                    c.name,
                    sql_type(c.type, self.dialect),
                    nullable=c.nullable,
                    primary_key=primary_key and c.name in contract.primary_key,
                )
                for c in contract.columns
            ]

        staging = sa.Table(
            contract.name,
            self._metadata,
            *data_columns(primary_key=False),
            sa.Column(JOB_ID_COLUMN, sa.String(128), nullable=False),
            sa.Column(ROW_NUMBER_COLUMN, sa.BigInteger(), nullable=False),
            sa.Index(f"ix_stg_{contract.name}_job"[:63], JOB_ID_COLUMN),
            schema=STAGING_SCHEMA,
            prefixes=["UNLOGGED"] if self.dialect == "postgresql" else [],
        )
        is_merge = contract.write_mode == "merge"
        storage_columns = data_columns(primary_key=False)
        if is_merge:
            storage_columns.insert(0, sa.Column(TENANT_COLUMN, sa.String(64), nullable=False))
        else:
            storage_columns.append(sa.Column(TENANT_COLUMN, sa.String(64), nullable=False))
        storage = sa.Table(
            contract.name,
            self._metadata,
            *storage_columns,
            sa.Column(JOB_ID_COLUMN, sa.String(128), nullable=False),
            sa.Column(LOADED_AT_COLUMN, sa.DateTime(timezone=True), nullable=False),
            *(
                [
                    sa.PrimaryKeyConstraint(
                        TENANT_COLUMN, *contract.primary_key, name=f"pk_{contract.name}"[:63]
                    )
                ]
                if is_merge
                else []
            ),
            # Serves append's "delete this job's rows" and lineage look-ups.
            sa.Index(f"ix_sto_{contract.name}_job"[:63], JOB_ID_COLUMN),
            schema=STORAGE_SCHEMA,
        )
        return DatasetTables(staging=staging, storage=storage)

    def ensure_tables(self, contract: DatasetContract) -> DatasetTables:
        """Create the dataset's schemas and tables if missing; refuse tables that drifted."""
        tables = self.tables(contract)
        if contract.name in self._ensured:
            return tables
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # Two runs creating the same table at once would collide in the catalog.
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('dw_pipelines.ddl'))"))
                existing = set(sa.inspect(conn).get_schema_names())
                for schema in (STAGING_SCHEMA, STORAGE_SCHEMA):
                    # Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the
                    # database, which the least-privilege dw_worker role does not have.
                    if schema not in existing:
                        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            self._metadata.create_all(
                conn, tables=[tables.staging, tables.storage], checkfirst=True
            )
            inspector = sa.inspect(conn)
            for table in (tables.staging, tables.storage):
                found = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
                expected = {c.name for c in table.columns}
                if found != expected:
                    raise ConfigurationError(
                        f"table {table.schema}.{table.name} does not match dataset contract "
                        f"'{contract.name}': missing {sorted(expected - found)}, "
                        f"extra {sorted(found - expected)}; migrate or rename the table"
                    )
        self._ensured.add(contract.name)
        return tables

    # ----------------------------------------------------------------------------- staging

    def load_staging(
        self, contract: DatasetContract, job_id: str, batches: Iterable[pa.RecordBatch]
    ) -> int:
        """Replace the job's staging rows with `batches` (contract schema) in one transaction.

        An exception raised while iterating `batches` (e.g. a contract violation) rolls the
        whole load back: staging is left as it was.
        """
        tables = self.ensure_tables(contract)
        numbered = _with_lineage(batches, job_id)
        with self.engine.begin() as conn:
            conn.execute(tables.staging.delete().where(tables.staging.c[JOB_ID_COLUMN] == job_id))
            self.faults.hit("staging.copy", conn)
            if self.dialect == "postgresql":
                return self._copy_into(conn, tables.staging, numbered)
            return self._executemany_into(conn, tables.staging, numbered)

    def _copy_into(
        self, conn: Connection, table: sa.Table, batches: Iterator[pa.RecordBatch]
    ) -> int:
        quote = conn.dialect.identifier_preparer.quote
        columns = ", ".join(quote(c.name) for c in table.columns)
        statement = (
            f"COPY {quote(table.schema)}.{quote(table.name)} ({columns}) FROM STDIN (FORMAT csv)"
        )
        rows = 0
        options = pacsv.WriteOptions(include_header=False, quoting_style="needed")
        driver_connection = conn.connection.driver_connection
        with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
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

    def find_duplicate_key(self, contract: DatasetContract, job_id: str) -> DuplicateKey | None:
        """The first primary key that occurs more than once among the job's staged rows."""
        if not contract.primary_key:
            return None
        staging = self.ensure_tables(contract).staging
        key_columns = [staging.c[k] for k in contract.primary_key]
        first_row = sa.func.min(staging.c[ROW_NUMBER_COLUMN])
        with self.engine.connect() as conn:
            duplicate = (
                conn.execute(
                    sa.select(
                        *key_columns, sa.func.count().label("n"), first_row.label("first_row")
                    )
                    .where(staging.c[JOB_ID_COLUMN] == job_id)
                    .group_by(*key_columns)
                    .having(sa.func.count() > 1)
                    .order_by(first_row)
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if duplicate is None:
                return None
            key = {k: duplicate[k] for k in contract.primary_key}
            rows = (
                conn.execute(
                    sa.select(staging.c[ROW_NUMBER_COLUMN])
                    .where(
                        staging.c[JOB_ID_COLUMN] == job_id,
                        *[staging.c[k] == v for k, v in key.items()],
                    )
                    .order_by(staging.c[ROW_NUMBER_COLUMN])
                    .limit(2)
                )
                .scalars()
                .all()
            )
        return DuplicateKey(key=key, rows=tuple(rows), occurrences=duplicate["n"])

    def discard_staging(self, contract: DatasetContract, job_id: str) -> None:
        staging = self.ensure_tables(contract).staging
        with self.engine.begin() as conn:
            conn.execute(staging.delete().where(staging.c[JOB_ID_COLUMN] == job_id))

    # ----------------------------------------------------------------------------- storage

    def promote(
        self, contract: DatasetContract, job_id: str, tenant_id: str, loaded_at: datetime
    ) -> int:
        """Move the job's staged rows into storage in one transaction; returns rows written."""
        tables = self.ensure_tables(contract)
        staging, storage = tables.staging, tables.storage
        data = contract.column_names
        source = sa.select(
            *[staging.c[c] for c in data],
            staging.c[JOB_ID_COLUMN],
            sa.literal(tenant_id, sa.String(64)).label(TENANT_COLUMN),
            sa.literal(loaded_at, sa.DateTime(timezone=True)).label(LOADED_AT_COLUMN),
        ).where(staging.c[JOB_ID_COLUMN] == job_id)
        target_columns = [*data, JOB_ID_COLUMN, TENANT_COLUMN, LOADED_AT_COLUMN]
        with self.engine.begin() as conn:
            if contract.write_mode == "append":
                conn.execute(storage.delete().where(storage.c[JOB_ID_COLUMN] == job_id))
                statement = storage.insert().from_select(target_columns, source)
            else:
                insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
                upsert = insert(storage).from_select(target_columns, source)
                key = {TENANT_COLUMN, *contract.primary_key}
                statement = upsert.on_conflict_do_update(
                    index_elements=[TENANT_COLUMN, *contract.primary_key],
                    set_={c: upsert.excluded[c] for c in target_columns if c not in key},
                )
            written = conn.execute(statement).rowcount
            self.faults.hit("promote.before_commit", conn)
            return written

    def storage_rows(self, contract: DatasetContract, job_id: str | None = None) -> int:
        storage = self.ensure_tables(contract).storage
        query = sa.select(sa.func.count()).select_from(storage)
        if job_id is not None:
            query = query.where(storage.c[JOB_ID_COLUMN] == job_id)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()


def _with_lineage(batches: Iterable[pa.RecordBatch], job_id: str) -> Iterator[pa.RecordBatch]:
    """Append `_dw_job_id` and `_dw_row_number` (1-based, continuing across batches)."""
    next_row = 1
    for batch in batches:
        count = batch.num_rows
        yield pa.RecordBatch.from_arrays(
            [
                *batch.columns,
                pa.repeat(pa.scalar(job_id, pa.string()), count),
                pa.array(np.arange(next_row, next_row + count, dtype=np.int64)),
            ],
            names=[*batch.schema.names, JOB_ID_COLUMN, ROW_NUMBER_COLUMN],
        )
        next_row += count
