"""The model registry's append-only audit trail: every gate decision, review, promotion,
rollback and alias-guard correction, in the label store's database. The trail is the truth
about the champion (`registry.promotion`).

An audit write takes no label write lock: it never waits for a label import (on PostgreSQL;
SQLite has one writer at a time for the whole file)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import insert, select
from sqlalchemy.engine import Row

from registry.database import Repository
from registry.labels.orm import AuditEventRow

AuditAction = Literal[
    "decision", "approval", "rejection", "promotion", "rollback", "guard_correction"
]
AUDIT_ACTIONS: tuple[str, ...] = (
    "decision", "approval", "rejection", "promotion", "rollback", "guard_correction",
)  # fmt: skip


@dataclass(frozen=True)
class AuditEvent:
    """One entry of the model registry's append-only audit trail.

    `champion_after` is the version that serves once the event is done: set by promotions,
    rollbacks and guard corrections, so the trail alone says who the valid champion is.
    """

    occurred_at: datetime
    actor: str
    action: AuditAction
    model_name: str
    version: str | None
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    champion_after: str | None = None
    event_id: int | None = None


class AuditTrailRepository(Repository):
    """The audit trail's rows: appended, never changed (the database refuses updates)."""

    def events(
        self, model_name: str, *, limit: int | None = None, newest_first: bool = False
    ) -> list[AuditEvent]:
        """The model's audit trail, oldest first (or the newest `limit` events first)."""
        order = AuditEventRow.event_id.desc() if newest_first else AuditEventRow.event_id
        query = select(AuditEventRow).where(AuditEventRow.model_name == model_name).order_by(order)
        if limit is not None:
            query = query.limit(limit)
        with self.database.reading() as connection:
            return [_audit_event(row) for row in connection.execute(query)]

    def record(self, event: AuditEvent) -> AuditEvent:
        """Append one event to the audit trail; returns it with its id."""
        with self.database.writing() as connection:
            inserted = insert(AuditEventRow).values(_audit_values(event))
            event_id = connection.execute(inserted.returning(AuditEventRow.event_id)).scalar_one()
        return replace(event, event_id=int(event_id))


def _audit_values(event: AuditEvent) -> dict[str, Any]:
    return {
        name: getattr(event, name) for name in AuditEvent.__dataclass_fields__ if name != "event_id"
    }


def _audit_event(row: Row[Any]) -> AuditEvent:
    return AuditEvent(**{name: getattr(row, name) for name in AuditEvent.__dataclass_fields__})
