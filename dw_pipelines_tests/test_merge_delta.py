"""A merge delta (a job small against its table) costs look-ups, not scans of the table.

The realistic merge is a daily delta into a big table. Its promotion must read the table by
primary key only (`promote_merge.DELTA_MAX_SHARE`) and update the changed rows in place: a scan
of every stored row would make the job's cost grow with the table instead of with the delta
(docs/benchmarks.md, "Round 5").
PostgreSQL's own statistics say which scans a statement ran.
"""

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dw_pipelines.core.tables import MERGE_FILLFACTOR
from dw_pipelines.services import build_service, dispose
from dw_pipelines_tests.conftest import make_settings
from dw_pipelines_tests.test_merge_concurrency import (
    CONTRACT,
    enqueue_and_stage,
    in_outbox_order,
    rows_of,
    stored,
    write_file,
)

TABLE_ROWS = 20_000


def scans(url: str) -> tuple[int, int, int, int]:
    """(sequential scans, index scans) of the storage table, once every backend that worked on
    it reported: the service's connections are closed (a backend flushes its statistics when it
    exits, otherwise up to a second later), and the counts stay still for a second."""
    engine = sa.create_engine(url)
    last, since = None, time.monotonic()
    try:
        while time.monotonic() - since < 1.0:
            current = _scans(engine)
            if current != last:
                last, since = current, time.monotonic()
            time.sleep(0.1)
        return last
    finally:
        engine.dispose()


def _scans(engine: sa.Engine) -> tuple[int, int, int, int]:
    """(sequential scans, index scans, rows updated, of them HOT: on their own page)."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return tuple(
            conn.execute(
                sa.text(
                    "SELECT seq_scan, coalesce(idx_scan, 0), n_tup_upd, n_tup_hot_upd"
                    " FROM pg_stat_user_tables"
                    " WHERE schemaname = 'dw_storage' AND relname = 'accounts'"
                )
            ).one()
        )


@pytest.mark.parametrize(
    "strategy_env",
    # Above DW_MERGE_REWRITE_MIN_ROWS a job as large as its table finds its changed keys first
    # (one join); a delta does not, its look-ups are the cheapest join already.
    [{}, {"DW_MERGE_REWRITE_MIN_ROWS": "500"}],
    ids=["small-job", "above-rewrite-min-rows"],
)
def test_a_delta_reads_the_table_by_key_only(
    strategy_env: dict, pg_url: str, tmp_path: Path, landing_dir: Path
):
    contracts = tmp_path / "contracts"
    contracts.mkdir()
    (contracts / "accounts.yaml").write_text(CONTRACT)
    settings = make_settings(
        pg_url, tmp_path / "home", landing_dir, DW_DATASETS_PATH=contracts, **strategy_env
    )
    service = build_service(settings)
    try:
        base = rows_of("base", TABLE_ROWS, 1)
        fill = enqueue_and_stage(service, write_file(landing_dir, "fill.csv", base), "r-fill")
        service.promote(fill, "r-fill")
        with service.warehouse.engine.connect() as conn:
            conn.execute(sa.text("ANALYZE dw_storage.accounts"))
        # 900 changed keys strided over the whole table, 100 new ones: 5 % of the table.
        delta = {k: ("delta", k) for k in range(1, TABLE_ROWS + 1, TABLE_ROWS // 900)}
        delta.update(rows_of("new", 100, TABLE_ROWS + 1))
        job = enqueue_and_stage(service, write_file(landing_dir, "delta.csv", delta), "r-delta")
        service.warehouse.engine.dispose()
        before = scans(pg_url)

        result = service.promote(job, "r-delta")

        service.warehouse.engine.dispose()
        after = scans(pg_url)
        assert after[1] > before[1], "the promotion's look-ups did not show in the statistics"
        assert after[0] == before[0], "the delta's promotion scanned the whole table"
        assert (result.inserted, result.deleted) == (len(delta), len(delta) - 100)
        assert stored(service) == in_outbox_order([(fill, base), (job, delta)])
        # The changed rows were updated in place, nearly all of them on their own page (the
        # table keeps a tenth of each page free: MERGE_FILLFACTOR), so without a key entry.
        changed = len(delta) - 100
        assert after[2] - before[2] == changed
        assert after[3] - before[3] >= 0.9 * changed
        with service.warehouse.engine.connect() as conn:
            options = conn.execute(
                sa.text(
                    "SELECT reloptions FROM pg_class WHERE oid = 'dw_storage.accounts'::regclass"
                )
            ).scalar_one()
        assert options == [f"fillfactor={MERGE_FILLFACTOR}"]
    finally:
        dispose(service)
