"""A large merge rewrites its storage table; the result is what merging in place gives.

`Warehouse.promote` empties the table and puts back the kept rows when a merge job changes at
least `DW_MERGE_REWRITE_SHARE` of the stored rows (see `Warehouse._rewrite_for_merge`). These
tests lower `DW_MERGE_REWRITE_MIN_ROWS` so that a few rows take that path, and hold it to the
same storage content, lineage and counts as the in-place path, to tenant isolation, to a
rollback that leaves storage as it was, and to its fallbacks (locks not granted in time, a
table with triggers of its own).
"""

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from dw_pipelines.core.errors import TransientError
from dw_pipelines.core.faults import reset_fault_counters
from dw_pipelines.core.warehouse import promote_merge as warehouse_module
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings
from dw_pipelines_tests.test_load_paths import (
    CONTRACT,
    ROWS,
    csv_text,
    expected,
    normalized,
    storage,
)

UTC = dt.UTC
REWRITE_ALWAYS = {"DW_MERGE_REWRITE_SHARE": "0", "DW_MERGE_REWRITE_MIN_ROWS": "1"}
NEVER = {"DW_MERGE_REWRITE_SHARE": "off"}
# Of the 6 stored rows: 1 unchanged, 4 changed, 1 new -> 4/6 of the table changes.
SECOND = [
    ROWS[0],
    (2, "now set", *ROWS[1][2:]),
    (3, "was all null", None, None, None, None, None, None, None),
    (4, "changed too", *ROWS[3][2:]),
    (5, *ROWS[4][1:3], 2.5, *ROWS[4][4:]),
    (7, "new", 1, 2.0, True, dt.date(2026, 1, 1), dt.datetime(2026, 1, 1, tzinfo=UTC),
     Decimal("1"), Decimal("2")),
]  # fmt: skip


def service_for(url: str, tmp: Path, landing: Path, **env):
    contracts = tmp / "contracts"
    contracts.mkdir(parents=True, exist_ok=True)
    (contracts / "every_type.yaml").write_text(CONTRACT.format(mode="merge"))
    return build_service(
        make_settings(url, tmp / "home", landing, DW_DATASETS_PATH=contracts, **env)
    )


def merge(service, source: Path, run_id: str, tenant: str = "default"):
    job = service.queue.enqueue(
        {
            "dataset": "every_type",
            "source_uri": str(source),
            "business_date": "2026-11-24",
            "tenant_id": tenant,
        }
    ).job
    service.stage(service.start(job.job_id, run_id), run_id)
    return job, service.promote(job.job_id, run_id)


def primary_key(service) -> str | None:
    with service.warehouse.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'dw_storage.every_type'::regclass AND contype = 'p'"
            )
        ).scalar_one_or_none()


def write(landing: Path, name: str, rows) -> Path:
    path = landing / name
    path.write_text(csv_text(rows), encoding="utf-8")
    return path


def by_tenant_and_id(service) -> dict[tuple[str, int], dict]:
    return {(r["_dw_tenant_id"], r["id"]): r for r in storage(service)}


def record_statements(service, statements: list[str]) -> None:
    """Append every SQL statement the warehouse runs to `statements`."""
    sa.event.listen(
        service.warehouse.engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement),
    )


def two_merges(url: str, tmp: Path, landing: Path, statements: list[str] | None = None, **env):
    """First load ROWS, then SECOND; returns (first job, second job, result, rows by key)."""
    first, second = write(landing, "v1.csv", ROWS), write(landing, "v2.csv", SECOND)
    service = service_for(url, tmp, landing, **env)
    if statements is not None:
        record_statements(service, statements)
    try:
        job1, _ = merge(service, first, "run-1")
        job2, result = merge(service, second, "run-2")
        return job1, job2, result, by_tenant_and_id(service), primary_key(service)
    finally:
        dispose(service)


