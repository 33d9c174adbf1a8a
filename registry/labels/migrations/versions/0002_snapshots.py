"""Dataset snapshots and the locked lesion splits.

`snapshots` records every frozen manifest with its DVC hash (the lineage every model run
points back to). `lesion_splits` holds the split each lesion was first given; both are
append-only, so a test lesion can never move into training, whatever the code does.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.labels.orm import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_TABLES = ("snapshots", "lesion_splits")


def upgrade() -> None:
    op.create_table(
        "snapshots",
        sa.Column("snapshot_id", sa.String(64), primary_key=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("label_sources", sa.JSON, nullable=False),
        sa.Column("labels_as_of", UTCDateTime(), nullable=True),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("dvc_hash", sa.String(64), nullable=False),
        sa.Column("images", sa.Integer, nullable=False),
        sa.Column("lesions", sa.Integer, nullable=False),
        sa.Column("melanoma", sa.Integer, nullable=False),
        sa.Column("previous_snapshot_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_snapshots_created_at", "snapshots", ["created_at"])
    op.create_table(
        "lesion_splits",
        sa.Column("lesion_id", sa.String(128), sa.ForeignKey("lesions.lesion_id"), primary_key=True),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("snapshot_id", sa.String(64), sa.ForeignKey("snapshots.snapshot_id"), nullable=False),
        sa.Column("assigned_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("split IN ('train', 'val', 'test')", name="ck_lesion_splits_split"),
    )
    for table in APPEND_ONLY_TABLES:
        _forbid_changes(table)


def downgrade() -> None:
    for table in reversed(APPEND_ONLY_TABLES):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
        op.drop_table(table)


def _forbid_changes(table: str) -> None:
    message = f"{table} is append-only"
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
        )
