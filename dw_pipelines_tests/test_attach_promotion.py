"""Attach promotion: a large append job's staging table becomes a partition of storage
(`core/warehouse/promote_attach.py`) and must read exactly like a job copied by
`INSERT … SELECT`: the same rows and lineage, the same table for views and grants, the same
re-loads. When it cannot attach without waiting (a reader holds what it needs) it copies.

The tests lower DW_ATTACH_MIN_ROWS so that a few thousand rows take the path; the benchmark
(benchmarks/ingest.py --methods ingest-attach) measures it at millions.
"""

import datetime as dt
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from dw_pipelines.core.errors import ConfigurationError
from dw_pipelines.core.tables import staging_partition, storage_job_partition
from dw_pipelines.core.warehouse import promote_attach, staging
from dw_pipelines.core.warehouse.promote_attach import ATTACH_LOCK_TIMEOUT, load_month
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings

CONTRACT = """\
name: events
write_mode: append
primary_key: [id]
columns:
  - {name: id, type: int64, nullable: false}
  - {name: name, type: string}
  - {name: amount, type: "decimal(12,2)"}
  - {name: at, type: timestamp}
"""
COLUMNS = "id, name, amount, at"
TENANT = "acme"
MIN_ROWS = 1000
# The table readers use: its object id and grants.
IDENTITY = "SELECT oid, relacl::text FROM pg_class WHERE oid = 'dw_storage.events'::regclass"
LOCK_TIMEOUT_SECONDS = float(ATTACH_LOCK_TIMEOUT.removesuffix("s"))


@pytest.fixture
def make_service(pg_url: str, tmp_path: Path, landing_dir: Path):
    """A service of its own (a run process) per name, with the contract given."""
    opened = []

    def make(name: str, contract: str = CONTRACT, **env):
        folder = tmp_path / f"contracts-{name}"
        folder.mkdir()
        (folder / "events.yaml").write_text(contract)
        settings = make_settings(
            pg_url, tmp_path / name, landing_dir, DW_DATASETS_PATH=folder, **env
        )
        service = build_service(settings)
        opened.append(service)
        return service

    yield make
    for service in opened:
        dispose(service)


def write_rows(landing: Path, name: str, count: int, label: str = "x", extra: bool = False) -> Path:
    path = landing / name
    header = "id,name,amount,at" + (",note" if extra else "")
    lines = [header]
    for i in range(1, count + 1):
        line = f"{i},{label}-{i},{i % 997}.{i % 100:02d},2026-12-0{1 + i % 3}T0{i % 10}:15:00Z"
        lines.append(line + (f",n{i}" if extra else ""))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load(service, source: Path, run_id: str, job_id: str | None = None) -> tuple[str, dict]:
    """Stage and promote `source` as a new job (or again as `job_id`); returns the job id and
    the PROMOTED event's details."""
    if job_id is None:
        job_id = service.queue.enqueue(
            {
                "dataset": "events",
                "source_uri": str(source),
                "business_date": "2026-12-03",
                "tenant_id": TENANT,
            }
        ).job.job_id
    else:
        service.queue.requeue(job_id, run_id, "alice", allow_completed=True)
    service.stage(service.start(job_id, run_id), run_id)
    service.promote(job_id, run_id)
    promoted = [e for e in service.queue.audit_trail(job_id) if e.event == "PROMOTED"]
    return job_id, promoted[-1].details


def rows_of(service, job_id: str) -> list[tuple]:
    with service.warehouse.engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT {COLUMNS}, _dw_tenant_id, _dw_job_id, _dw_loaded_at "
                "FROM dw_storage.events WHERE _dw_job_id = :job ORDER BY id"
            ),
            {"job": job_id},
        ).all()


def tree(service) -> dict[str, tuple[str, int]]:
    """Storage's partitions: name -> (parent, rows)."""
    with service.warehouse.engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT relid::regclass::text, parentrelid::regclass::text, isleaf"
                " FROM pg_partition_tree('dw_storage.events') WHERE parentrelid IS NOT NULL"
            )
        ).all()
        return {
            name.removeprefix("dw_storage."): (
                parent.removeprefix("dw_storage."),
                conn.execute(sa.text(f"SELECT count(*) FROM {name}")).scalar_one() if leaf else -1,
            )
            for name, parent, leaf in found
        }


def loaded_at_of(service, job_id: str) -> dt.datetime:
    with service.warehouse.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT loaded_at FROM dw_storage._dw_loads WHERE job_id = :job"),
            {"job": job_id},
        ).scalar_one()