def test_rewrite_gives_the_in_place_content_lineage_and_counts(
    pg_url: str, pg_admin: sa.Engine, landing_dir: Path, tmp_path: Path
):
    # The same two jobs in a copy of the fresh database, merged in place.
    name = pg_url.rsplit("/", 1)[1]
    in_place_url = f"{pg_url}_in_place"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}_in_place" TEMPLATE "{name}"'))
    try:
        in_place_job1, _, in_place, in_place_rows, _ = two_merges(
            in_place_url, tmp_path / "b", landing_dir, **NEVER
        )
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}_in_place" WITH (FORCE)'))
    assert in_place.strategy == "in-place"
    assert (in_place.rows, in_place.deleted, in_place.inserted) == (6, 4, 5)

    job1, job2, rewritten, rows, key = two_merges(
        pg_url, tmp_path / "a", landing_dir, **REWRITE_ALWAYS
    )
    assert rewritten.strategy == "rewrite"
    assert (rewritten.rows, rewritten.deleted, rewritten.inserted) == (6, 4, 5)
    assert key == "PRIMARY KEY (_dw_tenant_id, id)"  # rebuilt after the rows went in

    want = {row[0]: row for row in [*ROWS, *SECOND]}
    assert [normalized(rows[k]) for k in sorted(rows)] == expected(
        [want[k] for _, k in sorted(rows)]
    )
    assert [normalized(r) for r in rows.values()] == [normalized(in_place_rows[k]) for k in rows]
    lineage = {k: r["_dw_job_id"] for (_, k), r in rows.items()}
    in_place_lineage = {k: r["_dw_job_id"] for (_, k), r in in_place_rows.items()}
    assert lineage[1] == job1.job_id and lineage[6] == job1.job_id  # unchanged / not in file
    assert {lineage[k] for k in (2, 3, 4, 5, 7)} == {job2.job_id}
    assert {k: v == in_place_job1.job_id for k, v in in_place_lineage.items()} == {
        k: v == job1.job_id for k, v in lineage.items()
    }


def test_one_merge_statement_gives_what_update_then_insert_gives(
    pg_url: str, pg_admin: sa.Engine, landing_dir: Path, tmp_path: Path
):
    # PostgreSQL 15 merges in place with one MERGE (`promote_merge._merge_statement`), telling
    # updates from inserts by the server's per-transaction counts; without those counts
    # (track_counts off, as on a server that cannot count them) the UPDATE ... FROM and INSERT
    # of new keys run instead. Both give the same rows, lineage and counts.
    name = pg_url.rsplit("/", 1)[1]
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}_uncounted" TEMPLATE "{name}"'))
        conn.execute(sa.text(f'ALTER DATABASE "{name}_uncounted" SET track_counts = off'))
    try:
        plain_statements: list[str] = []
        _, _, plain, plain_rows, _ = two_merges(
            f"{pg_url}_uncounted", tmp_path / "b", landing_dir, plain_statements, **NEVER
        )
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}_uncounted" WITH (FORCE)'))
    assert not any(s.startswith("MERGE") for s in plain_statements)
    assert any(s.startswith("UPDATE dw_storage.every_type") for s in plain_statements)

    statements: list[str] = []
    job1, job2, merged, rows, _ = two_merges(
        pg_url, tmp_path / "a", landing_dir, statements, **NEVER
    )
    assert sum(s.startswith("MERGE INTO dw_storage.every_type") for s in statements) == 2
    assert not any(s.startswith("UPDATE dw_storage.every_type") for s in statements)
    assert (merged.strategy, merged.rows, merged.deleted, merged.inserted) == (
        plain.strategy,
        plain.rows,
        plain.deleted,
        plain.inserted,
    )
    assert (merged.deleted, merged.inserted) == (4, 5)
    assert [normalized(r) for r in rows.values()] == [normalized(plain_rows[k]) for k in rows]
    lineage = {k: r["_dw_job_id"] for (_, k), r in rows.items()}
    assert lineage[1] == job1.job_id and lineage[6] == job1.job_id  # unchanged / not in file
    assert {lineage[k] for k in (2, 3, 4, 5, 7)} == {job2.job_id}


