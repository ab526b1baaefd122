"""Append promotion: a job's rows replace its previous load, in the promotion's transaction.
The previous load is found through `_dw_loads` and the BRIN index on `_dw_loaded_at`, or is a
partition of its own (a large job, attached: see promote_attach.py) that is dropped."""

from datetime import datetime

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
        tenant_id: str,
        loaded_at: datetime,
    ) -> tuple[int, int, int, str]:
        """Replace the job's rows: delete its previous load, then attach the staged rows (a
        large job on partitioned storage) or insert them. Returns (rows, inserted, deleted,
        strategy)."""
        deleted = self._delete_previous_load(conn, contract, storage, job_id)
        target: sa.TableClause = storage
        if self.partitioned_storage(contract):
            attached = self._attach_staged(conn, contract, job_id, tenant_id, loaded_at)
            if attached is not None:
                return attached, attached, deleted, "attach"
            target = self._copy_target(conn, contract, storage, job_id, loaded_at)
        inserted = conn.execute(
            target.insert().from_select(target_columns, source),
            execution_options={"preserve_rowcount": True},
        ).rowcount
        rows = inserted  # every staged row; no second scan of staging to count them
        return rows, inserted, deleted, "insert"

    def _delete_previous_load(
        self, conn: Connection, contract: DatasetContract, storage: sa.Table, job_id: str
    ) -> int:
        previous = conn.execute(
            sa.select(self.loads.c.loaded_at, self.loads.c.rows)
            .where(self.loads.c.dataset == contract.name, self.loads.c.job_id == job_id)
            .with_for_update()
        ).one_or_none()
        if previous is None:
            return 0
        if self.partitioned_storage(contract) and self._drop_attached_load(
            conn, contract, job_id, previous.loaded_at
        ):
            return previous.rows
        return conn.execute(
            storage.delete().where(
                storage.c[JOB_ID_COLUMN] == job_id,
                storage.c[LOADED_AT_COLUMN] == previous.loaded_at,
            )
        ).rowcount
