"""Pre-screening results: every image of a patient a model scored in a screening run.

Total-body photography brings hundreds to thousands of images per patient; `cme screen`
scores them in batches spread over Dask workers. Each finished batch is written here, with
its predictions in the prediction log, in one transaction: a run that was killed resumes
where it stopped, and repeating it scores nothing twice (one row per model, image content
and patient). The worklist a dermatologist reads is ranked from these rows.

Append-only like the prediction log: what a model said about an image stays as it said it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.labels.orm import BigId, UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "screenings"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("screening_id", BigId, primary_key=True, autoincrement=True),
        sa.Column("model_uri", sa.String(512), nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image", sa.String(1024), nullable=False),
        sa.Column("lesion_id", sa.String(128), nullable=True),
        sa.Column("body_site", sa.String(64), nullable=True),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("melanoma", sa.Boolean, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("screened_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint(
            "model_uri", "image_sha256", "patient_id", name="uq_screenings_image"
        ),
    )
    op.create_index("ix_screenings_patient_id", TABLE, ["patient_id"])
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
