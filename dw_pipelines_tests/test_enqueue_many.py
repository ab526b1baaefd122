"""Batch enqueue (`enqueue_many`) on PostgreSQL and SQLite: same guarantees as one by one."""

import pytest
import sqlalchemy as sa

from dw_pipelines.core.db import audit, outbox
from dw_pipelines.core.errors import CommandError
from dw_pipelines.services import build_queue
from dw_pipelines.settings import SAMPLES_DIR
from dw_pipelines_tests.conftest import make_settings

SOURCE = str(SAMPLES_DIR / "orders_2026-11-24.csv")


@pytest.fixture
def queue(db_url, tmp_path, landing_dir):
    queue = build_queue(make_settings(db_url, tmp_path / "home", landing_dir))
    yield queue
    queue.engine.dispose()


def command(key: str, **extra) -> dict:
    return {"dataset": "orders", "source_uri": SOURCE, "business_date": "2026-11-24",
            "idempotency_key": key, **extra}  # fmt: skip


def counts(queue) -> tuple[int, int]:
    with queue.engine.connect() as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one(),
        )


def test_a_batch_inserts_new_jobs_and_dedupes_known_and_repeated_keys(queue):
    (known,) = queue.enqueue_many([command("k-known")])
    results = queue.enqueue_many(
        [command("k1"), command("k-known"), command("k2"), command("k1", job_id="other-id")]
    )
    assert [r.created for r in results] == [True, False, True, False]
    assert results[1].job.job_id == known.job.job_id
    assert results[3].job.job_id == results[0].job.job_id  # the first command with k1 won
    assert counts(queue) == (3, 3)  # three jobs, one ENQUEUED audit row each


def test_one_bad_command_refuses_the_whole_batch_naming_its_index(queue):
    with pytest.raises(CommandError) as refused:
        queue.enqueue_many([command("a"), command("b", business_date="2026-02-30")])
    assert refused.value.field == "[1].business_date"
    assert counts(queue) == (0, 0)


def test_a_batch_joins_the_callers_transaction(queue):
    with queue.engine.connect() as conn:
        transaction = conn.begin()
        queue.enqueue_many([command("t1"), command("t2")], connection=conn)
        transaction.rollback()
    assert counts(queue) == (0, 0)
    with queue.engine.begin() as conn:
        queue.enqueue_many([command("t1"), command("t2")], connection=conn)
    assert counts(queue) == (2, 2)
