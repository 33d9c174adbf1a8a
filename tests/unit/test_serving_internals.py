"""The two background workers of `cme serve`, on their own: the alias follower keeps serving
what it has when the registry or a download fails, and the prediction log survives a
database that fails, counting what it could not write."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from registry.database import StoreUnavailable
from registry.models import ModelVersion
from registry.prediction_log import PredictionRecord
from usecases.serving import ChampionFollower, NoModelToServe, PredictionLog, ServedModel


@dataclass
class Registry:
    """The alias as the follower reads it (ModelRegistry's `aliased`)."""

    model_name: str = "melanoma-resnet50"
    points_at: dict[str, ModelVersion] = field(default_factory=dict)
    down: bool = False

    def aliased(self, alias: str) -> ModelVersion | None:
        if self.down:
            raise ConnectionError("registry unreachable")
        return self.points_at.get(alias)


def version(number: str, threshold: str | None) -> ModelVersion:
    tags = {"threshold": threshold} if threshold is not None else {}
    return ModelVersion("melanoma-resnet50", number, "run", f"models:/m-{number}",
                        datetime.now(UTC), tags=tags)  # fmt: skip


def copy_of(uri: str) -> ServedModel:
    return ServedModel(uri, None, 0.5, pyfunc=object(), loaded_at=datetime.now(UTC))


def test_the_follower_serves_the_aliased_version_at_its_tagged_threshold():
    registry = Registry(points_at={"champion": version("3", "0.37")})
    follower = ChampionFollower(registry, "champion", load=copy_of)

    assert follower.check() is True
    assert (follower.current.version, follower.current.threshold) == ("3", 0.37)
    assert follower.current.uri == "models:/melanoma-resnet50/3"
    assert follower.check() is False  # same version: nothing loaded again

    registry.points_at["champion"] = version("4", None)  # no tag: the copy's own threshold
    assert follower.check() is True
    assert (follower.current.version, follower.current.threshold) == ("4", 0.5)


def test_without_a_champion_there_is_nothing_to_serve():
    follower = ChampionFollower(Registry(), "champion", load=copy_of)
    with pytest.raises(NoModelToServe, match="alias 'champion' points at no version"):
        follower.start()


def test_a_champion_alias_moved_by_hand_to_an_unbacked_version_is_not_followed():
    registry = Registry(points_at={"champion": version("3", "0.4")})
    backed = {"3"}
    follower = ChampionFollower(registry, "champion", load=copy_of, vouch=backed.__contains__)
    follower.check()
    registry.points_at["champion"] = version("5", "0.4")  # set in the UI, not promoted

    assert follower.check() is False
    assert follower.current.version == "3"
    assert "version 5, which neither the audit trail nor the gate" in follower.last_error
    backed.add("5")  # the promotion flow accepted it
    assert follower.check() is True and follower.current.version == "5"
    assert follower.last_error is None


def test_a_failed_download_or_registry_keeps_the_version_serving_and_says_why():
    registry = Registry(points_at={"champion": version("3", "0.4")})
    loads: list[str] = []

    def load(uri: str) -> ServedModel:
        loads.append(uri)
        if uri.endswith("/4"):
            raise OSError("artifact store unreachable")
        return copy_of(uri)

    follower = ChampionFollower(registry, "champion", load=load, poll_seconds=0.05)
    follower.start()
    try:
        registry.points_at["champion"] = version("4", "0.4")
        _wait_for(lambda: follower.last_error is not None)
        assert follower.current.version == "3"
        assert "artifact store unreachable" in follower.describe()["last_follow_error"]
        registry.points_at["champion"] = version("3", "0.4")  # rolled back meanwhile
        registry.down = True
        _wait_for(lambda: "registry unreachable" in (follower.last_error or ""))
        registry.down = False
        _wait_for(lambda: follower.last_error is None)
        assert follower.current.version == "3"
        assert loads.count("models:/melanoma-resnet50/3") == 1
    finally:
        follower.stop()


@dataclass
class Database:
    """The prediction log's `record_predictions`, failing when asked to."""

    failures: list[Exception] = field(default_factory=list)
    rows: list[PredictionRecord] = field(default_factory=list)

    def record_predictions(self, records: list[PredictionRecord]) -> int:
        if self.failures:
            raise self.failures.pop(0)
        self.rows.extend(records)
        return len(records)


def record(n: int) -> PredictionRecord:
    return PredictionRecord(f"{n:064x}", "melanoma-resnet50", "3", 0.2, False, 0.4,
                            datetime.now(UTC), "serve")  # fmt: skip


def test_the_prediction_log_outlives_database_errors_and_counts_what_it_lost():
    database = Database(failures=[StoreUnavailable("down"), RuntimeError("driver bug")])
    log = PredictionLog(database, flush_seconds=0.01)
    log.add([record(1), record(2)])  # queued before the writer starts: one batch
    log.start()
    _wait_for(lambda: log.lost == 2)
    log.add([record(3)])  # an error the registry did not translate: the writer lives on
    _wait_for(lambda: log.lost == 3)
    log.add([record(4)])
    log.close()
    assert (log.written, log.lost) == (1, 3)
    assert [row.image_sha256 for row in database.rows] == [record(4).image_sha256]


def test_a_full_prediction_log_drops_and_counts_instead_of_growing():
    log = PredictionLog(Database(), capacity=3)
    log.add([record(n) for n in range(5)])  # not started: nothing drains the queue
    assert log.lost == 2


def _wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)
