"""Merge jobs of one dataset and tenant that promote at the same time, or out of outbox order.

The shipped run queue starts one run per dataset at a time, oldest first, so merges normally
land in enqueue order. These tests take that limit away: two runs of the same dataset promote at
once (a queue configured without the limit, a UI re-execution), or a job enqueued earlier
promotes after a later one (its run was retried, `outbox retry`). Either way the table must end
as if the jobs had run one after the other in outbox order: no deadlock, no unique violation, no
lost update (`Warehouse._serialize_merges`, `Warehouse._newer_loads`).
"""

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dw_pipelines.core.warehouse import MERGE_LOCK
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings

CONTRACT = """\
name: accounts
write_mode: merge
primary_key: [id]
columns:
  - {name: id, type: int64, nullable: false}
  - {name: status, type: string}
  - {name: balance, type: int64}
"""
TENANT = "acme"


def service_for(url: str, tmp: Path, landing: Path):
    contracts = tmp / "contracts"
    contracts.mkdir(parents=True, exist_ok=True)
    (contracts / "accounts.yaml").write_text(CONTRACT)
    return build_service(make_settings(url, tmp / "home", landing, DW_DATASETS_PATH=contracts))


def write_file(landing: Path, name: str, rows: dict[int, tuple[str, int]]) -> Path:
    path = landing / name
    lines = ["id,status,balance", *(f"{k},{s},{b}" for k, (s, b) in rows.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def enqueue_and_stage(service, source: Path, run_id: str) -> str:
    """A job in the outbox with its rows staged (validated), ready to promote."""
    job = service.queue.enqueue(
        {
            "dataset": "accounts",
            "source_uri": str(source),
            "business_date": "2026-12-03",
            "tenant_id": TENANT,
        }
    ).job
    service.stage(service.start(job.job_id, run_id), run_id)
    return job.job_id


def stored(service) -> dict[int, tuple[str, int, str]]:
    """The tenant's rows: id -> (status, balance, job id that wrote the row)."""
    with service.warehouse.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, status, balance, _dw_job_id FROM dw_storage.accounts "
                "WHERE _dw_tenant_id = :tenant"
            ),
            {"tenant": TENANT},
        ).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def in_outbox_order(jobs: list[tuple[str, dict[int, tuple[str, int]]]]) -> dict:
    """What merging the jobs one after the other gives: a key's row is that of the last job
    that changed it (an unchanged row keeps the job that wrote it)."""
    table: dict[int, tuple[str, int, str]] = {}
    for job_id, rows in jobs:
        for key, (status, balance) in rows.items():
            if table.get(key, (None, None))[:2] != (status, balance):
                table[key] = (status, balance, job_id)
    return table


def rows_of(prefix: str, count: int, offset: int) -> dict[int, tuple[str, int]]:
    """`count` rows from id `offset`: status names the file, so every overlapping key changes."""
    return {k: (prefix, k * 10 + len(prefix)) for k in range(offset, offset + count)}


def waiting_on_merge_lock(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = hashtext(:space)::oid"
            ),
            {"space": MERGE_LOCK},
        ).scalar_one()


def test_two_merges_at_once_end_as_if_run_in_outbox_order(
    pg_url: str, tmp_path: Path, landing_dir: Path
):
    """Two runs (each its own service and connection pool, as two run processes) promote merges
    of the same dataset and tenant together, three rounds over overlapping keys. The promotions
    queue on the dataset's merge lock (seen waiting in pg_locks), then both commit, and every
    round ends with the table of the sequential run in outbox order, lineage included."""
    services = [service_for(pg_url, tmp_path / f"run{i}", landing_dir) for i in range(2)]
    try:
        base = rows_of("base", 300, 1)
        first = enqueue_and_stage(services[0], write_file(landing_dir, "base.csv", base), "r-0")
        services[0].promote(first, "r-0")
        history = [(first, base)]
        lock_holder = sa.create_engine(pg_url)
        for round_ in range(3):
            # Overlapping keys: both change ids 151-250, the later one adds ids 301-350.
            early = rows_of(f"early{round_}", 250, 1)
            late = rows_of(f"late{round_}", 200, 151)
            sources = [
                write_file(landing_dir, f"early{round_}.csv", early),
                write_file(landing_dir, f"late{round_}.csv", late),
            ]
            run_ids = [f"r{round_}-early", f"r{round_}-late"]
            job_ids = [enqueue_and_stage(services[i], sources[i], run_ids[i]) for i in range(2)]
            errors: list[BaseException] = []
            results = {}

            def promote(i: int, job_ids=job_ids, run_ids=run_ids, errors=errors, results=results):
                try:
                    results[i] = services[i].promote(job_ids[i], run_ids[i])
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            # Hold the merge lock so that both promotions are surely in flight together; once
            # it is released they race for it, so either may promote first.
            with lock_holder.connect() as conn:
                conn.execute(
                    sa.text("SELECT pg_advisory_lock(hashtext(:space), hashtext('accounts'))"),
                    {"space": MERGE_LOCK},
                )
                threads = [threading.Thread(target=promote, args=(i,)) for i in (1, 0)]
                for thread in threads:
                    thread.start()
                deadline = time.monotonic() + 30
                while waiting_on_merge_lock(lock_holder) < 2:
                    assert time.monotonic() < deadline, "the promotions never queued on the lock"
                    assert not errors, errors
                    time.sleep(0.02)
                assert stored(services[0]) == in_outbox_order(history)  # nothing written yet
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(hashtext(:space), hashtext('accounts'))"),
                    {"space": MERGE_LOCK},
                )
            for thread in threads:
                thread.join(timeout=60)
                assert not thread.is_alive(), "a promotion hung (deadlock?)"
            assert not errors, errors
            history += [(job_ids[0], early), (job_ids[1], late)]
            assert stored(services[0]) == in_outbox_order(history), f"round {round_}"
            for job_id in job_ids:
                job = services[0].queue.get(job_id)
                assert job.status == "COMPLETED", (job_id, job.status, job.last_error)
            # The early job changed 250 keys; if it promoted second, the 100 the late job had
            # already written stayed the late job's, and it says so.
            assert results[1].kept_newer == 0
            assert results[0].kept_newer in (0, 100)
        lock_holder.dispose()
    finally:
        for service in services:
            dispose(service)


