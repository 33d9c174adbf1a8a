"""The weekly retrain as Prefect runs it (prefect_test_harness, real MLflow and label
registry, generated images, tiny training): the first champion, a challenger judged by the
gate, quiet and thin weeks skipped, validation stopping a week before training, a crash in
training leaving the registries as they were, and one retrain at a time."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cme.bootstrap import App, bootstrap
from registry.run_leases import exclusive
from usecases.retrain_steps import RETRAIN_LEASE, RetrainSummary
from usecases.sample_data import SampleSpec, write_sample_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def register_week(project: Path, seed: int, images: int) -> int:
    """A lab export of generated 64-px images registered by a steward; returns how many
    histopathology-confirmed labels it brought (those the retrain learns from)."""
    export = project / "lab" / f"seed{seed}"
    write_sample_data(export, SampleSpec(n=images, seed=seed, image_size=64))
    with opened() as app:
        summary = app.label_registry().import_metadata(
            export / "metadata.csv", export / "images", steward="steward"
        )
        assert summary.quarantined == 0, summary.reasons
        return sum(1 for label in app.label_registry().labels(sources=["histo"]))


class opened:  # noqa: N801 (reads as a context manager)
    def __enter__(self) -> App:
        self.app = bootstrap()
        return self.app

    def __exit__(self, *_: object) -> None:
        self.app.close()


def retrain(**parameters: Any) -> Any:
    from flows.weekly_retrain import weekly_retrain

    return weekly_retrain(steward="weekly-retrain", return_state=True, **parameters)


def finished(state: Any) -> RetrainSummary:
    assert state.is_completed(), state.message
    summary: RetrainSummary = state.result()
    return summary


def outcome_artifacts(state: Any) -> list[str]:
    """The Markdown the weekly-retrain run published for the Prefect UI."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.weekly_retrain import WEEKLY_OUTCOME_ARTIFACT

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    return [str(a.data) for a in artifacts if a.key == WEEKLY_OUTCOME_ARTIFACT]


def tracking(app: App) -> MlflowClient:
    mlflow.set_tracking_uri(app.settings.mlflow_tracking_uri)
    return MlflowClient(app.settings.mlflow_tracking_uri)


def training_runs(app: App) -> list[Any]:
    client = tracking(app)
    experiment = client.get_experiment_by_name(app.settings.experiment)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id])


def two_triggers_at_once_run_one_retrain() -> RetrainSummary:
    """Two triggers of the weekly retrain at once, on a first week's labels: one trains and
    registers version 1, the other is skipped. Returns the summary of the one that trained."""
    states: list[Any] = []
    triggers = [threading.Thread(target=lambda: states.append(retrain())) for _ in range(2)]
    for trigger in triggers:
        trigger.start()
    for trigger in triggers:
        trigger.join(timeout=600)
    summaries = sorted((finished(state) for state in states), key=lambda s: s.status)
    assert [s.status for s in summaries] == ["awaiting approval", "skipped"]
    assert summaries[1].message.startswith(
        ("another retrain is running", "the labels have not changed")
    )
    with opened() as app:
        assert len(training_runs(app)) == 1
        assert [v.version for v in app.champions().models.versions()] == ["1"]
    return summaries[0]