def staging_left(service) -> list[str]:
    with service.warehouse.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'dw_staging' AND relname LIKE 'events\\_\\_%'")
        ).scalars().all()  # fmt: skip


class Reader:
    """Another session reading storage in an open transaction (a long report): it holds ACCESS
    SHARE on the table and each partition it read until `release`."""

    def __init__(self, url: str, statement: str = "SELECT count(*) FROM dw_storage.events"):
        self.engine = sa.create_engine(url)
        self.conn = self.engine.connect()
        self.conn.execute(sa.text(statement))

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()
        self.engine.dispose()


def test_a_large_job_is_attached_and_reads_exactly_like_a_copied_one(
    make_service, landing_dir: Path, pg_url: str
):
    copying = make_service("copy", DW_ATTACH_MIN_ROWS="off")
    attaching = make_service("attach", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    source = write_rows(landing_dir, "events.csv", 3000)

    copied, copy_details = load(copying, source, "run-copy")
    # Readers set up on the table as it was: a view over it and a reporting role's grant.
    with copying.warehouse.engine.begin() as conn:
        conn.execute(sa.text("CREATE VIEW public.event_totals AS SELECT * FROM dw_storage.events"))
        conn.execute(sa.text("GRANT USAGE ON SCHEMA dw_storage TO pg_monitor"))
        conn.execute(sa.text("GRANT SELECT ON dw_storage.events TO pg_monitor"))
        before = conn.execute(sa.text(IDENTITY)).one()

    attached, attach_details = load(attaching, source, "run-attach")

    assert copy_details["strategy"] == "insert"
    assert attach_details["strategy"] == "attach"
    assert attach_details["rows"] == attach_details["inserted"] == 3000
    # The same rows and lineage, the job's own load time and tenant on every row.
    copy_rows, attach_rows = rows_of(copying, copied), rows_of(attaching, attached)
    assert len(attach_rows) == 3000
    assert [r[:5] for r in attach_rows] == [r[:5] for r in copy_rows]
    assert attach_rows[41][:5] == (42, "x-42", Decimal("42.42"), attach_rows[41][3], TENANT)
    assert {(r[5], r[6]) for r in attach_rows} == {(attached, loaded_at_of(attaching, attached))}
    assert {(r[5], r[6]) for r in copy_rows} == {(copied, loaded_at_of(copying, copied))}
    # The table readers use is the same object with the same grants; both see both jobs.
    month = load_month(loaded_at_of(attaching, attached))[0]
    with attaching.warehouse.engine.begin() as conn:
        after = conn.execute(sa.text(IDENTITY)).one()
        assert after == before
        assert conn.execute(sa.text("SELECT count(*) FROM public.event_totals")).scalar() == 6000
        conn.execute(sa.text("SET LOCAL ROLE pg_monitor"))
        assert conn.execute(sa.text("SELECT count(*) FROM dw_storage.events")).scalar() == 6000
    # Where the rows are: the copied job in the month's small loads, the attached one its own
    # partition of the month; the month after made ahead, empty; nothing left in staging.
    job_partition = storage_job_partition("events", month, attached)
    following = load_month(load_month(loaded_at_of(attaching, attached))[2])[0]
    assert tree(attaching) == {
        "events__default": ("events", 0),
        f"events__p{month}": ("events", -1),
        f"events__p{month}_small": (f"events__p{month}", 3000),
        job_partition: (f"events__p{month}", 3000),
        f"events__p{following}": ("events", -1),
        f"events__p{following}_small": (f"events__p{following}", 0),
    }
    assert staging_left(attaching) == []
    # A partition of its own, logged like the rest of storage, with storage's columns only.
    with attaching.warehouse.engine.connect() as conn:
        persistence = conn.execute(
            sa.text("SELECT relpersistence FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": f"dw_storage.{job_partition}"},
        ).scalar_one()
        columns = conn.execute(
            sa.text(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:name)"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attname"
            ),
            {"name": f"dw_storage.{job_partition}"},
        ).scalars().all()  # fmt: skip
    assert persistence == "p"
    assert columns == sorted(["id", "name", "amount", "at", "_dw_job_id", "_dw_tenant_id",
                              "_dw_loaded_at"])  # fmt: skip


