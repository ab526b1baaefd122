"""Data-quality checks derived from a dataset contract, run in SQL against staging and storage.

The validation step already refuses files with duplicate keys or missing required values before
anything commits. These checks look again at what the database actually holds, so a fault in a
load path (a dropped batch, a promotion that matched the wrong rows) shows up as a failed check
instead of silently wrong storage:

* `rows_match_source`: rows held == rows read from the source file;
* `primary_key_unique`: no key twice among the job's rows. Staging reports the in-file key check
  (it saw every staged row); append storage groups the job's rows in SQL; merge storage relies on
  the table's primary key on (tenant, key), which the check confirms is in place;
* `required_columns_not_null`: no NULL in a column the contract declares `nullable: false`;
* `freshness` (contracts with `freshness`): the newest promoted job is younger than the limit.

Each check reads only the rows of the jobs concerned (one staging partition; storage rows by job
id or key), so its cost grows with the file, not with the table.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.db import as_utc
from dw_pipelines.core.tables import (
    JOB_ID_COLUMN,
    LOADED_AT_COLUMN,
    TENANT_COLUMN,
)
from dw_pipelines.core.warehouse import Warehouse

ROWS_MATCH_SOURCE = "rows_match_source"
PRIMARY_KEY_UNIQUE = "primary_key_unique"
REQUIRED_NOT_NULL = "required_columns_not_null"
FRESHNESS = "freshness"


@dataclass(frozen=True)
class JobRows:
    """What one job read from its source (the expectation the checks compare against)."""

    job_id: str
    tenant_id: str
    rows_read: int
    # When its rows were promoted (append storage: `_dw_loaded_at`), if the caller knows; else
    # the checks look it up in `_dw_loads`.
    loaded_at: datetime | None = None


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def check_names(contract: DatasetContract) -> list[str]:
    """The checks a dataset's staging and storage carry (freshness is separate, on storage)."""
    names = [ROWS_MATCH_SOURCE]
    if contract.primary_key:
        names.append(PRIMARY_KEY_UNIQUE)
    if contract.required_columns:
        names.append(REQUIRED_NOT_NULL)
    return names


