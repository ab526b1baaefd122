"""Add dw_ingestion_outbox.heartbeat_at: the reconciler's evidence that a run is alive.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dw_ingestion_outbox") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dw_ingestion_outbox") as batch:
        batch.drop_column("heartbeat_at")
