"""Create dw_ingestion_outbox and dw_ingestion_audit.

Written out by hand (not from the metadata) so that the migration test, which compares
`upgrade head` with `core.db.metadata`, checks something.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dw_ingestion_outbox",
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(63), nullable=False),
        sa.Column("business_date", sa.Date(), nullable=False),
        sa.Column("payload", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("dagster_run_id", sa.String(64), nullable=True),
        sa.Column("rows_loaded", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("idempotency_key", name="uq_dw_ingestion_outbox_idempotency_key"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'SENT', 'PROCESSING', 'COMPLETED', 'FAILED')",
            name="ck_dw_ingestion_outbox_status",
        ),
    )
    op.create_index(
        "ix_dw_ingestion_outbox_claimable",
        "dw_ingestion_outbox",
        ["next_attempt_at", "created_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
        sqlite_where=sa.text("status = 'PENDING'"),
    )
    op.create_index(
        "ix_dw_ingestion_outbox_status_updated", "dw_ingestion_outbox", ["status", "updated_at"]
    )
    op.create_index(
        "ix_dw_ingestion_outbox_dataset_date", "dw_ingestion_outbox", ["dataset", "business_date"]
    )
    op.create_table(
        "dw_ingestion_audit",
        sa.Column("id", BigIntId, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_status", sa.String(16), nullable=True),
        sa.Column("to_status", sa.String(16), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("details", Json, nullable=True),
    )
    op.create_index("ix_dw_ingestion_audit_job_id", "dw_ingestion_audit", ["job_id", "id"])


def downgrade() -> None:
    op.drop_table("dw_ingestion_audit")
    op.drop_table("dw_ingestion_outbox")