def test_a_season_of_weekly_retrains(platform: Path) -> None:
    from flows.promotion import promotion
    from flows.training import EPOCHS

    # Week 1: two triggers at once run one retrain (the other is skipped); the first
    # challenger passes the first-model floors and awaits a reviewer.
    register_week(platform, seed=3, images=160)
    first = two_triggers_at_once_run_one_retrain()
    assert first.status == "awaiting approval", first.lines()
    assert (first.version, first.champion) == ("1", None)
    assert any(reason.split()[:2] == ["pass", "first_model_roc_auc:"] for reason in first.reasons)

    # The reviewer approves in the MLflow UI (tags); the promotion flow promotes.
    with opened() as app:
        client = tracking(app)
        client.set_model_version_tag(app.settings.model_name, "1", "approval", "approved")
        client.set_model_version_tag(app.settings.model_name, "1", "reviewer", "dr-lind")
    promoted = promotion(actor="promotion-flow")
    assert any("version 1 is now the champion" in line for line in promoted), promoted
    assert (first.initialized_from, first.init_reason) == ("base:none", "no champion yet")
    assert_the_next_challenger_starts_from_champion_1()

    # Week 2: new confirmed labels; the challenger is judged against champion 1 on the
    # same locked test set, and waits for approval or is rejected, by the gate.
    register_week(platform, seed=4, images=90)
    heard: list[Any] = []  # what `cme retrain`'s progress bar is told, epoch by epoch
    with EPOCHS.watching(heard.append):
        second_run = retrain()
    second = finished(second_run)
    with opened() as app:
        logged = tracking(app).get_metric_history(str(second.run_id), "val_auc")
    assert [epoch.metrics["val_auc"] for epoch in heard] == pytest.approx([m.value for m in logged])
    assert [epoch.epoch for epoch in heard] == list(range(1, len(heard) + 1)) != []
    assert second.version == "2" and second.status in ("awaiting approval", "rejected")
    assert {line.split()[1].rstrip(":") for line in second.reasons} >= {"roc_auc", "f1"}
    assert "delta_roc_auc" in second.metrics
    assert second.initialized_from == "melanoma-resnet50 version 1", second.lines()
    assert any("started from melanoma-resnet50 version 1" in line for line in second.lines())
    failed = [line for line in second.reasons if line.startswith("FAIL")]
    assert len(second.explanations) == len(failed)  # a reviewer reads why, rule by rule
    assert (second.status == "rejected") == bool(second.explanations)
    # The Prefect UI shows the week's outcome on the flow run, not only "Completed".
    (outcome,) = outcome_artifacts(second_run)
    assert outcome.startswith(f"# Weekly retrain: {second.status}\n"), outcome
    assert all(f"- `{reason}`" in outcome.splitlines() for reason in second.reasons)
    with opened() as app:
        champions = app.champions()
        assert champions.expected_champion() == "1"
        decision = champions.trail.events(app.settings.model_name)[-1]
        assert (decision.action, decision.version) == ("decision", "2")
        assert decision.evidence["champion_at_decision"] == "1"
        assert decision.evidence["flow_run_id"]  # lineage back to the Prefect run
        assert decision.evidence["lineage"]["initialized_from"] == "melanoma-resnet50 version 1"
        assert champions.models.version("2").tags["warm_generation"] == "1"
        snapshots = len(app.label_registry().snapshots())

    # Week 3: nothing new arrived: skipped, recorded as such, nothing trained.
    quiet = retrain()
    assert quiet.name == "Skipped"
    assert "not changed since the last retrain" in finished(quiet).message
    with opened() as app:
        assert len(app.label_registry().snapshots()) == snapshots
        runs = len(training_runs(app))
        audit = app.audit_trail().events(app.settings.model_name)

    # Week 4: the new images were damaged in the store after registration: training crashes
    # on them, and neither registry changes (no version, same champion, no audit event).
    register_week(platform, seed=5, images=60)
    with opened() as app:
        damaged = [
            app.settings.image_store_dir / label.stored_path
            for label in app.label_registry().labels(sources=["histo"])
            if label.image_id.startswith("SYN_5_")
        ]
    for image in damaged:
        image.write_bytes(b"this is not a JPEG any more")
    crashed = retrain()
    assert crashed.is_failed()
    with opened() as app:
        champions = app.champions()
        assert [v.version for v in champions.models.versions()] == ["2", "1"]
        assert champions.expected_champion() == "1"
        assert champions.models.aliased("champion").version == "1"
        assert champions.trail.events(app.settings.model_name) == audit
        statuses = [run.info.status for run in training_runs(app)]
        assert len(statuses) == runs + 1 and statuses.count("FAILED") == 1
        assert app.run_leases().current(RETRAIN_LEASE) is None  # released


def assert_the_next_challenger_starts_from_champion_1() -> None:
    """Continued education: exactly champion 1's weights (through its alias), or the base
    weights with the reason when the run asks for them, one is due, or they cannot fit."""
    import keras

    from usecases.challenger_training import initialization
    from usecases.snapshots import snapshot_on_hand

    with opened() as app:
        params = app.params()
        config = params.train.config()
        snapshot = snapshot_on_hand(app, app.label_registry().snapshots()[-1].snapshot_id)
        assert not snapshot.restored  # the data folder that took it holds it
        start = initialization(app, params, config, snapshot)
        assert start.initialized_from == "melanoma-resnet50 version 1"
        assert start.warm_generation == 1 and start.warm_start is not None
        logged = Path(mlflow.artifacts.download_artifacts("models:/melanoma-resnet50/1"))
        champion = keras.saving.load_model(logged / "artifacts" / "classifier.keras")
        for ours, theirs in zip(
            start.warm_start.classifier.get_weights(), champion.get_weights(), strict=True
        ):
            assert np.array_equal(ours, theirs)
        wider = initialization(app, params, replace(config, image_size=48), snapshot)
        assert (wider.initialized_from, wider.reason) == (
            "base:none",
            "cannot start from version 1: the champion reads 32 px images, this run 48 px",
        )
        restart = initialization(app, params, replace(config, init="base"), snapshot)
        assert (restart.initialized_from, restart.reason) == ("base:none", "train.init=base")
        due = app.params(["retrain.full_every=1"])
        assert initialization(app, due, config, snapshot).reason == (
            "full retrain, due every 1 weeks: the champion was warm-started 0 weeks in a row"
        )


def test_too_few_new_labels_skip_the_week(platform: Path) -> None:
    arrived = register_week(platform, seed=6, images=20)
    state = retrain()
    assert state.name == "Skipped"
    summary = finished(state)
    assert summary.message == f"{arrived} new labels since the start (no champion yet); 30 needed"
    with opened() as app:
        assert app.label_registry().snapshots() == []
        assert training_runs(app) == []


def test_failed_validation_stops_before_training_and_keeps_the_report(platform: Path) -> None:
    register_week(platform, seed=3, images=60)
    state = retrain(overrides=["validation.min_melanoma=1000"])
    assert state.is_failed()
    assert "FAIL manifest    enough melanoma" in state.message
    with opened() as app:
        assert app.label_registry().snapshots() == []
        assert training_runs(app) == []
        assert list(app.settings.reports_dir.glob("validation-*.json"))
        assert (app.settings.reports_dir / "data-docs" / "index.html").is_file()


def test_a_retrain_already_running_elsewhere_means_this_one_is_skipped(platform: Path) -> None:
    register_week(platform, seed=3, images=60)
    holder, ttl = "flow run 42 on gpu-7", timedelta(minutes=5)
    with opened() as app, exclusive(app.run_leases(), RETRAIN_LEASE, holder, ttl):
        state = retrain()
    assert state.name == "Skipped"
    assert finished(state).message.startswith("another retrain is running")
    assert "flow run 42 on gpu-7" in state.message
