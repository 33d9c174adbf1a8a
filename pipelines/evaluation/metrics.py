"""Metrics of melanoma calls at an operating threshold: an image is called melanoma when its
probability is at or above the threshold. Undefined ratios (no melanoma, no calls) are 0.0,
as scikit-learn's `zero_division=0` gives them; ROC AUC is None when only one class is
present, and so is the partial ROC AUC above 80% sensitivity (`partial_roc_auc`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import brier_score_loss, roc_auc_score

BENIGN, MELANOMA = 0, 1
PARTIAL_AUC_MIN_SENSITIVITY = 0.80
"""The ISIC 2024 challenge's primary metric: the ROC curve's area above 80% sensitivity."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


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
    partial_roc_auc: float | None = None
    """the ROC curve's area above 80% sensitivity, 0 to 0.2 (None: one class only, or a
    report written before it was computed)"""

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
    both = both_classes_present(truth)
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
        roc_auc=float(roc_auc_score(truth, scores)) if both else None,
        brier=float(brier_score_loss(truth, scores, labels=[BENIGN, MELANOMA])),
        confusion=confusion,
        partial_roc_auc=partial_roc_auc(truth, scores) if both else None,
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


def partial_roc_auc(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    min_sensitivity: float = PARTIAL_AUC_MIN_SENSITIVITY,
) -> float:
    """The area of the ROC curve above sensitivity `min_sensitivity`: the integral over the
    false positive rate of max(TPR - min_sensitivity, 0), the curve's points joined by
    straight lines (ties form one point), so 0 to 1 - min_sensitivity (0.2 at 0.80).

    It is the ISIC 2024 challenge's primary metric: it rewards only the part of the curve
    where a model finds at least 80% of the melanoma, and there, how many non-melanoma it
    leaves alone (equally, the integral over sensitivity from 0.80 to 1 of specificity)."""
    truth = as_labels(labels)
    scores = as_probabilities(probabilities)
    if len(truth) != len(scores):
        raise ValueError(f"{len(truth)} labels but {len(scores)} probabilities")
    if not both_classes_present(truth):
        raise ValueError("the partial ROC AUC needs both melanoma and non-melanoma cases")
    order, starts = descending_score_groups(scores)
    melanoma = (truth[order] == MELANOMA).astype(np.float64)[None, :]
    return float(partial_auc_of_weights(melanoma, 1.0 - melanoma, starts, min_sensitivity)[0])


def descending_score_groups(scores: FloatArray) -> tuple[IntArray, IntArray]:
    """The order of the cases by descending score, and where each run of tied scores
    starts in that order (one ROC point per run)."""
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-scores, kind="stable").astype(np.int64)
    ranked = scores[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]]).astype(np.int64)
    return order, starts


def partial_auc_of_weights(
    melanoma: FloatArray, other: FloatArray, starts: IntArray, min_sensitivity: float
) -> FloatArray:
    """The partial ROC AUC of each row of case weights, vectorised for the bootstrap.

    `melanoma` and `other` (rows, cases) weigh each case, in the order of
    `descending_score_groups`, as melanoma and as not (a weight of 2 counts a case twice;
    plain labels are weights 0 and 1). A row without weight in a class gives NaN.

    The curve runs from (FPR, TPR) = (0, 0) through one point per run of tied scores; run i
    moves FPR by other_i / N and TPR from t_before to t_after. With the excess
    e(t) = max(t - min_sensitivity, 0), the area over run i is other_i / N times the mean
    excess on its segment: (e(t_before) + e(t_after)) / 2 (the trapezoid) wherever the
    segment is above the line, and, on the one segment that crosses it, only the part past
    the crossing point, e(t_after)^2 / (2 (t_after - t_before)): the trapezoid plus the
    correction e(t_after) / 2 * (t_before - min_sensitivity) / (t_after - t_before).
    """
    if not 0.0 <= min_sensitivity < 1.0:
        raise ValueError(f"min_sensitivity must be in [0, 1), got {min_sensitivity}")
    if len(starts) < melanoma.shape[1]:  # tied scores: one ROC point per run
        melanoma = np.add.reduceat(melanoma, starts, axis=1)
        other = np.add.reduceat(other, starts, axis=1)
    found = np.cumsum(melanoma, axis=1)
    melanoma_total, other_total = found[:, -1], other.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = np.maximum(found / melanoma_total[:, None] - min_sensitivity, 0.0)
        trapezoids = (
            np.einsum("ij,ij->i", other, excess)
            + np.einsum("ij,ij->i", other[:, 1:], excess[:, :-1])
        ) / 2.0
        rows = np.arange(len(found))
        crossing = np.argmax(excess > 0.0, axis=1)  # the first point above the line
        after = found[rows, crossing] / melanoma_total
        before = after - melanoma[rows, crossing] / melanoma_total
        correction = (
            other[rows, crossing]
            * excess[rows, crossing]
            / 2.0
            * np.minimum(before - min_sensitivity, 0.0)
            / (after - before)
        )
        area = (trapezoids + correction) / other_total
    area[(melanoma_total <= 0) | (other_total <= 0)] = np.nan
    return np.asarray(area, dtype=np.float64)
