"""The prediction log: every prediction the models make, with the image's sha256.

A histopathology label reaches the registry weeks after the champion judged the image. The
champion's real-world performance is measured by matching those later labels to the logged
predictions by the image's content (images.sha256 = predictions.image_sha256), so the log
is kept in the label registry database, where the labels are.

Append-only like the audit trail: the database itself refuses UPDATE and DELETE, so what a
model said cannot be rewritten once its label is known.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.labels.orm import BigId, UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "predictions"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("prediction_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_name", sa.String(255), nullable=True),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("melanoma", sa.Boolean, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("predicted_at", UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_predictions_image_sha256", TABLE, ["image_sha256"])
    op.create_index("ix_predictions_model_predicted", TABLE, ["model_name", "predicted_at"])
    dialect = op.get_bind().dialect.name
    message = f"{TABLE} is append-only"
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {TABLE}_no_{action.lower()} BEFORE {action} ON {TABLE} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE FUNCTION {TABLE}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$"
        )
        op.execute(
            f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
            f"FOR EACH ROW EXECUTE FUNCTION {TABLE}_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {TABLE}_append_only ON {TABLE}")
        op.execute(f"DROP FUNCTION IF EXISTS {TABLE}_append_only()")
    op.drop_table(TABLE)
