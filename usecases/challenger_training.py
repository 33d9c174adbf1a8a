"""The train stage: fine-tune a challenger on a recorded snapshot, tracked in MLflow with
its lineage (snapshot id, DVC hash, git commit, and what it started from: the champion's
weights, or the base weights on the first week, every `retrain.full_every` weeks, on drift,
or when the champion's architecture differs)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from pipelines.errors import BadInput
from pipelines.training.backbones import APPROACH_TAG
from registry.labels import SnapshotRecord
from registry.models import CHAMPION
from usecases.lineage import git_commit
from usecases.params import Params
from usecases.platform import Platform
from usecases.snapshots import SnapshotOnHand, snapshot_drift_warnings, snapshot_on_hand

if TYPE_CHECKING:
    from pipelines.training.config import TrainConfig
    from pipelines.training.fit import EpochRecord, OnEpoch, TrainResult
    from pipelines.training.warm_start import WarmStart

log = logging.getLogger(__name__)

INITIALIZED_FROM_TAG = "initialized_from"
INIT_REASON_TAG = "init_reason"
FEATURE_CACHE_FOLDER = "feature-cache"  # under $CME_HOME: feature extraction's features
WARM_GENERATION_TAG = "warm_generation"  # warm starts in a row since the last from the base


class NoSnapshot(BadInput, LookupError):
    """Training was asked for before any snapshot was recorded."""


@dataclass(frozen=True)
class Initialization:
    """What a challenger starts from, and why; recorded on its run and model version."""

    initialized_from: str  # "melanoma-resnet50 version 3", or "base:imagenet", "base:none"
    reason: str
    warm_generation: int
    warm_start: WarmStart | None = None

    def tags(self) -> dict[str, str]:
        return {
            INITIALIZED_FROM_TAG: self.initialized_from,
            INIT_REASON_TAG: self.reason,
            WARM_GENERATION_TAG: str(self.warm_generation),
        }


@dataclass(frozen=True)
class TrainingOutcome:
    run_id: str
    model_uri: str
    snapshot: SnapshotRecord
    result: TrainResult
    initialization: Initialization


def train(
    platform: Platform,
    params: Params,
    *,
    snapshot_id: str | None = None,
    on_epoch: OnEpoch | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainingOutcome:
    """Train on `snapshot_id` (default: the latest snapshot) and log the run, its curves
    and the model to the `melanoma-retrain` experiment; `tags` are added to the run (the
    weekly retrain names itself there, to find the run a GPU worker trained)."""
    import mlflow

    from pipelines.training import tracking
    from pipelines.training.fit import train_classifier

    snapshot = _snapshot_to_train_on(platform, snapshot_id)
    on_hand = snapshot_on_hand(platform, snapshot.snapshot_id)
    manifest = on_hand.manifest
    config = params.train.config()
    platform.tracking()
    start = initialization(platform, params, config, on_hand)
    log.warning("challenger starts from %s: %s", start.initialized_from, start.reason)
    commit, dirty = git_commit(platform.workspace.project_dir, platform.workspace.built_from)
    lineage = tracking.Lineage(
        snapshot_id=snapshot.snapshot_id,
        dvc_hash=snapshot.dvc_hash,
        manifest_sha256=snapshot.manifest_sha256,
        git_commit=commit,
        labels_as_of=snapshot.labels_as_of.isoformat() if snapshot.labels_as_of else "",
    )
    with mlflow.start_run(run_name=f"challenger {snapshot.snapshot_id}") as run:
        mlflow.set_tags(
            {
                **lineage.tags(),
                **start.tags(),
                **(tags or {}),
                "git_dirty": str(dirty).lower(),
                "stage": "train",
                "data_restored": str(on_hand.restored).lower(),
            }
        )
        tracking.log_run_inputs(config.as_params(), _data_params(manifest))
        work_dir = platform.workspace.work_dir / run.info.run_id
        try:
            result = train_classifier(
                manifest,
                on_hand.data_dir,
                config,
                work_dir=work_dir,
                on_epoch=_logged(on_epoch),
                warm_start=start.warm_start,
                feature_cache=platform.workspace.home / FEATURE_CACHE_FOLDER,
            )
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        mlflow.set_tags({"precision": result.hardware.precision, "gpus": result.hardware.gpus})
        example = _example_image(on_hand)
        model_uri = tracking.log_result(result, example, platform.workspace.model_name)
        mlflow.set_tag("model_uri", model_uri)  # what `cme evaluate` finds the model by
    return TrainingOutcome(run.info.run_id, model_uri, snapshot, result, start)


def initialization(
    platform: Platform, params: Params, config: TrainConfig, snapshot: SnapshotOnHand
) -> Initialization:
    """Start from the champion (continued education) unless the policy, the calendar, drift
    or the champion itself asks for a start from the base weights."""
    base = f"base:{config.weights}"
    if config.init == "base":
        return Initialization(base, "train.init=base", 0)
    champion = platform.models().aliased(CHAMPION)
    if champion is None:
        return Initialization(base, "no champion yet", 0)
    generation = int(champion.tags.get(WARM_GENERATION_TAG, "0") or 0) + 1
    full_every = params.retrain.full_every
    if full_every and generation >= full_every:
        reason = (
            f"full retrain, due every {full_every} weeks: the champion was warm-started "
            f"{generation - 1} weeks in a row"
        )
        return Initialization(base, reason, 0)
    drift = snapshot_drift_warnings(snapshot.folder) if params.retrain.full_on_drift else []
    if drift:
        return Initialization(base, f"full retrain on drift: {'; '.join(drift)}", 0)
    approach = champion.tags.get(APPROACH_TAG) or "fine_tune"  # before there were others
    return _from_champion(platform, config, (champion.version, approach), generation, base)


def _from_champion(
    platform: Platform,
    config: TrainConfig,
    champion: tuple[str, str],  # its version, and the approach that trained it
    generation: int,
    base: str,
) -> Initialization:
    from pipelines.training.tracking import load_classifier
    from pipelines.training.warm_start import WarmStart, champion_classifier, why_not_warm

    name = platform.workspace.model_name
    served = load_classifier(f"models:/{name}@{CHAMPION}")
    version, approach = champion
    classifier = champion_classifier(served)
    refusal = why_not_warm(classifier, config, approach)
    if refusal is not None or classifier is None:
        return Initialization(base, f"cannot start from version {version}: {refusal}", 0)
    source = f"{name} version {version}"
    reason = f"continued education: shrink {config.shrink:g}, perturb {config.perturb:g}"
    return Initialization(source, reason, generation, WarmStart(source, classifier))


def _logged(on_epoch: OnEpoch | None) -> OnEpoch:
    """Each epoch's metrics go to the active MLflow run, then to `on_epoch`."""
    from pipelines.training.tracking import log_epoch

    def both(record: EpochRecord) -> None:
        log_epoch(record)
        if on_epoch is not None:
            on_epoch(record)

    return both


def _snapshot_to_train_on(platform: Platform, snapshot_id: str | None) -> SnapshotRecord:
    registry = platform.label_registry()
    if snapshot_id is not None:
        return registry.snapshot(snapshot_id)
    snapshots = registry.snapshots()
    if not snapshots:
        raise NoSnapshot("no snapshot to train on yet: take one with `cme snapshot`")
    return snapshots[-1]


def _data_params(manifest: pd.DataFrame) -> dict[str, int]:
    counts: dict[str, int] = {}
    for split, rows in manifest.groupby("split"):
        counts[f"data.{split}_images"] = len(rows)
        counts[f"data.{split}_melanoma"] = int(rows["label"].sum())
        counts[f"data.{split}_lesions"] = int(rows["lesion_id"].nunique())
    return counts


def _example_image(snapshot: SnapshotOnHand) -> bytes:
    """A real image of the snapshot, kept with the model as its input example."""
    return (snapshot.data_dir / str(snapshot.manifest["path"].iloc[0])).read_bytes()
