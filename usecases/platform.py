"""What a use case receives from the composition root: this installation's folders and names,
and its adapters, each built once (label registry, run leases, prediction log, MLflow
tracking and model registry, champion lifecycle)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipelines.errors import Refused, Unavailable
from registry.labels import IntakeRules, LabelRegistry
from registry.models import ModelRegistry
from registry.prediction_log import PredictionLogRepository
from registry.promotion import ChampionLifecycle
from registry.run_leases import RunLeaseRepository
from registry.screening_log import ScreeningLogRepository


class TrackingUnavailable(Unavailable):
    """The MLflow tracking server cannot be reached; the message names it."""


class TrackingRefused(Refused):
    """The MLflow tracking server answered, and refused (credentials, permissions, a
    deleted experiment); the message names it."""


@dataclass(frozen=True)
class Workspace:
    """Where this installation keeps its files, and the names it tracks and registers under."""

    home: Path
    data_dir: Path
    image_store_dir: Path
    snapshots_dir: Path
    reports_dir: Path
    work_dir: Path
    """Scratch space of running stages (checkpoints, tf.data caches)."""
    inbox_dir: Path
    project_dir: Path
    """The DVC project root (data.dvc, dvc.yaml, .dvc/), a git checkout in development."""
    dvc_remote_url: str
    dvc_remote_endpoint: str | None
    built_from: str | None
    """The commit an image was built from, where the project folder is no git checkout."""
    tracking_uri: str
    experiment: str
    model_name: str


class Platform(Protocol):
    """The adapters of one installation, as the composition root built them."""

    @property
    def workspace(self) -> Workspace: ...

    def label_registry(self, rules: IntakeRules | None = None) -> LabelRegistry:
        """The label registry; `rules` replace its intake rules from now on."""
        ...

    def run_leases(self) -> RunLeaseRepository:
        """Named claims that keep runs apart (one weekly retrain at a time)."""
        ...

    def prediction_log(self) -> PredictionLogRepository:
        """Every logged prediction, and its match with a label that arrived later."""
        ...

    def screening_log(self) -> ScreeningLogRepository:
        """The pre-screening results: which images of which patients a model scored."""
        ...

    def tracking(self) -> str:
        """MLflow pointed at this installation's tracking server and experiment; returns the
        experiment id."""
        ...

    def models(self) -> ModelRegistry:
        """The MLflow model registry of the classifier."""
        ...

    def champions(self) -> ChampionLifecycle:
        """Registration, approval, promotion, rollback and the alias guard."""
        ...

    def steward(self, given: str | None) -> str:
        """Who acts: `given`, else the installation's default steward."""
        ...
