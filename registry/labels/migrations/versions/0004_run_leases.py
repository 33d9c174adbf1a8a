"""Run leases: a named claim, with an expiry, that at most one holder has at a time.

The weekly retrain may be started by the schedule, by hand, or on two workers at once; two
runs would race for the same snapshot, challenger alias and audit trail. The claim lives in
the label registry database, the one store every worker and machine already shares, so it
holds across processes and hosts. It expires unless renewed, so a crashed holder frees it.
Unlike the audit trail this table is updated in place: a lease is state, not history.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from registry.labels.orm import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "run_leases"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(256), nullable=False),
        sa.Column("acquired_at", UTCDateTime(), nullable=False),
        sa.Column("renewed_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
