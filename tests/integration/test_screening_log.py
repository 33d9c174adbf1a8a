"""The pre-screening results on SQLite and PostgreSQL: a batch written twice (a retry on
another Dask worker, a resumed or repeated run) leaves each image of a patient scored once
and its prediction logged once; the rows, like the prediction log, cannot be rewritten."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from registry.prediction_log import PredictionLogRepository
from registry.screening_log import ScreeningLogRepository, ScreeningResult

pytestmark = pytest.mark.integration
MODEL = "models:/melanoma-resnet50/3"
AT = datetime(2027, 1, 15, 9, 30, tzinfo=UTC)


@pytest.fixture
def screenings(database_url: str) -> Iterator[ScreeningLogRepository]:
    repository = ScreeningLogRepository.open(database_url, migrate=True)
    yield repository
    repository.close()


def result(sha: str, patient: str, probability: float, model_uri: str = MODEL) -> ScreeningResult:
    return ScreeningResult(
        model_uri=model_uri, model_name="melanoma-resnet50", model_version=model_uri[-1],
        patient_id=patient, image_sha256=sha * 64, image=f"/photos/{patient}/{sha}.jpg",
        probability=probability, melanoma=probability >= 0.4, threshold=0.4, screened_at=AT,
        body_site="back",
    )  # fmt: skip


def test_a_batch_written_twice_scores_and_logs_each_image_once(screenings):
    batch = [result("a", "P1", 0.9), result("b", "P1", 0.2), result("a", "P2", 0.9)]
    assert screenings.record_batch(batch) == 3
    assert screenings.record_batch([*batch, result("c", "P1", 0.5)]) == 1  # only c is new
    assert screenings.screened(MODEL, [("a" * 64, "P1"), ("d" * 64, "P1")]) == {("a" * 64, "P1")}
    assert screenings.screened("models:/melanoma-resnet50/4", [("a" * 64, "P1")]) == set()

    ranked = screenings.results(MODEL, ["P1"])
    assert [(r.image_sha256[0], r.probability) for r in ranked] == [("a", 0.9), ("c", 0.5),
                                                                    ("b", 0.2)]  # fmt: skip
    assert ranked[0] == batch[0]  # every field read back as written
    logged = PredictionLogRepository(screenings.database).predictions("melanoma-resnet50")
    assert len(logged) == 4
    assert {p.source for p in logged} == {"screen"}
    assert {(p.image_sha256[0], p.melanoma) for p in logged} == {("a", True), ("b", False),
                                                                 ("c", True)}  # fmt: skip


def test_another_version_scores_the_same_images_again(screenings):
    screenings.record_batch([result("a", "P1", 0.9)])
    assert screenings.record_batch([result("a", "P1", 0.3, "models:/melanoma-resnet50/4")]) == 1


def test_what_a_model_said_cannot_be_rewritten(screenings, database_url):
    screenings.record_batch([result("a", "P1", 0.9)])
    engine = create_engine(database_url)
    try:
        for statement in ("UPDATE screenings SET probability = 0.1", "DELETE FROM screenings"):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
                connection.execute(text(statement))
    finally:
        engine.dispose()
    assert screenings.results(MODEL, ["P1"])[0].probability == 0.9
