"""Add dw_ingestion_outbox.source_size_bytes: the source's size at enqueue time (stat or HEAD).

The run's Kubernetes size class is chosen from it where the sensor runs, which cannot see an
object's size (or a landing volume it does not mount) otherwise.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dw_ingestion_outbox") as batch:
        batch.add_column(sa.Column("source_size_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dw_ingestion_outbox") as batch:
        batch.drop_column("source_size_bytes")
