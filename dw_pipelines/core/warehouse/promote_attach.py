"""Attach promotion (PostgreSQL, append): a large job's validated staging table becomes a
partition of storage, so its rows are written once instead of being copied by `INSERT … SELECT`.

Layout of a partitioned append storage table `dw_storage.<dataset>` (created so by this version;
older plain tables keep the copy):

    <dataset>                      RANGE (_dw_loaded_at): one partition per UTC month
      <dataset>__p202612           LIST (_dw_job_id)
        <dataset>__p202612_j<hash> one job's rows, attached whole (at least DW_ATTACH_MIN_ROWS)
        <dataset>__p202612_small   DEFAULT: the month's smaller loads, copied in
      <dataset>__default           DEFAULT: rows of a month whose partition could not be created
                                   (yet: the month's next load that makes it moves them in)

Readers, views and grants use the parent table only, as before; the partitions are its storage.
The partition count is bounded: two per month that had loads, one per job of at least
DW_ATTACH_MIN_ROWS rows (so at most the table's rows / DW_ATTACH_MIN_ROWS of those).

Why the month level: attaching a partition next to a DEFAULT partition makes PostgreSQL scan
the DEFAULT for rows of the new partition (~0.35 s per million rows, under an exclusive lock on
it). With a DEFAULT per month the scan covers that month's small loads, not the table's history.

A job that is likely to attach is staged into a LOGGED partition from the start
(`stage_logged`): making an unlogged table durable afterwards (`SET LOGGED`) rewrites it through
the WAL, about half what the copy it replaces costs (benchmarks/attach.py); a job that reaches
the threshold from a smaller file than expected pays that instead. Promotion, in its transaction:
detaches the partition from staging, drops `_dw_row_number`, adds the tenant and load time as
columns with constant defaults (metadata only), proves the partition bound with one CHECK
(one scan), renames it into `dw_storage` and attaches it to the month. Any refusal on the way
(a lock not granted within ATTACH_LOCK_TIMEOUT, a worker that does not own the tables, a table
shape the attach does not accept) rolls back to a savepoint and the job is copied instead: the
copy is always correct, the attach is only faster.
"""

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.tables import (
    JOB_ID_COLUMN,
    LOADED_AT_COLUMN,
    ROW_NUMBER_COLUMN,
    STAGING_SCHEMA,
    STORAGE_SCHEMA,
    TENANT_COLUMN,
    staging_partition,
    storage_default_partition,
    storage_job_partition,
    storage_month_partition,
    storage_small_loads_partition,
)
from dw_pipelines.core.warehouse.sql import _literal, _quote

_log = logging.getLogger(__name__)

# How long an attach, a month's creation or a re-load's DROP waits for a lock before it gives
# up for the copy (or, for a month, the table's DEFAULT partition). Each of them needs a lock
# that readers of the partition hold while they read, and every later reader queues behind a
# waiting one: the wait must stay short.
ATTACH_LOCK_TIMEOUT = "1s"
# A job is staged logged from the start when its source has at least DW_ATTACH_MIN_ROWS times
# this many bytes: rows of real files are longer (the benchmark's 7 columns: 92 bytes), so such
# a file most likely holds enough rows to attach. A smaller file is staged unlogged (no WAL for
# a job that will be copied: 1.85 s against 2.26 s for 1M rows), and should it still reach the
# threshold, promotion makes it logged first (SET LOGGED rewrites it through the WAL: ~1 s per
# 1M rows, still faster than the copy).
LOGGED_MIN_BYTES_PER_ROW = 32
# The advisory lock space under which a dataset's month partitions are created (one at a time).
PARTITIONS_LOCK = "dw_pipelines.partitions"


