"""Merge promotion: upsert by (tenant, primary key), in place, by changed keys, or by a rewrite of
the table, whichever the job's share of the table makes cheapest; and the statistics it needs."""

import contextlib
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.tables import (
    JOB_ID_COLUMN,
    LOADED_AT_COLUMN,
    STORAGE_SCHEMA,
    TENANT_COLUMN,
)
from dw_pipelines.core.warehouse.sql import _quote

_log = logging.getLogger(__name__)
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
# A merge job whose staged rows are at most this share of the stored ones (a daily delta into a
# big table) joins the table by primary-key look-ups only. The planner, costing random reads as
# disk seeks, prefers to scan and hash the whole table once the job has some 10^4 rows; on a
# cached table that made a 100,000-row delta cost 2.2 s against 1M stored rows and 8.4 s against
# 10M (two full scans), growing with the table instead of the delta. See `_delta_settings`.
DELTA_MAX_SHARE = 0.1
INDEX_LOOKUP_SETTINGS = {"enable_hashjoin": "off", "enable_mergejoin": "off", "jit": "off"}
# A merge job smaller than this never rewrites its storage table (see `Warehouse.promote`).
MERGE_REWRITE_MIN_ROWS = 100_000
# Staged rows a large merge looks up first to estimate how much of the table it changes.
MERGE_SAMPLE_ROWS = 10_000
# How long a rewrite waits for its locks on the storage table before merging in place instead;
# readers that arrive meanwhile queue behind the waiting lock, so keep it short.
MERGE_REWRITE_LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class _Rewrite:
    removed: int  # stored rows the merge replaces
    restore_key: str  # ALTER TABLE ... ADD CONSTRAINT: the primary key, built once at the end


