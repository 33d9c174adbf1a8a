"""Evaluate the challenger, and the champion beside it, on the same locked test set."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipelines.evaluation import EvaluationError
from pipelines.evaluation.metrics import (
    as_labels,
    as_probabilities,
    binary_metrics,
    called_melanoma,
)
from pipelines.evaluation.report import ChampionComparison, EvaluationReport, ModelEvaluation
from pipelines.evaluation.stats import (
    delong_test,
    paired_bootstrap_f1,
    paired_bootstrap_partial_auc,
)
from pipelines.evaluation.subgroups import AgeBands, subgroup_table

CHALLENGER, CHAMPION = "challenger", "champion"
MIN_CASES_PER_CLASS = 2  # DeLong's variance needs two of each class


@dataclass(frozen=True)
class EvaluationSettings:
    age_bands: AgeBands = field(default_factory=AgeBands)
    min_subgroup_images: int = 30
    min_subgroup_melanoma: int = 50
    bootstrap_iterations: int = 2000
    confidence: float = 0.95
    alpha: float = 0.05
    """one-sided level of the F1 lower bound (the gate's alpha)"""
    seed: int = 0


@dataclass(frozen=True)
class ScoredModel:
    """A model's melanoma probabilities on the test cases, row for row, and the threshold
    at or above which it calls an image melanoma."""

    model_uri: str
    version: str | None
    threshold: float
    probabilities: npt.NDArray[np.float64]
    architecture: str = ""  # what it is built of, as its run or version records it


def evaluate_on_test_set(
    snapshot_id: str,
    cases: pd.DataFrame,
    challenger: ScoredModel,
    champion: ScoredModel | None,
    settings: EvaluationSettings,
) -> EvaluationReport:
    """Metrics and subgroups of each model at its own threshold; with a champion, DeLong's
    test of the ROC AUC difference and lesion-paired bootstraps of the F1 and partial ROC
    AUC differences."""
    labels = _test_labels(cases)
    challenger = checked_model(CHALLENGER, challenger, cases)
    if champion is not None:
        champion = checked_model(CHAMPION, champion, cases)
    return EvaluationReport(
        snapshot_id=snapshot_id,
        test_images=len(labels),
        test_melanoma=int(labels.sum()),
        test_lesions=int(cases["lesion_id"].nunique()),
        challenger=_evaluation(CHALLENGER, cases, labels, challenger, settings),
        versus=_versus(cases, labels, challenger, champion, settings) if champion else None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _evaluation(
    role: str,
    cases: pd.DataFrame,
    labels: npt.NDArray[np.int64],
    model: ScoredModel,
    settings: EvaluationSettings,
) -> ModelEvaluation:
    return ModelEvaluation(
        role=role,
        model_uri=model.model_uri,
        version=model.version,
        architecture=model.architecture,
        metrics=binary_metrics(labels, model.probabilities, model.threshold),
        subgroups=subgroup_table(
            cases,
            model.probabilities,
            model.threshold,
            age_bands=settings.age_bands,
            min_images=settings.min_subgroup_images,
            min_melanoma=settings.min_subgroup_melanoma,
        ),
    )


def _versus(
    cases: pd.DataFrame,
    labels: npt.NDArray[np.int64],
    challenger: ScoredModel,
    champion: ScoredModel,
    settings: EvaluationSettings,
) -> ChampionComparison:
    return ChampionComparison(
        champion=_evaluation(CHAMPION, cases, labels, champion, settings),
        auc=delong_test(
            labels,
            challenger.probabilities,
            champion.probabilities,
            settings.confidence,
            lesions=cases["lesion_id"].to_numpy(),
        ),
        f1=paired_bootstrap_f1(
            labels,
            called_melanoma(challenger.probabilities, challenger.threshold),
            called_melanoma(champion.probabilities, champion.threshold),
            lesions=cases["lesion_id"].to_numpy(),
            iterations=settings.bootstrap_iterations,
            confidence=settings.confidence,
            alpha=settings.alpha,
            seed=settings.seed,
        ),
        partial_auc=paired_bootstrap_partial_auc(
            labels,
            challenger.probabilities,
            champion.probabilities,
            lesions=cases["lesion_id"].to_numpy(),
            iterations=settings.bootstrap_iterations,
            confidence=settings.confidence,
            alpha=settings.alpha,
            seed=settings.seed,
        ),
    )


def _test_labels(cases: pd.DataFrame) -> npt.NDArray[np.int64]:
    labels = as_labels(cases["label"].to_numpy())
    melanoma = int(labels.sum())
    benign = len(labels) - melanoma
    if min(melanoma, benign) < MIN_CASES_PER_CLASS:
        raise EvaluationError(
            f"the locked test set needs at least {MIN_CASES_PER_CLASS} melanoma and "
            f"{MIN_CASES_PER_CLASS} not-melanoma images to compare models: it has "
            f"{melanoma} melanoma and {benign} not-melanoma images; register more "
            "confirmed labels and take a new snapshot"
        )
    lesions = cases.groupby("label")["lesion_id"].nunique()
    if min(int(lesions.get(1, 0)), int(lesions.get(0, 0))) < MIN_CASES_PER_CLASS:
        raise EvaluationError(
            f"the locked test set needs melanoma in at least {MIN_CASES_PER_CLASS} lesions and "
            f"benign images in at least {MIN_CASES_PER_CLASS} lesions to compare models; "
            "register more confirmed labels and take a new snapshot"
        )
    return labels


def checked_model(role: str, model: ScoredModel, cases: pd.DataFrame) -> ScoredModel:
    """The model with its probabilities as a flat float array, one per test case, each
    finite and within [0, 1], and a threshold within [0, 1]."""
    name = f"{role} {model.model_uri}"
    probabilities = as_probabilities(model.probabilities)
    if len(probabilities) != len(cases):
        raise EvaluationError(
            f"{name} has {len(probabilities)} probabilities for {len(cases)} test images"
        )
    valid = np.isfinite(probabilities) & (probabilities >= 0.0) & (probabilities <= 1.0)
    if not valid.all():
        first = int(np.argmin(valid))
        image_id = cases["image_id"].iloc[first]
        raise EvaluationError(
            f"{name} gave image {image_id} the probability {probabilities[first]!r}: "
            "probabilities must be finite and within [0, 1]"
        )
    if not 0.0 <= model.threshold <= 1.0:
        raise EvaluationError(f"{name} has threshold {model.threshold}, not within [0, 1]")
    return replace(model, probabilities=probabilities)