@pytest.mark.parametrize("database", ["pg_url", "sqlite_url"])
def test_an_earlier_job_promoted_late_leaves_newer_rows(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, landing_dir: Path
):
    """The later job promotes first; then the earlier one (its run was slower, or it failed and
    was retried) promotes: the keys the later job wrote keep its values, the rest take the
    earlier job's, exactly the sequential result in outbox order. Re-promoting the earlier job
    (`outbox retry`, a re-execution) changes nothing, and another tenant is never held back."""
    service = service_for(request.getfixturevalue(database), tmp_path, landing_dir)
    try:
        early = rows_of("early", 6, 1)  # ids 1-6
        late = rows_of("late", 4, 4)  # ids 4-7: 4, 5, 6 overlap
        early_id = enqueue_and_stage(service, write_file(landing_dir, "e.csv", early), "r-early")
        late_id = enqueue_and_stage(service, write_file(landing_dir, "l.csv", late), "r-late")

        service.promote(late_id, "r-late")
        result = service.promote(early_id, "r-early")

        want = in_outbox_order([(early_id, early), (late_id, late)])
        assert stored(service) == want
        assert want[5] == ("late", 5 * 10 + 4, late_id)  # the later job's value stayed
        assert want[2] == ("early", 2 * 10 + 5, early_id)  # the earlier job's own keys landed
        assert (result.rows, result.inserted, result.deleted, result.kept_newer) == (6, 3, 0, 3)
        promoted = [e for e in service.queue.audit_trail(early_id) if e.event == "PROMOTED"]
        assert promoted[-1].details["kept_newer"] == 3

        # The earlier job again, as `outbox retry --completed` hands it to a new run.
        service.queue.requeue(early_id, "r-early-2", "test", allow_completed=True)
        service.stage(service.start(early_id, "r-early-2"), "r-early-2")
        assert service.promote(early_id, "r-early-2").kept_newer == 3
        assert stored(service) == want

        # A later job of another tenant does not hold back this tenant's keys.
        other = service.queue.enqueue(
            {
                "dataset": "accounts",
                "source_uri": str(write_file(landing_dir, "o.csv", rows_of("o", 2, 1))),
                "business_date": "2026-12-03",
                "tenant_id": "other",
            }
        ).job
        service.stage(service.start(other.job_id, "r-o"), "r-o")
        service.promote(other.job_id, "r-o")
        again = rows_of("again", 2, 1)
        again_id = enqueue_and_stage(service, write_file(landing_dir, "a.csv", again), "r-a")
        assert service.promote(again_id, "r-a").kept_newer == 0
        assert stored(service)[1][2] == again_id
    finally:
        dispose(service)


@pytest.mark.parametrize("database", ["pg_url", "sqlite_url"])
def test_a_warehouse_from_before_the_order_column_gains_it(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, landing_dir: Path
):
    """`_dw_loads` of an older release has no `enqueued_at` (nor its index): the next process
    to ensure a dataset adds both; the jobs loaded before keep NULL, and count as older than
    any job that knows its place in the outbox."""
    url = request.getfixturevalue(database)
    service = service_for(url, tmp_path / "old", landing_dir)
    old_id = enqueue_and_stage(
        service, write_file(landing_dir, "old.csv", rows_of("old", 3, 1)), "r-old"
    )
    service.promote(old_id, "r-old")
    with service.warehouse.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX dw_storage.ix_dw_loads_order"))
        conn.execute(sa.text("ALTER TABLE dw_storage._dw_loads DROP COLUMN enqueued_at"))
    dispose(service)

    service = service_for(url, tmp_path / "new", landing_dir)  # a new release's process
    try:
        new = rows_of("new", 2, 2)
        new_id = enqueue_and_stage(service, write_file(landing_dir, "new.csv", new), "r-new")
        assert service.promote(new_id, "r-new").kept_newer == 0
        with service.warehouse.engine.connect() as conn:
            order = dict(
                conn.execute(sa.text("SELECT job_id, enqueued_at FROM dw_storage._dw_loads")).all()
            )
            indexes = sa.inspect(conn).get_indexes("_dw_loads", schema="dw_storage")
        assert order[old_id] is None and order[new_id] is not None
        assert "ix_dw_loads_order" in {i["name"] for i in indexes}
        assert stored(service) == in_outbox_order([(old_id, rows_of("old", 3, 1)), (new_id, new)])
    finally:
        dispose(service)
