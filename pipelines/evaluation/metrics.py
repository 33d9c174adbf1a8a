"""Metrics of melanoma calls at an operating threshold: an image is called melanoma when its
probability is at or above the threshold. Undefined ratios (no melanoma, no calls) are 0.0,
as scikit-learn's `zero_division=0` gives them; ROC AUC is None when only one class is
present."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import brier_score_loss, roc_auc_score

BENIGN, MELANOMA = 0, 1


@dataclass(frozen=True)
class ConfusionMatrix:
    true_negatives: int
    false_positives: int
    false_negatives: int
    true_positives: int

    @property
    def images(self) -> int:
        return (
            self.true_negatives + self.false_positives + self.false_negatives + self.true_positives
        )


@dataclass(frozen=True)
class BinaryMetrics:
    """How a model's calls at `threshold` agree with histopathology on `images` images."""

    threshold: float
    images: int
    melanoma: int
    accuracy: float
    precision: float
    sensitivity: float
    specificity: float
    f1: float
    roc_auc: float | None
    brier: float
    confusion: ConfusionMatrix

    @property
    def benign(self) -> int:
        return self.images - self.melanoma

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BinaryMetrics:
        return cls(**{**data, "confusion": ConfusionMatrix(**data["confusion"])})


def as_labels(labels: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Histopathology labels as a 1-D array of 0 (not melanoma) and 1 (melanoma)."""
    values = np.asarray(labels)
    if values.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {values.shape}")
    if not np.isin(values, (BENIGN, MELANOMA)).all():
        raise ValueError("labels must be 0 (not melanoma) or 1 (melanoma)")
    return values.astype(np.int64)


def as_probabilities(probabilities: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(probabilities, dtype=np.float64).reshape(-1)


def called_melanoma(probabilities: npt.ArrayLike, threshold: float) -> npt.NDArray[np.int64]:
    """1 where the model calls the image melanoma (probability >= threshold), else 0."""
    return (as_probabilities(probabilities) >= threshold).astype(np.int64)


def both_classes_present(labels: npt.NDArray[np.int64]) -> bool:
    return bool(labels.any() and not labels.all())


def binary_metrics(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, threshold: float
) -> BinaryMetrics:
    truth = as_labels(labels)
    scores = as_probabilities(probabilities)
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} labels but {len(scores)} probabilities")
    if len(truth) == 0:
        raise ValueError("no images to compute metrics on")
    confusion = _confusion(truth, called_melanoma(scores, threshold))
    tn, fp, fn, tp = (
        confusion.true_negatives, confusion.false_positives,
        confusion.false_negatives, confusion.true_positives,
    )  # fmt: skip
    return BinaryMetrics(
        threshold=float(threshold),
        images=len(truth),
        melanoma=int(truth.sum()),
        accuracy=(tp + tn) / len(truth),
        precision=_ratio(tp, tp + fp),
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        roc_auc=float(roc_auc_score(truth, scores)) if both_classes_present(truth) else None,
        brier=float(brier_score_loss(truth, scores, labels=[BENIGN, MELANOMA])),
        confusion=confusion,
    )


def _confusion(truth: npt.NDArray[np.int64], calls: npt.NDArray[np.int64]) -> ConfusionMatrix:
    """Counted directly: the subgroup table asks for dozens per evaluation, and
    scikit-learn's input checks cost more than the counting."""
    melanoma, called = truth == MELANOMA, calls == MELANOMA
    return ConfusionMatrix(
        true_negatives=int(np.sum(~melanoma & ~called)),
        false_positives=int(np.sum(~melanoma & called)),
        false_negatives=int(np.sum(melanoma & ~called)),
        true_positives=int(np.sum(melanoma & called)),
    )


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, 0.0 when undefined (scikit-learn's zero_division=0)."""
    return numerator / denominator if denominator else 0.0


def threshold_for_sensitivity(
    labels: npt.ArrayLike, probabilities: npt.ArrayLike, target: float
) -> float:
    """The highest threshold whose sensitivity on these cases is at least `target`.

    It is the probability of the k-th most suspicious melanoma, k the fewest melanomas that
    must be caught: any higher threshold misses one of them."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    truth = as_labels(labels)
    scores = as_probabilities(probabilities)
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} labels but {len(scores)} probabilities")
    if not np.isfinite(scores).all():
        raise ValueError("probabilities must be finite")
    melanoma_scores = np.sort(scores[truth == MELANOMA])[::-1]
    if len(melanoma_scores) == 0:
        raise ValueError("no melanoma among these cases: no threshold reaches a sensitivity")
    reachable = np.arange(1, len(melanoma_scores) + 1) / len(melanoma_scores)
    caught = int(np.argmax(reachable >= target)) + 1
    return float(melanoma_scores[caught - 1])
