"""Append promotion: a job's rows replace its previous load (found through `_dw_loads` and the
BRIN index on `_dw_loaded_at`), in the promotion's transaction."""

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dw_pipelines.core.contracts import DatasetContract
from dw_pipelines.core.tables import (
    JOB_ID_COLUMN,
    LOADED_AT_COLUMN,
)


class AppendPromotion:
    """The append half of `Warehouse.promote` (a mixin)."""

    def _promote_append(
        self,
        conn: Connection,
        contract: DatasetContract,
        storage: sa.Table,
        source: sa.Select,
        target_columns: list[str],
        job_id: str,
    ) -> tuple[int, int, int]:
        """Replace the job's rows: delete its previous load, insert the staged rows.
        Returns (rows, inserted, deleted)."""
        deleted = self._delete_previous_load(conn, contract, storage, job_id)
        inserted = conn.execute(
            storage.insert().from_select(target_columns, source),
            execution_options={"preserve_rowcount": True},
        ).rowcount
        rows = inserted  # every staged row; no second scan of staging to count them
        return rows, inserted, deleted

    def _delete_previous_load(
        self, conn: Connection, contract: DatasetContract, storage: sa.Table, job_id: str
    ) -> int:
        previous = conn.execute(
            sa.select(self.loads.c.loaded_at)
            .where(self.loads.c.dataset == contract.name, self.loads.c.job_id == job_id)
            .with_for_update()
        ).scalar_one_or_none()
        if previous is None:
            return 0
        return conn.execute(
            storage.delete().where(
                storage.c[JOB_ID_COLUMN] == job_id, storage.c[LOADED_AT_COLUMN] == previous
            )
        ).rowcount