class DataQuality:
    def __init__(self, warehouse: Warehouse):
        self.warehouse = warehouse

    def check_staging(
        self, contract: DatasetContract, jobs: Sequence[JobRows]
    ) -> list[CheckOutcome]:
        """The checks over the jobs' staged rows (before promotion).

        Key uniqueness is not queried again here: the in-file key check saw every staged row as
        it was loaded (a duplicate fails the job before anything is staged), and grouping a
        million fresh rows in SQL costs about a second. Row count and NULLs are read back.
        """
        staging = self.warehouse.ensure_tables(contract).staging
        return self._run(
            contract, jobs, staging, per_tenant=False, staged=None, in_storage=False, keys=False
        )

    def check_storage(
        self, contract: DatasetContract, jobs: Sequence[JobRows]
    ) -> list[CheckOutcome]:
        """The checks over the jobs' rows in storage, after promotion and before the staged rows
        are discarded (merge finds a job's rows through its staged keys: unchanged rows keep the
        job id of the load that last changed them)."""
        tables = self.warehouse.ensure_tables(contract)
        staged = tables.staging if contract.write_mode == "merge" else None
        return self._run(
            contract,
            jobs,
            tables.storage,
            per_tenant=contract.write_mode == "merge",
            staged=staged,
            in_storage=True,
            # Merge storage carries a primary key on (tenant, key): the database itself refuses
            # a duplicate, so the check confirms the constraint instead of grouping the rows.
            keys=contract.write_mode != "merge",
        )

    def _run(
        self,
        contract: DatasetContract,
        jobs: Sequence[JobRows],
        table: sa.Table,
        per_tenant: bool,
        staged: sa.Table | None,
        in_storage: bool,
        keys: bool,
    ) -> list[CheckOutcome]:
        counts: dict[str, int] = {}
        null_counts: dict[str, dict[str, int]] = {}
        duplicates: dict[str, dict[str, Any]] = {}
        with self.warehouse.engine.connect() as conn:
            for job in jobs:
                loaded_at = job.loaded_at if in_storage and staged is None else None
                if in_storage and staged is None and loaded_at is None:
                    loads = self.warehouse.loads
                    loaded_at = conn.execute(
                        sa.select(loads.c.loaded_at).where(
                            loads.c.dataset == contract.name, loads.c.job_id == job.job_id
                        )
                    ).scalar_one_or_none()
                rows = self._job_rows(contract, table, job, staged, loaded_at)
                required = contract.required_columns
                columns = [sa.func.count().label("_rows")] + [
                    sa.func.count().filter(rows.c[c].is_(None)).label(c) for c in required
                ]
                result = conn.execute(sa.select(*columns)).mappings().one()
                counts[job.job_id] = result["_rows"]
                nulls = {c: result[c] for c in required if result[c]}
                if nulls:
                    null_counts[job.job_id] = nulls
                if contract.primary_key and keys:
                    key = [rows.c[k] for k in contract.primary_key]
                    if per_tenant:
                        key.insert(0, rows.c[TENANT_COLUMN])
                    duplicate = (
                        conn.execute(
                            sa.select(*key, sa.func.count().label("_occurrences"))
                            .group_by(*key)
                            .having(sa.func.count() > 1)
                            .limit(1)
                        )
                        .mappings()
                        .first()
                    )
                    if duplicate is not None:
                        duplicates[job.job_id] = {k: str(v) for k, v in duplicate.items()}

        outcomes = []
        mismatched = {
            j.job_id: (counts[j.job_id], j.rows_read)
            for j in jobs
            if counts[j.job_id] != j.rows_read
        }
        outcomes.append(
            CheckOutcome(
                ROWS_MATCH_SOURCE,
                passed=not mismatched,
                description=(
                    "; ".join(
                        f"job {j}: {held} rows held, {read} read"
                        for j, (held, read) in mismatched.items()
                    )
                    if mismatched
                    else f"{sum(counts.values())} rows held = rows read from {len(jobs)} source(s)"
                ),
                metadata={
                    "rows_held": sum(counts.values()),
                    "rows_read": sum(j.rows_read for j in jobs),
                },
            )
        )
        if contract.primary_key and not keys:
            outcomes.append(self._key_outcome_without_query(contract, table, in_storage, counts))
        elif contract.primary_key:
            key_text = ", ".join(contract.primary_key)
            outcomes.append(
                CheckOutcome(
                    PRIMARY_KEY_UNIQUE,
                    passed=not duplicates,
                    description=(
                        "; ".join(f"job {j}: key repeated {d}" for j, d in duplicates.items())
                        if duplicates
                        else f"({key_text}) unique"
                        + (" per tenant" if per_tenant else "")
                        + f" across {sum(counts.values())} rows"
                    ),
                    metadata={"primary_key": key_text, "jobs_with_duplicates": len(duplicates)},
                )
            )
        if contract.required_columns:
            outcomes.append(
                CheckOutcome(
                    REQUIRED_NOT_NULL,
                    passed=not null_counts,
                    description=(
                        "; ".join(f"job {j}: NULLs {n}" for j, n in null_counts.items())
                        if null_counts
                        else f"no NULL in {len(contract.required_columns)} required column(s)"
                    ),
                    metadata={
                        "required_columns": ", ".join(contract.required_columns),
                        "null_values": sum(sum(n.values()) for n in null_counts.values()),
                    },
                )
            )
        return outcomes

    def _key_outcome_without_query(
        self, contract: DatasetContract, table: sa.Table, in_storage: bool, counts: dict[str, int]
    ) -> CheckOutcome:
        key_text = ", ".join(contract.primary_key)
        rows = sum(counts.values())
        if not in_storage:
            return CheckOutcome(
                PRIMARY_KEY_UNIQUE,
                passed=True,
                description=f"({key_text}) unique across {rows} rows: every row was checked as "
                "it was read from the file",
                metadata={"primary_key": key_text, "jobs_with_duplicates": 0},
            )
        constraint = sa.inspect(self.warehouse.engine).get_pk_constraint(
            table.name, schema=table.schema
        )
        expected = [TENANT_COLUMN, *contract.primary_key]
        held = list(constraint.get("constrained_columns") or [])
        return CheckOutcome(
            PRIMARY_KEY_UNIQUE,
            passed=held == expected,
            description=(
                f"({key_text}) unique per tenant: enforced by the primary key "
                f"({', '.join(held)}) of {table.schema}.{table.name}"
                if held == expected
                else f"{table.schema}.{table.name} has primary key ({', '.join(held)}), "
                f"expected ({', '.join(expected)}): duplicates are not prevented"
            ),
            metadata={"primary_key": key_text, "constraint_columns": ", ".join(held)},
        )

    @staticmethod
    def _job_rows(
        contract: DatasetContract,
        table: sa.Table,
        job: JobRows,
        staged: sa.Table | None,
        loaded_at: datetime | None,
    ) -> sa.Subquery:
        rows = sa.select(table).where(table.c[JOB_ID_COLUMN] == job.job_id)
        if loaded_at is not None:
            # Append storage: the job's load shares one _dw_loaded_at, which the BRIN index
            # finds without scanning the table (as promotion's delete does).
            rows = rows.where(table.c[LOADED_AT_COLUMN] == loaded_at)
        if staged is None:
            return rows.subquery()
        # Merge: the storage rows whose (tenant, key) the job's file carried.
        keys = sa.select(*[staged.c[k] for k in contract.primary_key]).where(
            staged.c[JOB_ID_COLUMN] == job.job_id
        )
        return (
            sa.select(table)
            .where(
                table.c[TENANT_COLUMN] == job.tenant_id,
                sa.tuple_(*[table.c[k] for k in contract.primary_key]).in_(keys),
            )
            .subquery()
        )

    def freshness(self, contract: DatasetContract, now: datetime) -> CheckOutcome:
        """Whether the dataset's newest promoted job is within `freshness.max_age_hours`."""
        limit = contract.freshness_max_age_hours
        loads = self.warehouse.loads
        with self.warehouse.engine.connect() as conn:
            # A new warehouse has no loads table until its first promotion.
            if not sa.inspect(conn).has_table(loads.name, schema=loads.schema):
                last = None
            else:
                last = conn.execute(
                    sa.select(sa.func.max(loads.c.loaded_at)).where(
                        loads.c.dataset == contract.name
                    )
                ).scalar_one_or_none()
        if last is None:
            return CheckOutcome(
                FRESHNESS, passed=False, description=f"no {contract.name} job was ever promoted"
            )
        age_hours = (now - as_utc(last)).total_seconds() / 3600
        passed = limit is None or age_hours <= limit
        return CheckOutcome(
            FRESHNESS,
            passed=passed,
            description=(
                f"last load {age_hours:.1f} h ago"
                + ("" if limit is None else f" (limit {limit:g} h)")
            ),
            metadata={"last_loaded_at": as_utc(last).isoformat(), "age_hours": round(age_hours, 3)},
        )


def markdown_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None = 40
) -> str:
    """A Markdown table; cells longer than `width` characters are cut (None: never)."""

    def cell(value: Any) -> str:
        if value is None:
            return "∅"
        text = str(value).replace("|", "\\|").replace("\n", " ")
        return text if width is None or len(text) <= width else text[: width - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
