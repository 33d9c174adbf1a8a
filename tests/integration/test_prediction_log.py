"""The prediction log, on SQLite and on the real PostgreSQL: predictions of the champion are
kept as made and matched, by the image's content, to the labels that reach the registry later."""

from __future__ import annotations

import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from pipelines.errors import BadInput
from registry.labels import LabelRegistry
from registry.labels.repository import LABEL_WRITE_LOCK
from registry.prediction_log import PredictionLogRepository, PredictionRecord
from tests.conftest import read_rows

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
UNKNOWN_IMAGE = "0" * 64


@pytest.fixture
def log(registry: LabelRegistry) -> PredictionLogRepository:
    """The prediction log, over the label registry's own database."""
    return PredictionLogRepository(registry.repository.database)


@pytest.fixture
def model_name() -> str:
    """A model of this test alone: the session's PostgreSQL keeps the log between tests."""
    return f"melanoma-{uuid.uuid4().hex[:8]}"


def predicted(model_name: str, sha256: str, at: datetime, **changes: Any) -> PredictionRecord:
    record = PredictionRecord(
        image_sha256=sha256,
        model_name=model_name,
        model_version="3",
        probability=0.82,
        melanoma=True,
        threshold=0.4,
        predicted_at=at,
        source="serve",
        image_name=f"{sha256[:8]}.jpg",
    )
    return replace(record, **changes)


def image_sha256(export: Path, image_id: str) -> str:
    """As serving sees it: the sha256 of the bytes received."""
    return hashlib.sha256((export / "images" / f"{image_id}.jpg").read_bytes()).hexdigest()


def import_export(registry: LabelRegistry, export: Path) -> None:
    registry.import_metadata(export / "metadata.csv", export / "images", steward="ana")


