"""Label registry: lesions, content-addressed images, append-only label events, quarantine.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.labels.orm import BigId, UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPEND_ONLY_MESSAGE = "label_events is append-only: record a relabel as a new event"


def upgrade() -> None:
    op.create_table(
        "lesions",
        sa.Column("lesion_id", sa.String(128), primary_key=True),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("image_id", sa.String(128), primary_key=True),
        sa.Column("lesion_id", sa.String(128), sa.ForeignKey("lesions.lesion_id"), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("stored_path", sa.String(255), nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("byte_size", sa.BigInteger, nullable=False),
        sa.Column("brightness_mean", sa.Float, nullable=False),
        sa.Column("brightness_std", sa.Float, nullable=False),
        sa.Column("registered_by", sa.String(128), nullable=False),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_images_lesion_id", "images", ["lesion_id"])
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_table(
        "label_events",
        sa.Column("event_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.String(128), sa.ForeignKey("images.image_id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("dx", sa.String(16), nullable=False),
        sa.Column("dx_type", sa.String(16), nullable=False),
        sa.Column("age", sa.Float, nullable=True),
        sa.Column("sex", sa.String(16), nullable=False),
        sa.Column("localization", sa.String(64), nullable=False),
        sa.Column("steward", sa.String(128), nullable=False),
        sa.Column("confirmed_at", UTCDateTime(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("source", sa.Text, nullable=True),
        sa.UniqueConstraint("image_id", "version", name="uq_label_events_version"),
    )
    op.create_index("ix_label_events_image_id", "label_events", ["image_id"])
    op.create_index("ix_label_events_confirmed_at", "label_events", ["confirmed_at"])
    op.create_table(
        "quarantine",
        sa.Column("quarantine_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("row_number", sa.Integer, nullable=True),
        sa.Column("image_id", sa.Text, nullable=True),
        sa.Column("submitted", sa.JSON, nullable=False),
        sa.Column("reason_kind", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("steward", sa.String(128), nullable=False),
        sa.Column("quarantined_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_quarantine_reason_kind", "quarantine", ["reason_kind"])
    _forbid_changes_to_label_events()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS label_events_append_only ON label_events")
        op.execute("DROP FUNCTION IF EXISTS label_events_append_only()")
    for table in ("quarantine", "label_events", "images", "lesions"):
        op.drop_table(table)


def _forbid_changes_to_label_events() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER label_events_no_{action.lower()} BEFORE {action} ON label_events "
                f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY_MESSAGE}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION label_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{APPEND_ONLY_MESSAGE}'; END $$"
        )
        op.execute(
            "CREATE TRIGGER label_events_append_only BEFORE UPDATE OR DELETE ON label_events "
            "FOR EACH ROW EXECUTE FUNCTION label_events_append_only()"
        )