class MergePromotion:
    """The merge half of `Warehouse.promote` (a mixin)."""

    def _promote_merge(
        self,
        conn: Connection,
        contract: DatasetContract,
        storage: sa.Table,
        staged: sa.FromClause,
        of_job: sa.ColumnElement,
        source: sa.Select,
        target_columns: list[str],
        tenant_id: str,
        loaded_at: datetime,
        newer: sa.Select | None = None,
    ) -> tuple[int, int, int, str, int]:
        """Upsert the staged rows by (tenant, primary key): in place, by changed keys, or by a
        rewrite of the table. `newer` selects the ids of jobs enqueued after this one that are
        already in storage: their rows stay (see `Warehouse.promote`). Returns (rows, inserted,
        deleted, strategy, kept_newer)."""
        rows = conn.execute(
            sa.select(sa.func.count()).select_from(staged).where(of_job)
        ).scalar_one()
        key_match, changed = _merge_predicates(storage, staged, contract, tenant_id)
        new_and_changed = storage.insert().from_select(
            target_columns,
            source.where(~sa.exists(sa.select(sa.literal(1)).where(key_match))),
        )
        if newer is not None:
            # Out of outbox order (rare): the plain statements, leaving the newer jobs' rows.
            # Their keys then still exist, so the insert skips them too.
            deleted, kept_newer = self._merge_under_newer(
                conn, storage, staged, of_job, key_match, changed, newer
            )
            return rows, _rowcount(conn, new_and_changed), deleted, "in-place", kept_newer
        strategy = "in-place"
        delta = self._delta_settings(conn, storage, rows)
        rewritten = self._rewrite_for_merge(
            conn, storage, staged, of_job, contract, tenant_id, rows
        )
        if rewritten is not None:
            strategy, deleted = "rewrite", rewritten.removed
            inserted = _rowcount(conn, new_and_changed)
            conn.execute(sa.text(rewritten.restore_key))
        elif not delta and self._large_in_place(conn, rows):
            # (A delta looks each staged key up anyway: the plain statements below do that
            # once each, where finding its changed keys first would add a third look-up.)
            deleted, inserted = self._merge_by_changed_keys(
                conn, storage, staged, source, target_columns, contract, tenant_id, loaded_at
            )
        elif self._postgres and _merge_statement_counted(conn):
            with _planner_settings(conn, delta):
                deleted, new = _merge_statement(
                    conn, storage, staged, contract, tenant_id, loaded_at
                )
                inserted = deleted + new
        elif self._postgres:
            with _planner_settings(conn, delta):
                # The changed rows in place, then the new keys (the changed ones exist now).
                update = _update_changed(storage, staged, contract, key_match, changed, loaded_at)
                deleted = _rowcount(conn, update)
                inserted = deleted + _rowcount(conn, new_and_changed)
        else:
            delete = self._delete_changed(storage, of_job, key_match, changed)
            deleted = conn.execute(delete).rowcount
            inserted = _rowcount(conn, new_and_changed)
        return rows, inserted, deleted, strategy, 0

    def _delta_settings(self, conn: Connection, storage: sa.Table, rows: int) -> dict[str, str]:
        """Planner settings for the statements that join the staged rows against the table:
        key look-ups for a job that is a small share of it (`DELTA_MAX_SHARE`), else none.

        Each staged row then costs a few index page reads whatever the table's size, where a
        hash join reads every stored row. The share keeps the look-ups where they are cheaper:
        measured on a cached 1M-row table, a look-up costs about as much as hashing 10-20
        stored rows. reltuples is the planner's own estimate (-1: never analyzed).
        """
        if not self._postgres:
            return {}
        estimated = conn.execute(
            sa.text("SELECT reltuples FROM pg_class WHERE oid = CAST(:name AS regclass)"),
            {"name": f"{STORAGE_SCHEMA}.{storage.name}"},
        ).scalar_one()
        return INDEX_LOOKUP_SETTINGS if rows <= DELTA_MAX_SHARE * estimated else {}

    def _delete_changed(
        self, storage: sa.Table, of_job: sa.ColumnElement, *conditions: sa.ColumnElement
    ) -> sa.Delete:
        """DELETE the stored rows that match a staged row (`of_job`) under `conditions`."""
        if self._postgres:
            # DELETE ... USING, not WHERE EXISTS: PostgreSQL plans the EXISTS form as a
            # hash semi-join over the whole storage table even for a few staged rows
            # (measured 0.58-0.73 s for 10,000 staged rows against 1M stored ones),
            # the join form as index look-ups from the staged rows (0.06-0.08 s), and
            # still as a hash join when most of the table changes. The staged keys are
            # unique (checked while staging), so both delete the same rows.
            return storage.delete().where(of_job, *conditions)
        # SQLite has no DELETE ... USING
        return storage.delete().where(
            sa.exists(sa.select(sa.literal(1)).where(of_job, *conditions))
        )

    def _merge_under_newer(
        self,
        conn: Connection,
        storage: sa.Table,
        staged: sa.FromClause,
        of_job: sa.ColumnElement,
        key_match: sa.ColumnElement,
        changed: sa.ColumnElement,
        newer: sa.Select,
    ) -> tuple[int, int]:
        """Delete the changed rows that no newer job wrote. Returns (deleted, kept_newer): the
        staged rows whose stored row a newer job wrote, and which therefore stay as they are."""
        by_newer = storage.c[JOB_ID_COLUMN].in_(newer.scalar_subquery())
        kept_newer = conn.execute(
            sa.select(sa.func.count())
            .select_from(staged)
            .where(of_job, sa.exists(sa.select(sa.literal(1)).where(key_match, by_newer)))
        ).scalar_one()
        delete = self._delete_changed(storage, of_job, key_match, changed, ~by_newer)
        return conn.execute(delete).rowcount, kept_newer

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
        loaded_at: datetime,
    ) -> tuple[int, int]:
        """Merge a large job in place with one join of the file against the table.

        The plain in-place statements each join every staged row against the table: the delete
        of changed rows and the insert of new and changed ones (0.8-0.9 s and 0.7 s for a 1M-row
        daily snapshot with 1 % changed). Here one join writes the keys of the new and changed
        rows to a temporary table, which is small when few rows change, and the delete and the
        insert then only join those keys (for that snapshot: 0.44 s for the join, 0.1 s for the
        rest); the changed rows are updated in place, the new ones inserted. Returns (deleted,
        inserted) as a delete of the changed rows and an insert of new and changed ones count
        them, the same as the plain statements give.
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
        # A job as large as its table (deltas merge with the plain statements): a hash join,
        # the same kind of join as the rewrite's kept rows.
        with _planner_settings(conn, BULK_ANTI_JOIN_SETTINGS):
            conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE dw_changed_keys ON COMMIT DROP AS {compiled}",
                compiled.params,
            )
        conn.execute(sa.text("ANALYZE dw_changed_keys"))  # a few rows or many: plan the joins
        found = sa.table(
            "dw_changed_keys", *[sa.column(k) for k in keys], sa.column("_dw_replaces", sa.Boolean)
        )
        found_staged = sa.and_(*[found.c[k] == staged.c[k] for k in keys])
        # The changed rows in place (the keys found replacing a stored row) ...
        replaced = sa.and_(key_match, found_staged, found.c["_dw_replaces"])
        deleted = _rowcount(
            conn, _update_changed(storage, staged, contract, replaced, sa.true(), loaded_at)
        )
        # ... then the new keys.
        is_new = sa.exists(sa.select(sa.literal(1)).where(found_staged, ~found.c["_dw_replaces"]))
        inserted = deleted + _rowcount(
            conn, storage.insert().from_select(target_columns, source.where(is_new))
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


def _rowcount(conn: Connection, statement: sa.Executable) -> int:
    return conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount


def _update_changed(
    storage: sa.Table,
    staged: sa.FromClause,
    contract: DatasetContract,
    key_match: sa.ColumnElement,
    changed: sa.ColumnElement,
    loaded_at: datetime,
) -> sa.Update:
    """UPDATE … FROM the staged rows every stored row whose values differ, with this job's
    lineage: what a delete of those rows and an insert of the staged ones leave (PostgreSQL).

    One key look-up per staged row instead of the delete's and the insert's two, and one new row
    version, which stays on its page when the page has room (a HOT update: no key entry), where
    the delete and insert write a new row and its key entry elsewhere. Measured for a 100,000-row
    delta (90 % changed keys strided over 1M stored rows): see docs/benchmarks.md, round 5."""
    values = {
        storage.c[c]: staged.c[c] for c in contract.column_names if c not in contract.primary_key
    }
    values[storage.c[JOB_ID_COLUMN]] = staged.c[JOB_ID_COLUMN]
    values[storage.c[LOADED_AT_COLUMN]] = sa.literal(loaded_at, sa.DateTime(timezone=True))
    return storage.update().where(key_match, changed).values(values)


def _merge_statement_counted(conn: Connection) -> bool:
    """Whether the server has MERGE (PostgreSQL 15) and counts row changes per transaction
    (`track_counts`, on by default: autovacuum needs it), which is how `_merge_statement` tells
    its updated rows from its inserted ones (MERGE ... RETURNING is PostgreSQL 17)."""
    if conn.dialect.server_version_info < (15,):
        return False
    return conn.execute(sa.text("SELECT current_setting('track_counts')::boolean")).scalar_one()


def _merge_statement(
    conn: Connection,
    storage: sa.Table,
    staged: sa.FromClause,
    contract: DatasetContract,
    tenant_id: str,
    loaded_at: datetime,
) -> tuple[int, int]:
    """One MERGE of the staged rows into storage by (tenant, primary key): the stored rows whose
    values differ are updated in place with this job's lineage (as `_update_changed`), the new
    keys inserted. Returns (updated, inserted).

    One join of the staged rows against the table where an UPDATE … FROM and an INSERT of the
    keys it did not find join twice: for a 100,000-row delta (90 % changed keys strided over
    10M stored rows) 2.19 s instead of 1.91 s + 0.88 s, the second join re-reading ~134,000
    pages that no longer fit in the server's buffers (docs/benchmarks.md, round 5)."""
    keys = contract.primary_key
    values = [c for c in contract.column_names if c not in keys]
    q = functools.partial(_quote, conn)
    target = f"{STORAGE_SCHEMA}.{q(storage.name)}"
    source = f"{q(staged.element.schema)}.{q(staged.element.name)}"
    match = " AND ".join(
        [f"stored.{q(TENANT_COLUMN)} = :tenant", *[f"stored.{q(k)} = staged.{q(k)}" for k in keys]]
    )
    differs = " OR ".join(
        [f"stored.{q(c)} IS DISTINCT FROM staged.{q(c)}" for c in values] or ["false"]
    )
    sets = ", ".join(
        [
            *[f"{q(c)} = staged.{q(c)}" for c in [*values, JOB_ID_COLUMN]],
            f"{q(LOADED_AT_COLUMN)} = :loaded_at",
        ]
    )
    inserted_columns = [*contract.column_names, JOB_ID_COLUMN]
    insert_names = ", ".join(q(c) for c in [*inserted_columns, TENANT_COLUMN, LOADED_AT_COLUMN])
    insert_values = ", ".join(
        [*[f"staged.{q(c)}" for c in inserted_columns], ":tenant", ":loaded_at"]
    )
    counted = sa.text(
        "SELECT n_tup_upd, n_tup_ins FROM pg_stat_xact_user_tables"
        " WHERE relid = CAST(:name AS regclass)"
    ).bindparams(name=f"{STORAGE_SCHEMA}.{storage.name}")
    updated_before, inserted_before = conn.execute(counted).one()
    merge = sa.text(
        f"MERGE INTO {target} AS stored USING {source} AS staged ON {match}"
        f" WHEN MATCHED AND ({differs}) THEN UPDATE SET {sets}"
        f" WHEN NOT MATCHED THEN INSERT ({insert_names}) VALUES ({insert_values})"
    ).bindparams(
        sa.bindparam("tenant", tenant_id, sa.String(64)),
        sa.bindparam("loaded_at", loaded_at, sa.DateTime(timezone=True)),
    )
    changed_rows = _rowcount(conn, merge)
    updated_after, inserted_after = conn.execute(counted).one()
    updated, inserted = updated_after - updated_before, inserted_after - inserted_before
    if updated + inserted != changed_rows:
        # Only something else writing to the table in this transaction (a row trigger of its
        # own) could do this; the rows are right, only the job's counts would be off.
        _log.warning(
            "MERGE into %s changed %d rows, the server counted %d updates and %d inserts",
            target,
            changed_rows,
            updated,
            inserted,
        )
    return updated, inserted


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
