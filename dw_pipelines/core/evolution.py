"""Contract evolution: a dataset's storage follows its changed contract, safely and visibly.

The contract is the single truth; the warehouse's catalog says what storage is today. Comparing
the two gives a *plan*: a list of changes, each safe or not, and the DDL that makes storage match
the contract again.

* Safe changes apply themselves at the next job of the dataset, before it stages anything: a new
  nullable column (stored rows get NULL, or the column's `default:`), a new non-nullable column
  with a `default:`, a widening (`int64` to `float64` or a decimal with room for 19 integer
  digits, a decimal with no fewer integer digits and no fewer decimal places, `date` to
  `timestamp` at midnight UTC), a column made nullable, and description or owner changes (a new
  version, no DDL).
* Anything that can lose data or break readers is planned, never applied on its own: dropping or
  renaming a column, another type change, making a column non-nullable, a new primary key or
  write mode, a new non-nullable column without a default. Jobs of the dataset then fail at once
  (`SchemaChangeRequired`, naming the changes and the command) until an operator runs
  `dw-pipelines datasets migrate DATASET --allow-destructive`. A rename is declared with
  `renamed_from:` so that its data is kept.

Every change that reaches the warehouse is one row of `dw_storage._dw_schema_versions`: the
version number, the contract's hash and schema, the changes, the DDL, who applied it and when.
`_dw_loads.schema_version` says which version each job loaded with.

A migration is one transaction holding the warehouse's DDL lock (an advisory lock on
PostgreSQL; SQLite's BEGIN IMMEDIATE), and it reads the catalog again once it holds the lock: two
jobs that both find the change needed migrate once, and a crash at any point leaves the old
schema (DDL is transactional on both databases). Staging follows in the same transaction: its
per-job partitions are created from the current contract, and existing ones are altered with it.

PostgreSQL changes tables in place with ALTER TABLE, so grants, comments and dependent objects
stay. SQLite cannot change a column's type, nullability or a table's key in place; there the table
is rebuilt (created anew, rows copied with casts, renamed) in the same transaction.
"""

import datetime as dt
import decimal
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dw_pipelines.core.contracts import ColumnSpec, ColumnType, DatasetContract, decimal_fits
from dw_pipelines.core.db import utcnow
from dw_pipelines.core.errors import ConfigurationError, SchemaChangeRequired
from dw_pipelines.core.faults import NO_FAULTS, Faults
from dw_pipelines.core.tables import (
    JOB_ID_COLUMN,
    LOADED_AT_COLUMN,
    MERGE_FILLFACTOR,
    ROW_NUMBER_COLUMN,
    STAGING_SCHEMA,
    STORAGE_SCHEMA,
    TENANT_COLUMN,
    DatasetTables,
    sql_type,
    storage_default_partition,
)

VERSIONS_TABLE = "_dw_schema_versions"
# Columns `_dw_loads` gained after its first release: older warehouses get them (NULL for the
# loads before) the first time a dataset is ensured.
LOADS_COLUMNS_ADDED = ("schema_version", "enqueued_at")
LINEAGE_COLUMNS = frozenset({JOB_ID_COLUMN, ROW_NUMBER_COLUMN, TENANT_COLUMN, LOADED_AT_COLUMN})
# One lock for all DDL of the warehouse: creating and migrating tables is rare and quick to
# queue, and two runs creating tables at once would otherwise collide in the catalog.
DDL_LOCK = "dw_pipelines.ddl"
# int64 needs 19 integer digits: a decimal with fewer cannot hold every stored value.
INT64_DIGITS = 19
REBUILD_SUFFIX = "__dw_rebuild"
INSUFFICIENT_PRIVILEGE = "42501"
_NUMERIC = re.compile(r"^numeric\((\d+),(\d+)\)$")
_POSTGRES_TYPES = {
    "text": "string",
    "bigint": "int64",
    "double precision": "float64",
    "boolean": "bool",
    "date": "date",
    "timestamp with time zone": "timestamp",
}
_SQLITE_TYPES = {
    "TEXT": "string",
    "BIGINT": "int64",
    "DOUBLE": "float64",
    "DOUBLE PRECISION": "float64",
    "FLOAT": "float64",
    "REAL": "float64",
    "BOOLEAN": "bool",
    "DATE": "date",
    "DATETIME": "timestamp",
}