def test_a_small_job_and_a_file_of_few_bytes_are_copied(make_service, landing_dir: Path):
    service = make_service("attach", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    # 999 rows: staged logged (45 KB: more than MIN_ROWS x LOGGED_MIN_BYTES_PER_ROW bytes), then
    # copied for its rows.
    small, details = load(service, write_rows(landing_dir, "small.csv", MIN_ROWS - 1), "run-1")
    assert details["strategy"] == "insert"
    month = load_month(loaded_at_of(service, small))[0]
    assert tree(service)[f"events__p{month}_small"][1] == MIN_ROWS - 1
    # At the threshold it attaches.
    exact, details = load(service, write_rows(landing_dir, "exact.csv", MIN_ROWS), "run-2")
    assert details["strategy"] == "attach"
    assert tree(service)[storage_job_partition("events", month, exact)][1] == MIN_ROWS


def test_a_job_staged_unlogged_is_made_logged_to_attach(
    make_service, landing_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """A file smaller than expected for its rows (narrow rows, a compressed Parquet file) is
    staged as unlogged scratch; if it reaches the threshold all the same, it is attached after
    a SET LOGGED, and its rows are as durable as the rest of storage."""
    monkeypatch.setattr(promote_attach, "LOGGED_MIN_BYTES_PER_ROW", 1000)
    monkeypatch.setattr(staging, "LOGGED_SMALL_SOURCE_BYTES", 0)  # nor staged logged as small
    service = make_service("attach", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    source = write_rows(landing_dir, "narrow.csv", 1500)  # ~45 bytes a row: under 1000
    job_id = service.queue.enqueue(
        {"dataset": "events", "source_uri": str(source), "business_date": "2026-12-03",
         "tenant_id": TENANT}
    ).job.job_id  # fmt: skip
    service.stage(service.start(job_id, "run-1"), "run-1")
    with service.warehouse.engine.connect() as conn:
        staged = conn.execute(
            sa.text("SELECT relpersistence FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": f"dw_staging.{staging_partition('events', job_id)}"},
        ).scalar_one()
    assert staged == "u"
    result = service.promote(job_id, "run-1")
    assert (result.strategy, result.rows) == ("attach", 1500)
    month = load_month(loaded_at_of(service, job_id))[0]
    partition = storage_job_partition("events", month, job_id)
    with service.warehouse.engine.connect() as conn:
        persistence = conn.execute(
            sa.text("SELECT relpersistence FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": f"dw_storage.{partition}"},
        ).scalar_one()
    assert persistence == "p"
    assert len(rows_of(service, job_id)) == 1500


def test_a_copied_job_is_staged_logged_when_small_and_unlogged_when_not(
    make_service, landing_dir: Path
):
    """Staging without attach (DW_ATTACH_MIN_ROWS off) is UNLOGGED scratch, except for a file
    under LOGGED_SMALL_SOURCE_BYTES, whose few rows cost less WAL than an unlogged table's init
    forks cost at CREATE. Both promote the same way."""
    service = make_service("copied", DW_ATTACH_MIN_ROWS="off")
    persistence = {}
    for name, count in (("small.csv", 10), ("larger.csv", 3000)):
        source = write_rows(landing_dir, name, count, name[0])
        assert (source.stat().st_size < staging.LOGGED_SMALL_SOURCE_BYTES) == (count == 10)
        job_id = service.queue.enqueue(
            {"dataset": "events", "source_uri": str(source), "business_date": "2026-12-03",
             "tenant_id": TENANT}
        ).job.job_id  # fmt: skip
        service.stage(service.start(job_id, "run-1"), "run-1")
        with service.warehouse.engine.connect() as conn:
            persistence[name] = conn.execute(
                sa.text("SELECT relpersistence FROM pg_class WHERE oid = to_regclass(:name)"),
                {"name": f"dw_staging.{staging_partition('events', job_id)}"},
            ).scalar_one()
        result = service.promote(job_id, "run-1")
        assert (result.strategy, result.rows, len(rows_of(service, job_id))) == (
            "insert",
            count,
            count,
        )
    assert persistence == {"small.csv": "p", "larger.csv": "u"}


def test_a_reload_drops_the_jobs_partition_and_attaches_the_new_rows(
    make_service, landing_dir: Path
):
    service = make_service("attach", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    job, first = load(service, write_rows(landing_dir, "v1.csv", 3000, "v1"), "run-1")
    assert first["strategy"] == "attach"
    other, _ = load(service, write_rows(landing_dir, "other.csv", 1500, "o"), "run-2")

    # outbox retry / a UI re-execution of the job, with the file corrected meanwhile.
    again, second = load(service, write_rows(landing_dir, "v1.csv", 2500, "v2"), "run-3", job)
    assert again == job
    assert (second["strategy"], second["deleted"], second["inserted"]) == ("attach", 3000, 2500)
    rows = rows_of(service, job)
    assert len(rows) == 2500 and {r[1].split("-")[0] for r in rows} == {"v2"}
    assert len(rows_of(service, other)) == 1500  # the other job is untouched
    month = load_month(loaded_at_of(service, job))[0]
    partitions = tree(service)
    assert partitions[storage_job_partition("events", month, job)] == (f"events__p{month}", 2500)
    assert len([p for p in partitions if "_j" in p]) == 2  # the two jobs; no leftover


def test_readers_never_wait_on_an_attach_longer_than_its_lock_timeout(
    make_service, landing_dir: Path, pg_url: str
):
    """A report reading the table holds a lock that the attach (and a re-load's DROP) would
    wait for, and every later reader would queue behind that wait. Instead of waiting, the job
    is copied, and its rows are the same."""
    service = make_service("attach", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    job, _ = load(service, write_rows(landing_dir, "first.csv", 2000, "a"), "run-1")
    reader = Reader(pg_url)
    try:
        started = time.monotonic()
        second, details = load(service, write_rows(landing_dir, "second.csv", 2000, "b"), "run-2")
        new_job_seconds = time.monotonic() - started
        started = time.monotonic()
        _, reloaded = load(service, write_rows(landing_dir, "first.csv", 1200, "c"), "run-3", job)
        reload_seconds = time.monotonic() - started
        # The reader, never blocked, sees what committed: both jobs, the first one re-loaded.
        count = reader.conn.execute(sa.text("SELECT count(*) FROM dw_storage.events")).scalar()
        assert count == 2000 + 1200
    finally:
        reader.release()
    assert details["strategy"] == "insert"
    assert LOCK_TIMEOUT_SECONDS <= new_job_seconds < LOCK_TIMEOUT_SECONDS + 5
    # The re-load could not drop the old partition: it deleted its rows and copied the new
    # ones into it (the month lists the job there already).
    assert (reloaded["strategy"], reloaded["deleted"], reloaded["inserted"]) == (
        "insert",
        2000,
        1200,
    )
    assert reload_seconds < LOCK_TIMEOUT_SECONDS + 5
    assert [r[1] for r in rows_of(service, job)] == [f"c-{i}" for i in range(1, 1201)]
    assert len(rows_of(service, second)) == 2000
    assert staging_left(service) == []
    # Once the reader is gone, the next re-load attaches again.
    _, third = load(service, write_rows(landing_dir, "first.csv", 1100, "d"), "run-4", job)
    assert (third["strategy"], third["deleted"]) == ("attach", 1200)
    assert len(rows_of(service, job)) == 1100


def at(year: int, month: int, day: int = 10):
    """A clock stopped at that day (the promotion's load time)."""
    moment = dt.datetime(year, month, day, 8, 0, tzinfo=dt.UTC)
    return lambda: moment


def test_months_are_made_ahead_and_one_that_cannot_be_made_loads_into_the_default(
    make_service, landing_dir: Path, pg_url: str
):
    service = make_service("attach", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    service.queue.clock = at(2027, 1)
    january, _ = load(service, write_rows(landing_dir, "jan.csv", 1500, "jan"), "run-1")
    # January's load made February too: its first load need not take the table's locks.
    assert {"events__p202701", "events__p202702"} <= set(tree(service))
    # A new process (every run is one) in February attaches into the month made ahead, even
    # with a report holding the table against schema changes (a VACUUM, an ANALYZE, an ALTER).
    blocker = Reader(pg_url, "LOCK TABLE dw_storage.events IN SHARE UPDATE EXCLUSIVE MODE")
    try:
        february = make_service("february", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
        february.queue.clock = at(2027, 2)
        job, details = load(february, write_rows(landing_dir, "feb.csv", 1500, "feb"), "run-2")
        assert details["strategy"] == "insert"  # the ATTACH needs the lock the report holds
        assert tree(february)["events__p202702_small"][1] == 1500
        # April, not made ahead (nothing loaded in March), cannot be made under that lock: its
        # rows go to the table's DEFAULT partition, copied, within the lock timeout.
        april = make_service("april", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
        april.queue.clock = at(2027, 4)
        started = time.monotonic()
        job, details = load(april, write_rows(landing_dir, "apr.csv", 1500, "apr"), "run-3")
        seconds = time.monotonic() - started
    finally:
        blocker.release()
    assert details["strategy"] == "insert"
    assert seconds < 2 * LOCK_TIMEOUT_SECONDS + 5
    assert tree(april)["events__default"][1] == 1500
    assert "events__p202704" not in tree(april)
    assert loaded_at_of(april, job) == at(2027, 4)()
    # April's next load (a new process), with the report gone, makes the month and moves the
    # rows parked in the DEFAULT into it; its own job attaches.
    later = make_service("april-later", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    later.queue.clock = at(2027, 4, 20)
    second, details = load(later, write_rows(landing_dir, "apr2.csv", 1200, "apr2"), "run-4")
    assert details["strategy"] == "attach"
    partitions = tree(later)
    assert partitions["events__default"][1] == 0
    assert partitions["events__p202704_small"] == ("events__p202704", 1500)
    assert partitions[storage_job_partition("events", "202704", second)][1] == 1200
    assert len(rows_of(later, job)) == 1500
    # Once the report is gone, the next month's first load makes its month and attaches.
    may = make_service("may", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    may.queue.clock = at(2027, 5, 1)
    job, details = load(may, write_rows(landing_dir, "may.csv", 1500, "may"), "run-5")
    assert details["strategy"] == "attach"
    assert tree(may)[storage_job_partition("events", "202705", job)] == ("events__p202705", 1500)
    with may.warehouse.engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.text(
                    "SELECT to_char(_dw_loaded_at AT TIME ZONE 'UTC', 'YYYYMM'), count(*)"
                    " FROM dw_storage.events GROUP BY 1"
                )
            ).all()
        )
    assert counts == {"202701": 1500, "202702": 1500, "202704": 2700, "202705": 1500}
    assert len(rows_of(may, january)) == 1500


def test_schema_changes_reach_attached_partitions_and_a_key_is_refused(
    make_service, landing_dir: Path
):
    service = make_service("v1", DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    first, details = load(service, write_rows(landing_dir, "v1.csv", 1200), "run-1")
    assert details["strategy"] == "attach"
    # A new optional column: added to the parent, so to every partition, the attached one too.
    widened = CONTRACT + "  - {name: note, type: string}\n"
    service = make_service("v2", widened, DW_ATTACH_MIN_ROWS=str(MIN_ROWS))
    second, details = load(service, write_rows(landing_dir, "v2.csv", 1300, extra=True), "run-2")
    assert details["strategy"] == "attach"
    with service.warehouse.engine.connect() as conn:
        notes = dict(
            conn.execute(
                sa.text("SELECT _dw_job_id, count(note) FROM dw_storage.events GROUP BY 1")
            ).all()
        )
    assert notes == {first: 0, second: 1300}
    # A merge contract needs a primary key, which a partitioned table cannot take.
    keyed = widened.replace("write_mode: append", "write_mode: merge")
    service = make_service("v3", keyed)
    contract = service.contracts.get("events")
    with pytest.raises(ConfigurationError, match="partitioned by load month") as refused:
        service.warehouse.migrate(contract, "alice", allow_destructive=True)
    assert "new dataset" in str(refused.value)
    assert len(rows_of(service, first)) == 1200


def test_attaches_of_one_dataset_at_once_each_land_whole(make_service, landing_dir: Path):
    """Two large jobs promoting at the same instant (two runs of the dataset, as a queue
    without the per-dataset limit allows): both land, whole, attached or copied."""
    services = [make_service(f"s{i}", DW_ATTACH_MIN_ROWS=str(MIN_ROWS)) for i in range(2)]
    jobs = []
    for i, service in enumerate(services):
        job_id = service.queue.enqueue(
            {
                "dataset": "events",
                "source_uri": str(write_rows(landing_dir, f"p{i}.csv", 2000 + i, f"p{i}")),
                "business_date": "2026-12-03",
                "tenant_id": TENANT,
            }
        ).job.job_id
        service.stage(service.start(job_id, f"run-{i}"), f"run-{i}")
        jobs.append(job_id)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def promote(service, job_id: str) -> None:
        try:
            barrier.wait()
            service.promote(job_id, f"run-{jobs.index(job_id)}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=promote, args=(s, j)) for s, j in zip(services, jobs, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for i, job_id in enumerate(jobs):
        assert len(rows_of(services[0], job_id)) == 2000 + i
        assert services[0].queue.get(job_id).status == "COMPLETED"
    assert staging_left(services[0]) == []
    assert staging_partition("events", jobs[0]) not in staging_left(services[0])