def test_a_large_in_place_merge_finds_its_changed_keys_first_with_the_same_result(
    pg_url: str, pg_admin: sa.Engine, landing_dir: Path, tmp_path: Path
):
    # From DW_MERGE_REWRITE_MIN_ROWS staged rows, an in-place merge joins the file against the
    # table once (into dw_changed_keys) instead of once for the delete and once for the insert.
    name = pg_url.rsplit("/", 1)[1]
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}_plain" TEMPLATE "{name}"'))
    try:
        plain_job1, _, plain, plain_rows, _ = two_merges(
            f"{pg_url}_plain", tmp_path / "b", landing_dir, **NEVER
        )
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE "{name}_plain" WITH (FORCE)'))

    statements: list[str] = []
    job1, job2, keyed, rows, _ = two_merges(
        pg_url, tmp_path / "a", landing_dir, statements, **NEVER, DW_MERGE_REWRITE_MIN_ROWS="1"
    )
    assert any("CREATE TEMPORARY TABLE dw_changed_keys" in s for s in statements)
    assert (
        (keyed.strategy, keyed.rows, keyed.deleted, keyed.inserted)
        == (
            plain.strategy,
            plain.rows,
            plain.deleted,
            plain.inserted,
        )
        == ("in-place", 6, 4, 5)
    )
    assert [normalized(r) for r in rows.values()] == [normalized(plain_rows[k]) for k in rows]
    lineage = {k: r["_dw_job_id"] for (_, k), r in rows.items()}
    assert lineage[1] == job1.job_id and lineage[6] == job1.job_id  # unchanged / not in file
    assert {lineage[k] for k in (2, 3, 4, 5, 7)} == {job2.job_id}
    plain_lineage = {k: r["_dw_job_id"] == plain_job1.job_id for (_, k), r in plain_rows.items()}
    assert plain_lineage == {k: v == job1.job_id for k, v in lineage.items()}


def test_a_small_share_of_changes_merges_in_place_and_a_large_one_rewrites(
    pg_url: str, landing_dir: Path, tmp_path: Path
):
    one_change = [ROWS[0], (2, "now set", *ROWS[1][2:]), *ROWS[2:]]
    service = service_for(pg_url, tmp_path, landing_dir, DW_MERGE_REWRITE_MIN_ROWS="1")
    try:
        _, first = merge(service, write(landing_dir, "v1.csv", ROWS), "run-1")
        assert first.strategy == "rewrite"  # an empty table: every row is new
        _, small = merge(service, write(landing_dir, "one.csv", one_change), "run-2")
        assert (small.strategy, small.deleted, small.inserted) == ("in-place", 1, 1)
        _, large = merge(service, write(landing_dir, "v2.csv", SECOND), "run-3")
        # Row 2 already reads "now set": 3 of the 6 stored rows change (the share is 0.5).
        assert (large.strategy, large.deleted, large.inserted) == ("rewrite", 3, 4)
        assert len(storage(service)) == 7
    finally:
        dispose(service)


def snapshot(landing: Path, name: str, rows: int, changed: set[int]) -> Path:
    """A full export of `rows` keys; the keys in `changed` carry a new value."""
    path = landing / name
    lines = [f"{n},{'new' if n in changed else 'v'}{n},{n},,,,,,\n" for n in range(rows)]
    path.write_text("id,s,i,f,b,d,ts,amount,big\n" + "".join(lines), encoding="utf-8")
    return path