def versions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        VERSIONS_TABLE,
        metadata,
        sa.Column("dataset", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("contract_hash", sa.String(64), nullable=False),
        sa.Column("schema", sa.Text(), nullable=False),  # JSON: schema_document()
        sa.Column("changes", sa.Text(), nullable=False),  # JSON: [Change.to_dict()]
        sa.Column("ddl", sa.Text(), nullable=False),  # the statements applied, one per line
        sa.Column("destructive", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("applied_by", sa.String(128), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        schema=STORAGE_SCHEMA,
    )


# ----------------------------------------------------------------------------- what storage is


@dataclass(frozen=True)
class StoredColumn:
    name: str
    # The contract type (`int64`, `decimal(12,2)`), or the SQL type as the catalog shows it when
    # it is none of them (changed by hand).
    type: str
    nullable: bool


@dataclass(frozen=True)
class TableShape:
    """A table's data columns (lineage columns aside) and, for storage, its primary key."""

    columns: tuple[StoredColumn, ...]
    primary_key: tuple[str, ...] = ()  # data columns of the key, without the tenant
    key_name: str | None = None  # the key constraint's name in the catalog
    partitioned: bool = False  # PostgreSQL append storage created by this version on

    def column(self, name: str) -> StoredColumn | None:
        return next((c for c in self.columns if c.name == name), None)

    @property
    def write_mode(self) -> str:
        return "merge" if self.key_name else "append"


def contract_shape(contract: DatasetContract) -> TableShape:
    return TableShape(
        columns=tuple(StoredColumn(c.name, str(c.type), c.nullable) for c in contract.columns),
        primary_key=contract.primary_key if contract.write_mode == "merge" else (),
    )


def _default_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value).lower() if isinstance(value, bool) else str(value)


def schema_document(contract: DatasetContract) -> dict[str, Any]:
    """What a schema version records of a contract: everything that reaches the warehouse (not
    the file's own names or CSV options, which only the readers use)."""
    return {
        "write_mode": contract.write_mode,
        "primary_key": list(contract.primary_key),
        "columns": [
            {
                "name": c.name,
                "type": str(c.type),
                "nullable": c.nullable,
                "default": _default_text(c.default),
                "description": c.description,
            }
            for c in contract.columns
        ],
        "description": contract.description,
        "owner": contract.owner,
    }


def contract_hash(document: dict[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RecordedVersion:
    version: int
    contract_hash: str
    schema: dict[str, Any]


@dataclass(frozen=True)
class CatalogState:
    """What the warehouse holds for one dataset."""

    storage: TableShape | None  # None: no storage table yet
    staging: TableShape | None
    latest: RecordedVersion | None  # None: no version recorded (or no versions table)
    bookkeeping_ready: bool  # the loads and versions tables exist, with every column we use


# ---------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Change:
    """One difference between storage and the contract.

    kind: create_table, record_existing, add_column, drop_column, rename_column, change_type,
        drop_not_null, set_not_null, change_primary_key, change_write_mode, change_metadata.
    """

    kind: str
    column: str | None
    before: str | None
    after: str | None
    safe: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "column": self.column,
            "from": self.before,
            "to": self.after,
            "safe": self.safe,
            "reason": self.reason,
        }

    def describe(self) -> str:
        what = self.kind.replace("_", " ")
        if self.column:
            what += f" {self.column}"
        if self.before is not None and self.after is not None:
            what += f" from {self.before} to {self.after}"
        elif self.after is not None:
            what += f" ({self.after})"
        return f"{what} ({self.reason})"


@dataclass(frozen=True)
class Plan:
    dataset: str
    current_version: int | None
    changes: tuple[Change, ...]
    ddl: tuple[str, ...]
    contract_hash: str
    document: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def up_to_date(self) -> bool:
        return not self.changes and not self.ddl

    @property
    def safe(self) -> bool:
        return all(c.safe for c in self.changes)

    @property
    def records_version(self) -> bool:
        return bool(self.changes)

    @property
    def status(self) -> str:
        if self.up_to_date:
            return "up_to_date"
        if any(c.kind == "create_table" for c in self.changes):
            return "new"
        return "safe" if self.safe else "unsafe"

    @property
    def next_version(self) -> int | None:
        if not self.records_version:
            return None
        return (self.current_version or 0) + 1

    @property
    def command(self) -> str | None:
        """What an operator runs to apply the plan (None where jobs apply it themselves)."""
        if self.safe:
            return None
        return f"dw-pipelines datasets migrate {self.dataset} --allow-destructive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "status": self.status,
            "current_version": self.current_version,
            "next_version": self.next_version,
            "changes": [c.to_dict() for c in self.changes],
            "ddl": list(self.ddl),
            "command": self.command,
        }

    def refusal(self) -> SchemaChangeRequired:
        unsafe = "; ".join(c.describe() for c in self.changes if not c.safe)
        return SchemaChangeRequired(
            self.dataset,
            self,
            f"dataset '{self.dataset}': its contract needs storage changes that are never "
            f"applied automatically: {unsafe}. Review them with `dw-pipelines datasets plan "
            f"{self.dataset}` and apply them with `{self.command}`; then retry the job",
        )


def classify_type_change(before: str, after: ColumnType) -> tuple[bool, str]:
    """(safe, why) for storing a column of type `before` as `after` from now on."""
    try:
        old = ColumnType.parse(before)
    except ValueError:
        return False, f"storage has SQL type {before}, which no contract type maps to"
    if old.name == "int64" and after.name == "float64":
        return True, "widening; integers beyond 2^53 are stored to double precision"
    if old.name == "int64" and after.name == "decimal":
        digits = (after.precision or 0) - (after.scale or 0)
        if digits >= INT64_DIGITS:
            return True, "widening"
        return False, (
            f"narrowing: {after} holds {digits} integer digits, int64 values need {INT64_DIGITS}"
        )
    if old.name == "decimal" and after.name == "decimal":
        old_digits = (old.precision or 0) - (old.scale or 0)
        new_digits = (after.precision or 0) - (after.scale or 0)
        if (after.scale or 0) >= (old.scale or 0) and new_digits >= old_digits:
            return True, "widening"
        return False, (
            f"narrowing: {old} to {after} keeps {new_digits} of {old_digits} integer digits and "
            f"{after.scale} of {old.scale} decimal places"
        )
    if old.name == "date" and after.name == "timestamp":
        return True, "widening; stored dates become midnight UTC"
    return False, (
        "not a widening: the migration fails if a stored value does not convert or would change"
    )


def plan_changes(
    current: TableShape, latest: RecordedVersion | None, contract: DatasetContract
) -> list[Change]:
    """The changes that take storage from `current` to `contract`, in the order they are listed."""
    changes: list[Change] = []
    present = {c.name: c for c in current.columns}
    wanted_names = set(contract.column_names)
    renames = _renames(current, contract)
    matched: dict[str, StoredColumn] = {}
    for spec in contract.columns:
        if spec.name in present:
            matched[spec.name] = present[spec.name]
        elif spec.name in renames:
            old = renames[spec.name]
            matched[spec.name] = present[old]
            changes.append(
                Change(
                    "rename_column",
                    spec.name,
                    old,
                    spec.name,
                    False,
                    "declared by renamed_from; readers of the old name break",
                )
            )
    for spec in contract.columns:
        stored = matched.get(spec.name)
        if stored is None:
            changes.append(_addition(spec))
            continue
        if stored.type != str(spec.type):
            safe, why = classify_type_change(stored.type, spec.type)
            changes.append(Change("change_type", spec.name, stored.type, str(spec.type), safe, why))
        if stored.nullable and not spec.nullable:
            changes.append(
                Change(
                    "set_not_null",
                    spec.name,
                    "nullable",
                    "not null",
                    False,
                    "fails if a stored row holds NULL",
                )
            )
        elif not stored.nullable and spec.nullable:
            changes.append(
                Change("drop_not_null", spec.name, "not null", "nullable", True, "relaxing")
            )
    kept = {c.name for c in matched.values()}
    for stored in current.columns:
        if stored.name not in kept and stored.name not in wanted_names:
            changes.append(
                Change(
                    "drop_column",
                    stored.name,
                    stored.type,
                    None,
                    False,
                    "its stored values are deleted; declare renamed_from on the new column if "
                    "this is a rename",
                )
            )
    old_to_new = {old: new for new, old in renames.items()}
    stored_key = tuple(old_to_new.get(k, k) for k in current.primary_key)
    if current.write_mode != contract.write_mode:
        key = ", ".join(contract.primary_key)
        changes.append(
            Change(
                "change_write_mode",
                None,
                current.write_mode,
                contract.write_mode + (f" (primary key {key})" if key else ""),
                False,
                "fails if stored rows repeat a key"
                if contract.write_mode == "merge"
                else "stored rows are no longer unique by key",
            )
        )
    elif contract.write_mode == "merge" and stored_key != contract.primary_key:
        changes.append(
            Change(
                "change_primary_key",
                None,
                ", ".join(stored_key),
                ", ".join(contract.primary_key),
                False,
                "fails if stored rows repeat the new key; merges match rows by it",
            )
        )
    if latest is not None:
        changes.extend(_metadata_changes(latest.schema, contract))
    elif not changes:
        changes.append(
            Change(
                "record_existing",
                None,
                None,
                None,
                True,
                "the table predates schema versions and matches the contract",
            )
        )
    return changes


def _renames(current: TableShape, contract: DatasetContract) -> dict[str, str]:
    """New warehouse name -> stored name, for declared renames that storage has not seen yet."""
    present = {c.name for c in current.columns}
    return {
        c.name: c.renamed_from
        for c in contract.columns
        if c.renamed_from and c.name not in present and c.renamed_from in present
    }


def _addition(spec: ColumnSpec) -> Change:
    default = _default_text(spec.default)
    if spec.default is not None:
        return Change(
            "add_column",
            spec.name,
            None,
            str(spec.type),
            True,
            f"stored rows get the default {default}",
        )
    if spec.nullable:
        return Change("add_column", spec.name, None, str(spec.type), True, "stored rows get NULL")
    return Change(
        "add_column",
        spec.name,
        None,
        str(spec.type),
        False,
        "nullable: false without a default: stored rows have no value; declare `default:` or "
        "make it nullable",
    )


def _metadata_changes(recorded: dict[str, Any], contract: DatasetContract) -> list[Change]:
    document = schema_document(contract)
    changed = [k for k in ("description", "owner") if recorded.get(k) != document[k]]
    old_columns = {c["name"]: c for c in recorded.get("columns", [])}
    changed += [
        f"columns.{c['name']}.{k}"
        for c in document["columns"]
        for k in ("description", "default")
        if c["name"] in old_columns and old_columns[c["name"]].get(k) != c[k]
    ]
    if not changed:
        return []
    return [
        Change(
            "change_metadata",
            None,
            None,
            None,
            True,
            f"metadata only ({', '.join(changed)}); no DDL",
        )
    ]


# ----------------------------------------------------------------------------------- the DDL


class _Ddl:
    """The statements of a plan for one dialect."""

    def __init__(self, dialect: sa.engine.Dialect):
        self.dialect = dialect
        self.postgres = dialect.name == "postgresql"

    def quote(self, name: str) -> str:
        return self.dialect.identifier_preparer.quote(name)

    def table(self, schema: str, name: str) -> str:
        return f"{schema}.{self.quote(name)}"

    def type_sql(self, column_type: ColumnType) -> str:
        return sql_type(column_type, self.dialect.name).compile(dialect=self.dialect)

    def literal(self, value: Any, column_type: ColumnType) -> str:
        if isinstance(value, bool):
            if self.postgres:
                return "TRUE" if value else "FALSE"
            return "1" if value else "0"
        if isinstance(value, (int, float, decimal.Decimal)) and column_type.name != "decimal":
            return repr(value) if isinstance(value, float) else str(value)
        if not self.postgres:
            # SQLite keeps what SQLAlchemy's types write: their own text form of dates and times.
            processor = sql_type(column_type, "sqlite").bind_processor(self.dialect)
            value = processor(value) if processor else value
        text = value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value)
        return "'" + text.replace("'", "''") + "'"

    def column_definition(self, spec: ColumnSpec) -> str:
        parts = [self.quote(spec.name), self.type_sql(spec.type)]
        if spec.default is not None:
            parts.append(f"DEFAULT {self.literal(spec.default, spec.type)}")
        if not spec.nullable:
            parts.append("NOT NULL")
        return " ".join(parts)

    def create(self, table: sa.Table) -> list[str]:
        statements = [str(sa.schema.CreateTable(table).compile(dialect=self.dialect)).strip()]
        statements += [
            str(sa.schema.CreateIndex(index).compile(dialect=self.dialect)).strip()
            for index in sorted(table.indexes, key=lambda i: i.name or "")
        ]
        return statements

    def alter(
        self,
        schema: str,
        name: str,
        changes: list[Change],
        contract: DatasetContract,
        key_name: str | None,
        with_key: bool,
    ) -> list[str]:
        """ALTER TABLE statements (PostgreSQL; SQLite for additions and renames only)."""
        table = self.table(schema, name)
        statements = [
            f"ALTER TABLE {table} RENAME COLUMN {self.quote(c.before or '')} TO "
            f"{self.quote(c.after or '')}"
            for c in changes
            if c.kind == "rename_column"
        ]
        actions: list[str] = []
        key_changes = with_key and any(
            c.kind in ("change_primary_key", "change_write_mode") for c in changes
        )
        if key_changes and key_name:
            actions.append(f"DROP CONSTRAINT {self.quote(key_name)}")
        for change in changes:
            if change.column is None:
                continue  # key and write mode: above and below
            column = self.quote(change.column)
            if change.kind == "change_type":
                new = contract.column(change.column or "").type
                target = self.type_sql(new)
                using = f"{column}::{target}"
                if change.before == "date" and new.name == "timestamp":
                    using = f"({column}::timestamp AT TIME ZONE 'UTC')"
                actions.append(f"ALTER COLUMN {column} TYPE {target} USING {using}")
            elif change.kind == "drop_not_null":
                actions.append(f"ALTER COLUMN {column} DROP NOT NULL")
            elif change.kind == "set_not_null":
                actions.append(f"ALTER COLUMN {column} SET NOT NULL")
        for change in changes:
            if change.kind == "add_column":
                spec = contract.column(change.column or "")
                actions.append(f"ADD COLUMN {self.column_definition(spec)}")
        for change in changes:
            if change.kind == "drop_column":
                actions.append(f"DROP COLUMN {self.quote(change.column or '')}")
        brin = self.quote(f"ix_sto_{name}_loaded_at"[:63])
        if key_changes and contract.write_mode == "merge":
            key = ", ".join(self.quote(k) for k in [TENANT_COLUMN, *contract.primary_key])
            actions.append(f"ADD CONSTRAINT {self.quote(f'pk_{name}'[:63])} PRIMARY KEY ({key})")
        if self.postgres and actions:
            statements.append(f"ALTER TABLE {table}\n  " + ",\n  ".join(actions))
        else:  # SQLite: one action per statement
            statements += [f"ALTER TABLE {table} {action}" for action in actions]
        if key_changes and self.postgres:
            if contract.write_mode == "merge":
                statements.insert(0, f"DROP INDEX IF EXISTS {schema}.{brin}")
            else:
                statements.append(
                    f"CREATE INDEX IF NOT EXISTS {brin} ON {table} USING brin "
                    f"({self.quote(LOADED_AT_COLUMN)})"
                )
        return statements

    def rebuild(
        self, wanted: sa.Table, current: TableShape, contract: DatasetContract, lineage: list[str]
    ) -> list[str]:
        """SQLite: the table created anew from the contract, its rows copied over with casts."""
        schema, name = wanted.schema or "", wanted.name
        scratch = wanted.to_metadata(sa.MetaData(), name=name + REBUILD_SUFFIX)
        for index in list(scratch.indexes):  # index names are unique per database: add later
            scratch.indexes.discard(index)
        renames = _renames(current, contract)
        targets: list[str] = []
        values: list[str] = []
        for spec in contract.columns:
            old = spec.name if current.column(spec.name) else renames.get(spec.name)
            stored = current.column(old) if old else None
            targets.append(self.quote(spec.name))
            if stored is None:
                values.append(
                    "NULL" if spec.default is None else self.literal(spec.default, spec.type)
                )
            else:
                values.append(self._sqlite_cast(self.quote(stored.name), stored.type, spec.type))
        targets += [self.quote(c) for c in lineage]
        values += [self.quote(c) for c in lineage]
        statements = [str(sa.schema.CreateTable(scratch).compile(dialect=self.dialect)).strip()]
        statements.append(
            f"INSERT INTO {self.table(schema, scratch.name)} ({', '.join(targets)}) "
            f"SELECT {', '.join(values)} FROM {self.table(schema, name)}"
        )
        statements.append(f"DROP TABLE {self.table(schema, name)}")
        statements.append(
            f"ALTER TABLE {self.table(schema, scratch.name)} RENAME TO {self.quote(name)}"
        )
        statements += [
            str(sa.schema.CreateIndex(index).compile(dialect=self.dialect)).strip()
            for index in sorted(wanted.indexes, key=lambda i: i.name or "")
        ]
        return statements

    def changed_values(self, table: str, stored: StoredColumn, after: ColumnType) -> str:
        """A query of how many stored values of a column a type change would alter (and one of
        them): a narrowing that rounds, truncates or drops leading zeros is refused, not done."""
        column = self.quote(stored.name)
        if self.postgres:
            try:
                old_sql = self.type_sql(ColumnType.parse(stored.type))
            except ValueError:
                old_sql = stored.type  # a type set by hand: the catalog's own spelling
            converted = f"CAST(CAST({column} AS {self.type_sql(after)}) AS {old_sql})"
        else:
            converted = self._sqlite_cast(column, stored.type, after)
        return (
            f"SELECT count(*), min(CAST({column} AS TEXT)) FROM {table} "
            f"WHERE {column} IS NOT NULL AND {converted} <> {column}"
        )

    @staticmethod
    def _sqlite_cast(column: str, before: str, after: ColumnType) -> str:
        if before == str(after):
            return column
        if before == "date" and after.name == "timestamp":
            # SQLAlchemy's SQLite text forms: '2026-01-31' and '2026-01-31 00:00:00.000000'.
            return f"CASE WHEN {column} IS NULL THEN NULL ELSE {column} || ' 00:00:00.000000' END"
        if after.name == "decimal" and before.startswith("decimal"):
            # Kept as its exact text: a value that fits the new type needs no conversion, and
            # `_refuse_lossy_conversions` checks that every stored one fits.
            return column
        if after.name == "decimal" and before in ("int64", "float64"):
            return f"CAST({column} AS TEXT)"  # SQLite keeps decimals as their exact text
        casts = {"int64": "INTEGER", "float64": "REAL", "string": "TEXT", "bool": "INTEGER"}
        cast = None if after.name == "decimal" else casts.get(after.name)
        if cast is None:
            raise ConfigurationError(
                f"SQLite cannot convert {column} from {before} to {after} in place; keep the "
                "type, or reload the dataset into a new table"
            )
        return f"CAST({column} AS {cast})"