def load_month(loaded_at: datetime) -> tuple[str, datetime, datetime]:
    """The UTC month `loaded_at` falls in: its tag ("202612") and bounds [start, end)."""
    moment = loaded_at.astimezone(UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return f"{moment.year:04d}{moment.month:02d}", start, end


class AttachPromotion:
    """The attach half of append promotion (a mixin of `Warehouse`)."""

    def partitioned_storage(self, contract: DatasetContract) -> bool:
        """Whether the dataset's storage is a partitioned append table (asked once per process:
        a table never changes between plain and partitioned)."""
        if not self._postgres or contract.write_mode != "append":
            return False
        storage = self.ensure_tables(contract).storage  # its catalog read usually answers
        if contract.name not in self._partitioned:
            with self.engine.connect() as conn:
                kind = conn.execute(
                    sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"),
                    {"name": _qualified(conn, STORAGE_SCHEMA, storage.name)},
                ).scalar_one_or_none()
            self._partitioned[contract.name] = kind == "p"
        return self._partitioned[contract.name]

    def stage_logged(self, contract: DatasetContract, size_hint: int | None) -> bool:
        """Whether the job's staging partition is created logged, ready to be attached: when
        the source is large enough to most likely hold DW_ATTACH_MIN_ROWS rows (see
        LOGGED_MIN_BYTES_PER_ROW; unknown sizes count as large)."""
        if self.attach_min_rows is None or not self.partitioned_storage(contract):
            return False
        return size_hint is None or size_hint >= self.attach_min_rows * LOGGED_MIN_BYTES_PER_ROW

    def ensure_load_month(self, contract: DatasetContract, loaded_at: datetime) -> None:
        """Create the partition of the month `loaded_at` falls in, and of the month after, if
        missing (each with its DEFAULT for small loads).

        Each in its own short transaction, before the promotion's: a new month is an ATTACH of
        an empty table (SHARE UPDATE EXCLUSIVE on the parent, which readers do not conflict
        with; `CREATE TABLE … PARTITION OF` would take ACCESS EXCLUSIVE), but it also locks the
        table's DEFAULT partition, which every reader of the whole table holds: with a long
        report running it gives up after ATTACH_LOCK_TIMEOUT. The month ahead is why that
        rarely matters: it is made by any load of the month before, so a month's first load
        seldom has to make its own. If the month cannot be made (a worker that does not own the
        table, a lock not granted), its rows go to the table's DEFAULT partition and its jobs
        are copied, not attached, until a later load of the month makes it (and moves them).
        """
        month, start, end = load_month(loaded_at)
        after, after_start, after_end = load_month(end)
        wanted = {
            m: bounds
            for m, bounds in ((month, (start, end)), (after, (after_start, after_end)))
            if m not in self._months.setdefault(contract.name, set())
        }
        if not wanted:
            return
        # Both months looked up in one round trip; usually both exist and nothing else runs.
        names = {m: storage_month_partition(contract.name, m) for m in wanted}
        with self.engine.connect() as conn:
            existing = _existing(conn, STORAGE_SCHEMA, list(names.values()))
        for m, (m_start, m_end) in wanted.items():
            if names[m] in existing:
                self._months[contract.name].add(m)
            else:
                self._ensure_month(contract, m, m_start, m_end, needed=m == month)

    def _ensure_month(
        self,
        contract: DatasetContract,
        month: str,
        start: datetime,
        end: datetime,
        needed: bool,
    ) -> None:
        known = self._months.setdefault(contract.name, set())
        if month in known:
            return
        name = storage_month_partition(contract.name, month)
        try:
            with self.engine.begin() as conn:
                if not _exists(conn, STORAGE_SCHEMA, name):
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(hashtext(:space), hashtext(:name))"),
                        {"space": PARTITIONS_LOCK, "name": contract.name},
                    )
                    if not _exists(conn, STORAGE_SCHEMA, name):
                        self._create_month(conn, contract, name, month, start, end)
        except sa.exc.DBAPIError as exc:
            if needed:
                _log.warning(
                    "dataset %s: the partition of month %s could not be created (%s); its "
                    "loads go to the table's DEFAULT partition and are copied, not attached",
                    contract.name,
                    month,
                    _first_line(exc),
                )
            else:  # the next load tries again
                _log.info(
                    "dataset %s: the partition of the coming month %s was not created yet (%s)",
                    contract.name,
                    month,
                    _first_line(exc),
                )
        known.add(month)  # also after a refusal: asked again by the next process, not each job

    def _create_month(
        self,
        conn: Connection,
        contract: DatasetContract,
        name: str,
        month: str,
        start: datetime,
        end: datetime,
    ) -> None:
        parent = _qualified(conn, STORAGE_SCHEMA, contract.name)
        period = _qualified(conn, STORAGE_SCHEMA, name)
        small = _qualified(
            conn, STORAGE_SCHEMA, storage_small_loads_partition(contract.name, month)
        )
        conn.execute(sa.text(f"SET LOCAL lock_timeout = '{ATTACH_LOCK_TIMEOUT}'"))
        conn.execute(
            sa.text(
                f"CREATE TABLE {period} (LIKE {parent} INCLUDING DEFAULTS) "
                f"PARTITION BY LIST ({JOB_ID_COLUMN})"
            )
        )
        conn.execute(sa.text(f"CREATE TABLE {small} (LIKE {parent} INCLUDING DEFAULTS)"))
        conn.execute(sa.text(f"ALTER TABLE {period} ATTACH PARTITION {small} DEFAULT"))
        # Rows of this month that went to the table's DEFAULT while the month could not be made
        # move into it (PostgreSQL refuses the ATTACH while the DEFAULT holds any).
        default = _qualified(conn, STORAGE_SCHEMA, storage_default_partition(contract.name))
        columns = ", ".join(_quote(conn, c.name) for c in self.tables(contract).storage.columns)
        conn.execute(
            sa.text(
                f"WITH moved AS (DELETE FROM {default} WHERE {LOADED_AT_COLUMN} >= :start AND "
                f"{LOADED_AT_COLUMN} < :end RETURNING {columns}) "
                f"INSERT INTO {small} ({columns}) SELECT {columns} FROM moved"
            ),
            {"start": start, "end": end},
        )
        conn.execute(
            sa.text(
                f"ALTER TABLE {parent} ATTACH PARTITION {period} FOR VALUES FROM "
                f"({_literal(conn, start.isoformat())}) TO ({_literal(conn, end.isoformat())})"
            )
        )

    def _copy_target(
        self,
        conn: Connection,
        contract: DatasetContract,
        storage: sa.Table,
        job_id: str,
        loaded_at: datetime,
    ) -> sa.TableClause:
        """Where a copied job's rows go: straight into the partition that holds them, since
        routing each row through two partition levels costs more than the copy itself gains
        from anything (measured for 1M rows: 3.18 s through the parent, 2.30 s into the
        partition, 2.20 s into a plain table). The parent when no partition can be named."""
        month, _, _ = load_month(loaded_at)
        candidates = [
            storage_job_partition(contract.name, month, job_id),  # a re-load not dropped
            storage_small_loads_partition(contract.name, month),
        ]
        qualified = {_qualified(conn, STORAGE_SCHEMA, n): n for n in candidates}
        # The first candidate that exists and that this worker may insert into, in one query.
        first = conn.execute(
            sa.text(
                "SELECT name FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, i)"
                " WHERE to_regclass(name) IS NOT NULL"
                " AND has_table_privilege(to_regclass(name), 'INSERT') ORDER BY i LIMIT 1"
            ),
            {"names": list(qualified)},
        ).scalar_one_or_none()
        if first is None:
            return storage
        return sa.table(
            qualified[first],
            *[sa.column(c.name, c.type) for c in storage.columns],
            schema=STORAGE_SCHEMA,
        )

    def _drop_attached_load(
        self, conn: Connection, contract: DatasetContract, job_id: str, previous: datetime
    ) -> bool:
        """Drop the job's previous load if it was attached whole (a re-load): a DROP, not a
        DELETE of its rows. False if it was not, or the DROP's lock was not granted in time
        (the caller then deletes the rows)."""
        month, _, _ = load_month(previous)
        name = storage_job_partition(contract.name, month, job_id)
        if not _exists(conn, STORAGE_SCHEMA, name):
            return False
        try:
            with conn.begin_nested(), _lock_timeout(conn):
                conn.execute(sa.text(f"DROP TABLE {_qualified(conn, STORAGE_SCHEMA, name)}"))
        except sa.exc.DBAPIError as exc:
            _log.warning(
                "dataset %s: job %s's previous load was not dropped (%s); deleting its rows",
                contract.name,
                job_id,
                _first_line(exc),
            )
            return False
        return True

    def _attach_staged(
        self,
        conn: Connection,
        contract: DatasetContract,
        job_id: str,
        tenant_id: str,
        loaded_at: datetime,
    ) -> int | None:
        """Make the job's staging partition storage's partition for this load; returns its rows,
        or None if the job is to be copied instead (too small, no month partition, or the
        attach refused). A partition staged unlogged is made logged first."""
        if self.attach_min_rows is None:
            return None
        staged = staging_partition(contract.name, job_id)
        month, start, end = load_month(loaded_at)
        month_name = storage_month_partition(contract.name, month)
        target = storage_job_partition(contract.name, month, job_id)
        # The staged table's persistence and whether the month and the job's partition exist,
        # in one round trip.
        persistence, month_exists, target_exists = conn.execute(
            sa.text(
                "SELECT (SELECT relpersistence FROM pg_class WHERE oid = to_regclass(:staged)),"
                " to_regclass(:month) IS NOT NULL, to_regclass(:target) IS NOT NULL"
            ),
            {
                "staged": _qualified(conn, STAGING_SCHEMA, staged),
                "month": _qualified(conn, STORAGE_SCHEMA, month_name),
                "target": _qualified(conn, STORAGE_SCHEMA, target),
            },
        ).one()
        if persistence is None or not month_exists:
            return None
        if target_exists:
            return None  # a previous load that could not be dropped: the copy lands next to it
        rows = conn.execute(
            sa.text(f"SELECT count(*) FROM {_qualified(conn, STAGING_SCHEMA, staged)}")
        ).scalar_one()
        if rows < self.attach_min_rows:
            return None
        try:
            with conn.begin_nested(), _lock_timeout(conn):
                self._move_into_storage(
                    conn, contract, staged, target, tenant_id, loaded_at, persistence == "u"
                )
                self._ensure_bound(conn, target, job_id, start, end)
                self.faults.hit("promote.attach", conn)
                conn.execute(
                    sa.text(
                        f"ALTER TABLE {_qualified(conn, STORAGE_SCHEMA, month_name)} "
                        f"ATTACH PARTITION {_qualified(conn, STORAGE_SCHEMA, target)} "
                        f"FOR VALUES IN ({_literal(conn, job_id)})"
                    )
                )
        except sa.exc.DBAPIError as exc:
            _log.warning(
                "dataset %s: job %s was copied into storage, not attached (%s)",
                contract.name,
                job_id,
                _first_line(exc),
            )
            return None
        return rows

    def _move_into_storage(
        self,
        conn: Connection,
        contract: DatasetContract,
        staged: str,
        target: str,
        tenant_id: str,
        loaded_at: datetime,
        unlogged: bool,
    ) -> None:
        """Detach the staging partition (made logged if it is not) and give it storage's
        columns, as catalog changes only:
        the dropped row number stays as dead bytes in each row, and the added columns' constant
        defaults become the stored rows' "missing" values, which stay when the defaults are
        dropped right after (so that nothing inserted later gets them silently)."""
        table = _qualified(conn, STAGING_SCHEMA, staged)
        conn.execute(
            sa.text(
                f"ALTER TABLE {_qualified(conn, STAGING_SCHEMA, contract.name)} "
                f"DETACH PARTITION {table}"
            )
        )
        if unlogged:
            conn.execute(sa.text(f"ALTER TABLE {table} SET LOGGED"))
        conn.execute(
            sa.text(
                f"ALTER TABLE {table} DROP COLUMN {ROW_NUMBER_COLUMN}, "
                f"ALTER COLUMN {JOB_ID_COLUMN} DROP DEFAULT, "
                f"ADD COLUMN {TENANT_COLUMN} varchar(64) NOT NULL "
                f"DEFAULT {_literal(conn, tenant_id)}, "
                f"ADD COLUMN {LOADED_AT_COLUMN} timestamptz NOT NULL "
                f"DEFAULT {_literal(conn, loaded_at.isoformat())}"
            )
        )
        conn.execute(
            sa.text(
                f"ALTER TABLE {table} ALTER COLUMN {TENANT_COLUMN} DROP DEFAULT, "
                f"ALTER COLUMN {LOADED_AT_COLUMN} DROP DEFAULT"
            )
        )
        conn.execute(sa.text(f"ALTER TABLE {table} RENAME TO {_quote(conn, target)}"))
        moved = _qualified(conn, STAGING_SCHEMA, target)
        conn.execute(sa.text(f"ALTER TABLE {moved} SET SCHEMA {STORAGE_SCHEMA}"))

    @staticmethod
    def _ensure_bound(
        conn: Connection, target: str, job_id: str, start: datetime, end: datetime
    ) -> None:
        """Prove the partition's bound with a CHECK constraint (one scan), so that ATTACH finds
        it proven and does not scan; it stays true, and stays, for the partition's life."""
        conn.execute(
            sa.text(
                f"ALTER TABLE {_qualified(conn, STORAGE_SCHEMA, target)} "
                f"ADD CONSTRAINT {_quote(conn, target[:55] + '_bound')} CHECK ("
                f"{JOB_ID_COLUMN} = {_literal(conn, job_id)} AND "
                f"{LOADED_AT_COLUMN} >= {_literal(conn, start.isoformat())} AND "
                f"{LOADED_AT_COLUMN} < {_literal(conn, end.isoformat())})"
            )
        )


class _lock_timeout:
    """`SET LOCAL lock_timeout` for a block, restored after (a savepoint's rollback restores it
    on its own; a release keeps it to the transaction's end)."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.before = self.conn.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar()
        self.conn.execute(sa.text(f"SET LOCAL lock_timeout = '{ATTACH_LOCK_TIMEOUT}'"))

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.conn.execute(
                sa.text("SELECT set_config('lock_timeout', :value, true)"),
                {"value": self.before},
            )


def _existing(conn: Connection, schema: str, names: list[str]) -> set[str]:
    """Which of the tables `names` (in `schema`) exist: one round trip."""
    qualified = {_qualified(conn, schema, n): n for n in names}
    found = conn.execute(
        sa.text(
            "SELECT name FROM unnest(CAST(:names AS text[])) AS t(name)"
            " WHERE to_regclass(name) IS NOT NULL"
        ),
        {"names": list(qualified)},
    ).scalars()
    return {qualified[q] for q in found}


def _exists(conn: Connection, schema: str, name: str) -> bool:
    return conn.execute(
        sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": _qualified(conn, schema, name)}
    ).scalar_one()


def _qualified(conn: Connection, schema: str, name: str) -> str:
    return f"{schema}.{_quote(conn, name)}"


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__