def test_logged_predictions_come_back_as_recorded(log, registry, model_name):
    records = [
        predicted(model_name, "a" * 64, T0),
        predicted(
            model_name,
            "b" * 64,
            datetime(2026, 12, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
            model_version=None,
            melanoma=False,
            probability=0.1,
            source="cli",
            image_name=None,
        ),
    ]
    other_model = predicted(f"{model_name}-other", "c" * 64, T0)

    assert log.record_predictions([*records, other_model]) == 3
    assert log.record_predictions([]) == 0

    logged = log.predictions(model_name)
    assert [replace(p, prediction_id=None) for p in logged] == records
    assert all(p.predicted_at.tzinfo is UTC for p in logged)
    assert logged[1].model_version is None and logged[1].image_name is None
    assert logged[0].prediction_id is not None and logged[1].prediction_id is not None
    assert log.predictions(model_name, since=T0 + timedelta(minutes=1)) == logged[1:]


def test_a_label_registered_later_is_matched_with_the_current_diagnosis(
    log, registry, lab_export, model_name
):
    rows = read_rows(lab_export / "metadata.csv")
    single = next(r for r in rows if sum(x["lesion_id"] == r["lesion_id"] for x in rows) == 1)
    sha256 = image_sha256(lab_export, single["image_id"])
    made = predicted(model_name, sha256, T0)
    log.record_predictions([made, predicted(model_name, UNKNOWN_IMAGE, T0)])
    assert log.matched_predictions(model_name) == []  # no label yet

    before = datetime.now(UTC)
    import_export(registry, lab_export)
    after = datetime.now(UTC)
    new_dx = "mel" if single["dx"] != "mel" else "bkl"
    registry.relabel(
        single["image_id"], dx=new_dx, dx_type="histo", reason="second pathologist", steward="cy"
    )

    [match] = log.matched_predictions(model_name)  # the unknown image stays unmatched
    assert replace(match.prediction, prediction_id=None) == made
    assert (match.image_id, match.lesion_id) == (single["image_id"], single["lesion_id"])
    assert (match.dx, match.dx_type) == (new_dx, "histo")
    assert before <= match.label_arrived_at <= after
    assert match.confirmed_at == registry.history(single["image_id"])[-1].confirmed_at


def test_matching_keeps_only_the_label_sources_asked_for(log, registry, lab_export, model_name):
    import_export(registry, lab_export)
    rows = read_rows(lab_export / "metadata.csv")
    log.record_predictions(
        [predicted(model_name, image_sha256(lab_export, r["image_id"]), T0) for r in rows]
    )
    histo = [r for r in rows if r["dx_type"] == "histo"]
    single = next(r for r in histo if sum(x["lesion_id"] == r["lesion_id"] for x in rows) == 1)
    registry.relabel(
        single["image_id"], dx=single["dx"], dx_type="consensus", reason="board", steward="cy"
    )

    matched = log.matched_predictions(model_name, sources=["histo"])

    assert {m.image_id for m in matched} == {r["image_id"] for r in histo} - {single["image_id"]}
    assert {m.dx_type for m in matched} == {"histo"}
    assert len(log.matched_predictions(model_name)) == len(rows)


def test_a_biopsy_after_the_prediction_arrives_then_even_if_the_image_came_earlier(
    log, registry, lab_export, model_name
):
    rows = read_rows(lab_export / "metadata.csv")
    consensus = next(r for r in rows if r["dx_type"] == "consensus")
    import_export(registry, lab_export)  # the image and its consensus label, first
    predicted_at = datetime.now(UTC)
    sha256 = image_sha256(lab_export, consensus["image_id"])
    log.record_predictions([predicted(model_name, sha256, predicted_at)])
    before = datetime.now(UTC)
    registry.relabel(consensus["image_id"], dx=consensus["dx"], dx_type="histo",
                     reason="excision histopathology", steward="cy")  # fmt: skip
    after = datetime.now(UTC)

    [match] = log.matched_predictions(model_name, sources=["histo"])
    assert predicted_at < before <= match.label_arrived_at <= after
    [any_source] = log.matched_predictions(model_name)
    assert any_source.label_arrived_at < predicted_at  # the consensus label was there before


def test_matching_since_a_moment_keeps_the_later_predictions_oldest_first(
    log, registry, lab_export, model_name
):
    import_export(registry, lab_export)
    first, second, third = (
        image_sha256(lab_export, r["image_id"]) for r in read_rows(lab_export / "metadata.csv")[:3]
    )
    log.record_predictions(
        [
            predicted(model_name, third, T0 + timedelta(days=2)),
            predicted(model_name, first, T0),
            predicted(model_name, second, T0 + timedelta(days=1)),
        ]
    )

    matched = log.matched_predictions(model_name, since=T0 + timedelta(days=1))

    assert [m.prediction.image_sha256 for m in matched] == [second, third]


def test_the_prediction_log_cannot_be_updated_or_deleted(log, registry, database_url, model_name):
    log.record_predictions([predicted(model_name, "a" * 64, T0)])
    engine = create_engine(database_url)
    try:
        for statement in ("UPDATE predictions SET melanoma = false", "DELETE FROM predictions"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
    finally:
        engine.dispose()
    assert len(log.predictions(model_name)) == 1


def test_recording_predictions_does_not_wait_for_a_label_import(postgres_database, model_name):
    """PostgreSQL only: there, label writes are serialized by an advisory lock."""
    log = PredictionLogRepository.open(postgres_database, migrate=True)
    engine = create_engine(postgres_database)
    importing = engine.connect()  # holds the label write lock, as an import does
    try:
        importing.begin()
        importing.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LABEL_WRITE_LOCK})
        with engine.connect() as probe:
            taken = probe.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LABEL_WRITE_LOCK}
            )
            assert taken.scalar_one() is False
        with ThreadPoolExecutor(max_workers=1) as pool:
            logging = pool.submit(log.record_predictions, [predicted(model_name, "a" * 64, T0)])
            try:
                assert logging.result(timeout=5) == 1
            finally:
                importing.rollback()  # frees a logger that did wait, so the test ends either way
    finally:
        importing.close()
        engine.dispose()
        log.close()


def test_a_naive_or_malformed_prediction_is_refused_whole(log, registry, model_name):
    fine = predicted(model_name, "a" * 64, T0)

    with pytest.raises(BadInput, match="naive datetime"):
        log.record_predictions([fine, predicted(model_name, "b" * 64, T0.replace(tzinfo=None))])
    with pytest.raises(BadInput, match="64 lowercase hex"):
        log.record_predictions([fine, predicted(model_name, "A" * 64, T0)])
    with pytest.raises(BadInput, match="probability"):
        log.record_predictions([fine, predicted(model_name, "b" * 64, T0, probability=1.5)])
    with pytest.raises(BadInput, match="naive datetime"):
        log.matched_predictions(model_name, since=T0.replace(tzinfo=None))

    assert log.predictions(model_name) == []
