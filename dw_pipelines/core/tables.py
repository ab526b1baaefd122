"""Table definitions of the warehouse: schema and lineage-column names, contract types as SQL
types, and each dataset's staging and storage tables as its contract defines them.

Shared by `core.warehouse` (loads and promotion) and `core.evolution` (storage following a changed
contract), so that a table created fresh and a table migrated to the same contract are the same.
"""

import hashlib
from dataclasses import dataclass

import sqlalchemy as sa

from dw_pipelines.core.contracts import ColumnType, DatasetContract

STAGING_SCHEMA = "dw_staging"
STORAGE_SCHEMA = "dw_storage"
JOB_ID_COLUMN = "_dw_job_id"
ROW_NUMBER_COLUMN = "_dw_row_number"
TENANT_COLUMN = "_dw_tenant_id"
LOADED_AT_COLUMN = "_dw_loaded_at"
LOADS_TABLE = "_dw_loads"
# Merge tables (PostgreSQL) keep a tenth of each page free, so that a merge's update of a row
# can write the new version on the row's own page without a new key entry (a HOT update).
MERGE_FILLFACTOR = 90


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


def staging_partition(dataset: str, job_id: str) -> str:
    """Name of a job's staging partition: the dataset plus a digest of the job id (≤ 63 chars)."""
    return f"{dataset[:44]}__{_digest(job_id)}"


# Partitions of a partitioned append storage table (see core/warehouse/promote_attach.py): one
# per month of `_dw_loaded_at` ("202612"), each listing the jobs attached whole and a DEFAULT
# holding the month's smaller loads, plus a DEFAULT of the table for rows of a month whose
# partition could not be created. The names share the schema with every dataset's storage table,
# so a dataset name too long to keep whole is cut and given a digest of itself.


def storage_default_partition(dataset: str) -> str:
    return f"{_prefix(dataset, 40)}__default"


def storage_month_partition(dataset: str, month: str) -> str:
    return f"{_prefix(dataset, 40)}__p{month}"


def storage_small_loads_partition(dataset: str, month: str) -> str:
    return f"{_prefix(dataset, 40)}__p{month}_small"


def storage_job_partition(dataset: str, month: str, job_id: str) -> str:
    return f"{_prefix(dataset, 36)}__p{month}_j{_digest(job_id)}"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _prefix(dataset: str, width: int) -> str:
    if len(dataset) <= width:
        return dataset
    return f"{dataset[: width - 9]}_{_digest(dataset)[:8]}"


def define_tables(metadata: sa.MetaData, contract: DatasetContract, dialect: str) -> DatasetTables:
    """The staging and storage tables of a dataset as its contract defines them (see warehouse.py
    for what each holds)."""
    postgres = dialect == "postgresql"

    def data_columns() -> list[sa.Column]:
        return [
            sa.Column(c.name, sql_type(c.type, dialect), nullable=c.nullable)
            for c in contract.columns
        ]

    staging_extras: list = []
    staging_options: dict = {}
    if postgres:
        staging_options["postgresql_partition_by"] = f"LIST ({JOB_ID_COLUMN})"
    else:
        staging_extras.append(sa.Index(f"ix_stg_{contract.name}_job"[:63], JOB_ID_COLUMN))
    staging = sa.Table(
        contract.name,
        metadata,
        *data_columns(),
        sa.Column(JOB_ID_COLUMN, sa.String(128), nullable=False),
        sa.Column(ROW_NUMBER_COLUMN, sa.BigInteger(), nullable=False),
        *staging_extras,
        schema=STAGING_SCHEMA,
        **staging_options,
    )
    is_merge = contract.write_mode == "merge"
    storage_columns = data_columns()
    tenant = sa.Column(TENANT_COLUMN, sa.String(64), nullable=False)
    if is_merge:
        storage_columns.insert(0, tenant)
    else:
        storage_columns.append(tenant)
    if is_merge:
        key = sa.PrimaryKeyConstraint(
            TENANT_COLUMN, *contract.primary_key, name=f"pk_{contract.name}"[:63]
        )
        storage_extras: list = [key]
    elif postgres:
        # A job's rows share one _dw_loaded_at and land together: a BRIN index finds them
        # for a re-run's delete at a fraction of a B-tree's upkeep on every insert.
        storage_extras = [
            sa.Index(
                f"ix_sto_{contract.name}_loaded_at"[:63],
                LOADED_AT_COLUMN,
                postgresql_using="brin",
            )
        ]
    else:
        storage_extras = [sa.Index(f"ix_sto_{contract.name}_job"[:63], JOB_ID_COLUMN)]
    storage_options: dict = {}
    if postgres and not is_merge:
        # Partitioned by load month, so that a large job's validated staging table can become
        # a partition instead of being copied (attach promotion). Readers see one table.
        storage_options["postgresql_partition_by"] = f"RANGE ({LOADED_AT_COLUMN})"
    storage = sa.Table(
        contract.name,
        metadata,
        *storage_columns,
        sa.Column(JOB_ID_COLUMN, sa.String(128), nullable=False),
        sa.Column(LOADED_AT_COLUMN, sa.DateTime(timezone=True), nullable=False),
        *storage_extras,
        schema=STORAGE_SCHEMA,
        **storage_options,
    )
    return DatasetTables(staging=staging, storage=storage)
