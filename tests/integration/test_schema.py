"""The Alembic migration applies, reverts and re-applies cleanly."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect

from registry.labels import schema

pytestmark = pytest.mark.integration

TABLES = {
    "lesions", "images", "label_events", "quarantine", "snapshots", "lesion_splits", "audit_events",
    "run_leases", "predictions",
}  # fmt: skip


def test_migrations_round_trip(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'labels.db'}")
    try:
        schema.upgrade(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert schema.current_revision(engine) == schema.head_revision()

        schema.downgrade(engine, "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        assert schema.current_revision(engine) is None

        schema.upgrade(engine)
        assert schema.current_revision(engine) == schema.head_revision()
    finally:
        engine.dispose()