def _refuse_a_key_on_partitioned_storage(
    found: Plan, storage: TableShape, contract: DatasetContract
) -> None:
    """A merge table's primary key is (tenant, key columns); PostgreSQL allows a unique key on a
    partitioned table only if it holds the partition column, `_dw_loaded_at`."""
    if storage.partitioned and any(c.kind == "change_write_mode" for c in found.changes):
        raise ConfigurationError(
            f"dataset '{contract.name}': {STORAGE_SCHEMA}.{contract.name} is partitioned by load "
            "month (append storage), and a partitioned table cannot take the primary key a merge "
            "table needs; nothing was applied. Load the merge contract as a new dataset, and "
            "copy the rows over with INSERT ... SELECT if you need them"
        )


def _refuse_decimals_that_do_not_fit(
    conn: Connection, table: str, stored: StoredColumn, after: ColumnType, dataset: str
) -> None:
    column = conn.dialect.identifier_preparer.quote(stored.name)
    rows = conn.exec_driver_sql(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL")
    bad = 0
    example = None
    for (text,) in rows:
        try:
            fits = decimal_fits(decimal.Decimal(str(text)), after)
        except ArithmeticError:
            fits = False
        if not fits:
            bad += 1
            example = example or str(text)
    if bad:
        raise ConfigurationError(
            f"dataset '{dataset}': {bad} stored value(s) of column {stored.name} would change "
            f"converting {stored.type} to {after} (e.g. {example!r}); nothing was applied. "
            "Keep the type, or reload the data"
        )


# ------------------------------------------------------------------------------- inspection


def inspect(conn: Connection, contract: DatasetContract, tables: DatasetTables) -> CatalogState:
    """What the catalog shows of the dataset's tables, and the latest recorded version."""
    if conn.dialect.name == "postgresql":
        shapes, bookkeeping = _inspect_postgres(conn, contract)
    else:
        shapes, bookkeeping = _inspect_sqlite(conn, contract)
    latest = None
    if bookkeeping.get(VERSIONS_TABLE):
        row = conn.execute(
            sa.text(
                f"SELECT version, contract_hash, schema FROM {STORAGE_SCHEMA}.{VERSIONS_TABLE} "
                "WHERE dataset = :dataset ORDER BY version DESC LIMIT 1"
            ),
            {"dataset": contract.name},
        ).one_or_none()
        if row is not None:
            latest = RecordedVersion(row[0], row[1], json.loads(row[2]))
    storage = shapes.get(STORAGE_SCHEMA)
    if storage is not None and conn.dialect.name == "sqlite":
        storage = _sqlite_decimals(storage, latest, contract)
    staging = shapes.get(STAGING_SCHEMA)
    if staging is not None and conn.dialect.name == "sqlite":
        staging = _sqlite_decimals(staging, None, contract)
    loads_ready = set(LOADS_COLUMNS_ADDED) <= bookkeeping.get("_dw_loads", set())
    return CatalogState(
        storage=storage,
        staging=staging,
        latest=latest,
        bookkeeping_ready=loads_ready and bool(bookkeeping.get(VERSIONS_TABLE)),
    )


def _contract_type(type_name: str, mapping: dict[str, str]) -> str:
    match = _NUMERIC.match(type_name.replace(" ", ""))
    if match:
        return f"decimal({match.group(1)},{match.group(2)})"
    return mapping.get(type_name, type_name)


def _inspect_postgres(
    conn: Connection, contract: DatasetContract
) -> tuple[dict[str, TableShape], dict[str, set[str]]]:
    # pg_catalog rather than information_schema: the same answer without the views' privilege
    # checks, which cost milliseconds of planning on every run's first load.
    rows = conn.execute(
        sa.text(
            "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),"
            " a.attnotnull, array_position(k.conkey, a.attnum), k.conname, c.relkind"
            " FROM pg_catalog.pg_attribute a"
            " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_catalog.pg_constraint k ON k.conrelid = c.oid AND k.contype = 'p'"
            " WHERE n.nspname IN (:staging, :storage) AND c.relname IN (:name, :loads, :versions)"
            " AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped"
            " ORDER BY n.nspname, c.relname, a.attnum"
        ),
        {
            "staging": STAGING_SCHEMA,
            "storage": STORAGE_SCHEMA,
            "name": contract.name,
            "loads": "_dw_loads",
            "versions": VERSIONS_TABLE,
        },
    ).all()
    columns: dict[str, list[StoredColumn]] = {}
    keys: dict[str, list[tuple[int, str]]] = {}
    key_names: dict[str, str | None] = {}
    bookkeeping: dict[str, set[str]] = {}
    partitioned: set[str] = set()
    for schema, table, column, type_name, not_null, key_position, key_name, kind in rows:
        if table != contract.name:
            if schema == STORAGE_SCHEMA:
                bookkeeping.setdefault(table, set()).add(column)
            continue
        key_names[schema] = key_name
        if kind == "p":
            partitioned.add(schema)
        if key_position is not None and column != TENANT_COLUMN:
            keys.setdefault(schema, []).append((key_position, column))
        if column in LINEAGE_COLUMNS:
            columns.setdefault(schema, [])
            continue
        stored = StoredColumn(column, _contract_type(type_name, _POSTGRES_TYPES), not not_null)
        columns.setdefault(schema, []).append(stored)
    shapes = {
        schema: TableShape(
            columns=tuple(found),
            primary_key=tuple(c for _, c in sorted(keys.get(schema, []))),
            key_name=key_names.get(schema),
            partitioned=schema in partitioned,
        )
        for schema, found in columns.items()
    }
    return shapes, bookkeeping


def _inspect_sqlite(
    conn: Connection, contract: DatasetContract
) -> tuple[dict[str, TableShape], dict[str, set[str]]]:
    inspector = sa.inspect(conn)
    shapes: dict[str, TableShape] = {}
    for schema in (STAGING_SCHEMA, STORAGE_SCHEMA):
        if not inspector.has_table(contract.name, schema=schema):
            continue
        found = [
            StoredColumn(
                c["name"], _contract_type(str(c["type"]).upper(), _SQLITE_TYPES), c["nullable"]
            )
            for c in inspector.get_columns(contract.name, schema)
            if c["name"] not in LINEAGE_COLUMNS
        ]
        key = inspector.get_pk_constraint(contract.name, schema)
        key_columns = key.get("constrained_columns") or []
        shapes[schema] = TableShape(
            columns=tuple(found),
            primary_key=tuple(c for c in key_columns if c != TENANT_COLUMN),
            key_name=(key.get("name") or "primary key") if key_columns else None,
        )
    bookkeeping = {
        table: {c["name"] for c in inspector.get_columns(table, STORAGE_SCHEMA)}
        for table in ("_dw_loads", VERSIONS_TABLE)
        if inspector.has_table(table, schema=STORAGE_SCHEMA)
    }
    return shapes, bookkeeping


def _sqlite_decimals(
    shape: TableShape, latest: RecordedVersion | None, contract: DatasetContract
) -> TableShape:
    """SQLite stores decimals as TEXT: which TEXT columns are decimals, the recorded schema
    says (or, before any version, the contract)."""
    if latest is not None:
        recorded = {c["name"]: c["type"] for c in latest.schema.get("columns", [])}
    else:
        recorded = {c.name: str(c.type) for c in contract.columns}
    columns = tuple(
        StoredColumn(c.name, recorded[c.name], c.nullable)
        if c.type == "string" and recorded.get(c.name, "").startswith("decimal")
        else c
        for c in shape.columns
    )
    return TableShape(columns, shape.primary_key, shape.key_name)


# ---------------------------------------------------------------------------- plan and apply


def plan(
    state: CatalogState,
    contract: DatasetContract,
    tables: DatasetTables,
    dialect: sa.engine.Dialect,
) -> Plan:
    """What it takes to make the dataset's tables match its contract."""
    ddl = _Ddl(dialect)
    document = schema_document(contract)
    digest = contract_hash(document)
    current_version = state.latest.version if state.latest else None
    statements: list[str] = []
    if state.storage is None:
        changes = [
            Change(
                "create_table",
                None,
                None,
                f"{STORAGE_SCHEMA}.{contract.name}",
                True,
                "the dataset's first job",
            )
        ]
        statements += ddl.create(tables.storage)
        if ddl.postgres and contract.write_mode == "merge":
            statements.append(
                f"ALTER TABLE {ddl.table(STORAGE_SCHEMA, contract.name)} "
                f"SET (fillfactor = {MERGE_FILLFACTOR})"
            )
        if ddl.postgres and contract.write_mode == "append":
            # Rows of a month whose partition is missing land here (warehouse/promote_attach.py)
            default = ddl.table(STORAGE_SCHEMA, storage_default_partition(contract.name))
            statements.append(
                f"CREATE TABLE {default} PARTITION OF "
                f"{ddl.table(STORAGE_SCHEMA, contract.name)} DEFAULT"
            )
    else:
        changes = plan_changes(state.storage, state.latest, contract)
        if state.latest is not None and state.latest.contract_hash != digest and not changes:
            # Something only the hash covers changed (e.g. a default on a column already there).
            changes = [Change("change_metadata", None, None, None, True, "metadata only; no DDL")]
        structural = [c for c in changes if c.kind not in ("change_metadata", "record_existing")]
        if structural:
            statements += _storage_statements(ddl, state.storage, structural, contract, tables)
    statements += _staging_statements(ddl, state.staging, contract, tables)
    if state.latest is not None and state.latest.contract_hash == digest and not statements:
        changes = []
    return Plan(
        dataset=contract.name,
        current_version=current_version,
        changes=tuple(changes),
        ddl=tuple(statements),
        contract_hash=digest,
        document=document,
    )


def _storage_statements(
    ddl: _Ddl,
    current: TableShape,
    changes: list[Change],
    contract: DatasetContract,
    tables: DatasetTables,
) -> list[str]:
    in_place = ddl.postgres or all(c.kind in ("add_column", "rename_column") for c in changes)
    if in_place:
        return ddl.alter(STORAGE_SCHEMA, contract.name, changes, contract, current.key_name, True)
    lineage = [c.name for c in tables.storage.columns if c.name in LINEAGE_COLUMNS]
    return ddl.rebuild(tables.storage, current, contract, lineage)


def _staging_statements(
    ddl: _Ddl, current: TableShape | None, contract: DatasetContract, tables: DatasetTables
) -> list[str]:
    """Staging follows the contract: created from it, or altered like storage (PostgreSQL: the
    partitioned parent, which alters every job's partition with it). SQLite's staging is scratch
    in one table; it is simply created anew."""
    if current is None:
        return ddl.create(tables.staging)
    changes = [
        c
        for c in plan_changes(current, None, contract)
        if c.kind not in ("record_existing", "change_write_mode", "change_primary_key")
    ]
    if not changes:
        return []
    if ddl.postgres:
        return ddl.alter(STAGING_SCHEMA, contract.name, changes, contract, None, False)
    return [f"DROP TABLE {ddl.table(STAGING_SCHEMA, contract.name)}", *ddl.create(tables.staging)]


@dataclass
class Evolution:
    """Plans and applies schema changes of the datasets' tables on one warehouse engine."""

    engine: Engine
    metadata: sa.MetaData
    tables: Callable[[DatasetContract], DatasetTables]
    bookkeeping: list[sa.Table]  # the loads and versions tables, created when missing
    faults: Faults = NO_FAULTS

    def plan(self, contract: DatasetContract) -> Plan:
        with self.engine.connect() as conn:
            state = inspect(conn, contract, self.tables(contract))
        return plan(state, contract, self.tables(contract), self.engine.dialect)

    def ensure(self, contract: DatasetContract, applied_by: str) -> tuple[int, bool | None]:
        """Make the dataset's tables match its contract where that is safe; return the schema
        version storage is at, and whether storage is a partitioned table as the catalog showed
        it (None when this call changed the tables). Raises `SchemaChangeRequired` for anything
        else."""
        tables = self.tables(contract)
        with self.engine.connect() as conn:
            state = inspect(conn, contract, tables)
        found = plan(state, contract, tables, self.engine.dialect)
        if found.up_to_date and state.bookkeeping_ready and state.latest is not None:
            return state.latest.version, state.storage.partitioned if state.storage else None
        if not found.safe:
            raise found.refusal()
        return self.apply(contract, applied_by, allow_destructive=False)[1], None

    def apply(
        self,
        contract: DatasetContract,
        applied_by: str,
        allow_destructive: bool,
        expected: Plan | None = None,
    ) -> tuple[Plan, int]:
        """Apply the plan under the DDL lock, in one transaction; return it and the version.

        The catalog is read again once the lock is held: a plan another job applied meanwhile
        is found done. `expected` (what an operator was shown) must still be the plan, or
        nothing is applied.
        """
        tables = self.tables(contract)
        with self.engine.begin() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                lock = sa.text("SELECT pg_advisory_xact_lock(hashtext(:lock))")
                conn.execute(lock, {"lock": DDL_LOCK})
                existing = set(sa.inspect(conn).get_schema_names())
                for schema in (STAGING_SCHEMA, STORAGE_SCHEMA):
                    # Only when missing: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the
                    # database, which the least-privilege dw_worker role does not have.
                    if schema not in existing:
                        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            self._ensure_bookkeeping(conn)
            state = inspect(conn, contract, tables)
            found = plan(state, contract, tables, conn.dialect)
            if expected is not None and found.to_dict() != expected.to_dict():
                raise SchemaChangeRequired(
                    contract.name,
                    found,
                    f"dataset '{contract.name}': the plan changed since it was shown (another "
                    "migration or a contract edit); nothing was applied. Run it again",
                )
            if found.up_to_date:
                return found, state.latest.version if state.latest else 0
            if not found.safe and not allow_destructive:
                raise found.refusal()
            if postgres:
                # Casts between dates and timestamps follow the session's zone: make it UTC.
                conn.execute(sa.text("SET LOCAL TimeZone = 'UTC'"))
            if state.storage is not None:
                _refuse_a_key_on_partitioned_storage(found, state.storage, contract)
                self._refuse_lossy_conversions(conn, found, state.storage, contract)
            for statement in found.ddl:
                try:
                    conn.exec_driver_sql(statement)
                except sa.exc.ProgrammingError as exc:
                    if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
                        raise
                    raise ConfigurationError(
                        f"dataset '{contract.name}': the warehouse role may not change its "
                        f"tables ({str(exc.orig).splitlines()[0]}); only a table's owner may. "
                        f"Apply the plan as the owner: `dw-pipelines datasets migrate "
                        f"{contract.name}` with DW_WAREHOUSE_URL of that role"
                    ) from None
            self.faults.hit("schema.migrate", conn)
            version = state.latest.version if state.latest else 0
            if found.records_version:
                version += 1
                conn.execute(
                    self._versions.insert().values(
                        dataset=contract.name,
                        version=version,
                        contract_hash=found.contract_hash,
                        schema=json.dumps(found.document, sort_keys=True),
                        changes=json.dumps([c.to_dict() for c in found.changes]),
                        ddl=";\n".join(found.ddl),
                        destructive=not found.safe,
                        applied_by=applied_by[:128],
                        applied_at=utcnow(),
                    )
                )
        return found, version

    @staticmethod
    def _refuse_lossy_conversions(
        conn: Connection, found: Plan, storage: TableShape, contract: DatasetContract
    ) -> None:
        """Before an unsafe type change: every stored value must convert and come back equal."""
        ddl = _Ddl(conn.dialect)
        renames = _renames(storage, contract)
        table = ddl.table(STORAGE_SCHEMA, contract.name)
        for change in found.changes:
            if change.kind != "change_type" or change.safe or change.column is None:
                continue
            stored = storage.column(renames.get(change.column, change.column))
            if stored is None:
                continue
            after = contract.column(change.column).type
            if conn.dialect.name == "sqlite" and after.name == "decimal":
                # SQLite keeps decimals as text, which SQL cannot round: check them here (a
                # migration, not the load path; SQLite is the one-laptop warehouse).
                _refuse_decimals_that_do_not_fit(conn, table, stored, after, contract.name)
                continue
            savepoint = conn.begin_nested()
            try:
                count, example = conn.exec_driver_sql(
                    ddl.changed_values(table, stored, after)
                ).one()
            except sa.exc.DBAPIError as exc:
                savepoint.rollback()
                reason = str(exc.orig or exc).splitlines()[0]
                raise ConfigurationError(
                    f"dataset '{contract.name}': stored values of column {stored.name} do not "
                    f"convert from {stored.type} to {after} ({reason}); nothing was applied"
                ) from None
            savepoint.commit()
            if count:
                raise ConfigurationError(
                    f"dataset '{contract.name}': {count} stored value(s) of column {stored.name} "
                    f"would change converting {stored.type} to {after} (e.g. {example!r}); "
                    "nothing was applied. Keep the type, or reload the data"
                )

    @property
    def _versions(self) -> sa.Table:
        return next(t for t in self.bookkeeping if t.name == VERSIONS_TABLE)

    def _ensure_bookkeeping(self, conn: Connection) -> None:
        self.metadata.create_all(conn, tables=self.bookkeeping, checkfirst=True)
        loads = next(t for t in self.bookkeeping if t.name != VERSIONS_TABLE)
        columns = {c["name"] for c in sa.inspect(conn).get_columns(loads.name, loads.schema)}
        table = f"{STORAGE_SCHEMA}.{loads.name}"
        for name in LOADS_COLUMNS_ADDED:
            if name not in columns:
                sql_type = loads.c[name].type.compile(dialect=conn.dialect)
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))
        for index in loads.indexes:  # create_all adds them to new tables only
            index.create(conn, checkfirst=True)

    def history(self, dataset: str) -> list[dict[str, Any]]:
        """The recorded versions of a dataset, oldest first."""
        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(VERSIONS_TABLE, schema=STORAGE_SCHEMA):
                return []
            rows = conn.execute(
                sa.select(self._versions)
                .where(self._versions.c.dataset == dataset)
                .order_by(self._versions.c.version)
            ).mappings()
            return [
                {
                    **row,
                    "schema": json.loads(row["schema"]),
                    "changes": json.loads(row["changes"]),
                }
                for row in rows
            ]