def test_a_snapshot_with_few_changes_skips_the_rewrite_attempt(
    pg_url: str, landing_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A daily full export with a few changed rows is as large as the table, but a sample of it
    # shows that a rewrite would not pay: the kept-rows query never runs.
    monkeypatch.setattr(warehouse_module, "MERGE_SAMPLE_ROWS", 400)  # a part of 3,000 rows
    service = service_for(pg_url, tmp_path, landing_dir, DW_MERGE_REWRITE_MIN_ROWS="1")
    statements: list[str] = []
    record_statements(service, statements)
    try:
        job1, first = merge(service, snapshot(landing_dir, "day1.csv", 3000, set()), "run-1")
        assert first.strategy == "rewrite"  # an empty table
        assert any("dw_kept_rows" in s for s in statements)

        statements.clear()
        few = {n for n in range(3000) if n % 50 == 7}  # 60 rows, 2 %
        job2, second = merge(service, snapshot(landing_dir, "day2.csv", 3000, few), "run-2")
        assert (second.strategy, second.deleted, second.inserted) == ("in-place", 60, 60)
        assert any("TABLESAMPLE system" in s for s in statements)  # the look it took instead
        assert not any("dw_kept_rows" in s for s in statements)
        assert any("dw_changed_keys" in s for s in statements)  # one join of file and table
        rows = by_tenant_and_id(service)
        assert len(rows) == 3000
        assert rows[("default", 7)]["s"] == "new7"
        assert rows[("default", 7)]["_dw_job_id"] == job2.job_id
        assert rows[("default", 8)]["_dw_job_id"] == job1.job_id  # unchanged: keeps its lineage

        statements.clear()
        # The other 2,940 rows get new values and the 60 their old ones: every row changes.
        every = set(range(3000)) - few
        _, third = merge(service, snapshot(landing_dir, "day3.csv", 3000, every), "run-3")
        assert (third.strategy, third.deleted, third.inserted) == ("rewrite", 3000, 3000)
        assert any("dw_kept_rows" in s for s in statements)
        assert len(storage(service)) == 3000
    finally:
        dispose(service)


def test_rewrite_keeps_other_tenants_rows_and_their_lineage(
    pg_url: str, landing_dir: Path, tmp_path: Path
):
    service = service_for(pg_url, tmp_path, landing_dir, **REWRITE_ALWAYS)
    try:
        first = write(landing_dir, "v1.csv", ROWS)
        acme, _ = merge(service, first, "run-1", tenant="acme")
        merge(service, first, "run-2", tenant="globex")
        globex2, result = merge(service, write(landing_dir, "v2.csv", SECOND), "run-3", "globex")
        rows = by_tenant_and_id(service)
    finally:
        dispose(service)
    assert (result.strategy, result.deleted, result.inserted) == ("rewrite", 4, 5)
    acme_rows = {k: r for (t, k), r in rows.items() if t == "acme"}
    assert [normalized(acme_rows[k]) for k in sorted(acme_rows)] == expected(ROWS)
    assert {r["_dw_job_id"] for r in acme_rows.values()} == {acme.job_id}
    assert sorted(k for t, k in rows if t == "globex") == [1, 2, 3, 4, 5, 6, 7]
    assert rows[("globex", 7)]["_dw_job_id"] == globex2.job_id


def test_a_failed_rewrite_leaves_storage_as_it_was(pg_url: str, landing_dir: Path, tmp_path: Path):
    service = service_for(pg_url, tmp_path, landing_dir, **REWRITE_ALWAYS)
    try:
        merge(service, write(landing_dir, "v1.csv", ROWS), "run-1")
        before = [(normalized(r), r["_dw_job_id"], r["_dw_loaded_at"]) for r in storage(service)]
    finally:
        dispose(service)
    reset_fault_counters()
    service = service_for(
        pg_url, tmp_path, landing_dir, DW_FAULT_INJECTION="promote.before_commit=raise",
        **REWRITE_ALWAYS,
    )  # fmt: skip
    try:
        with pytest.raises(TransientError, match=r"promote\.before_commit"):
            merge(service, write(landing_dir, "v2.csv", SECOND), "run-2")
        after = [(normalized(r), r["_dw_job_id"], r["_dw_loaded_at"]) for r in storage(service)]
        assert after == before
        assert primary_key(service) == "PRIMARY KEY (_dw_tenant_id, id)"
    finally:
        dispose(service)
        reset_fault_counters()


def test_rewrite_keeps_the_table_its_grants_and_the_views_on_it(
    pg_url: str, landing_dir: Path, tmp_path: Path
):
    service = service_for(pg_url, tmp_path, landing_dir, **REWRITE_ALWAYS)
    try:
        merge(service, write(landing_dir, "v1.csv", ROWS), "run-1")
        with service.warehouse.engine.begin() as conn:
            oid = conn.execute(sa.text("SELECT 'dw_storage.every_type'::regclass::oid")).scalar()
            conn.execute(
                sa.text("CREATE VIEW public.every_s AS SELECT id, s FROM dw_storage.every_type")
            )
            conn.execute(sa.text("GRANT SELECT ON dw_storage.every_type TO pg_monitor"))
        _, result = merge(service, write(landing_dir, "v2.csv", SECOND), "run-2")
        assert result.strategy == "rewrite"
        with service.warehouse.engine.connect() as conn:
            assert (
                conn.execute(sa.text("SELECT 'dw_storage.every_type'::regclass::oid")).scalar()
                == oid
            )
            assert conn.execute(
                sa.text(
                    "SELECT has_table_privilege('pg_monitor', 'dw_storage.every_type', 'SELECT')"
                )
            ).scalar()
            view = dict(conn.execute(sa.text("SELECT id, s FROM public.every_s")).all())
        assert view[2] == "now set" and view[7] == "new" and len(view) == 7
    finally:
        dispose(service)


def test_rewrite_falls_back_to_in_place_when_readers_hold_the_table(
    pg_url: str, landing_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(warehouse_module, "MERGE_REWRITE_LOCK_TIMEOUT", "200ms")
    service = service_for(pg_url, tmp_path, landing_dir, **REWRITE_ALWAYS)
    reader = sa.create_engine(service.warehouse.engine.url)
    try:
        merge(service, write(landing_dir, "v1.csv", ROWS), "run-1")
        with reader.connect() as held:
            # An open transaction that read the table: its ACCESS SHARE lock stays until it ends.
            assert held.execute(sa.text("SELECT count(*) FROM dw_storage.every_type")).scalar() == 6
            _, result = merge(service, write(landing_dir, "v2.csv", SECOND), "run-2")
            held.rollback()
        assert (result.strategy, result.deleted, result.inserted) == ("in-place", 4, 5)
        assert len(storage(service)) == 7
    finally:
        reader.dispose()
        dispose(service)


def test_a_table_with_its_own_triggers_is_merged_in_place(
    pg_url: str, landing_dir: Path, tmp_path: Path
):
    # TRUNCATE would not fire a row trigger someone put on storage (e.g. an audit trigger). In
    # place, a changed row is an UPDATE (a delete of it before round 5): both are recorded.
    service = service_for(pg_url, tmp_path, landing_dir, **REWRITE_ALWAYS)
    try:
        merge(service, write(landing_dir, "v1.csv", ROWS), "run-1")
        with service.warehouse.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE public.deleted_ids (id bigint)"))
            conn.execute(
                sa.text(
                    "CREATE FUNCTION public.note_delete() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN INSERT INTO public.deleted_ids VALUES (OLD.id); RETURN OLD; END $$"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER note_delete AFTER UPDATE OR DELETE ON dw_storage.every_type "
                    "FOR EACH ROW EXECUTE FUNCTION public.note_delete()"
                )
            )
        _, result = merge(service, write(landing_dir, "v2.csv", SECOND), "run-2")
        with service.warehouse.engine.connect() as conn:
            deleted = sorted(conn.execute(sa.text("SELECT id FROM public.deleted_ids")).scalars())
    finally:
        dispose(service)
    assert result.strategy == "in-place"
    assert deleted == [2, 3, 4, 5]
