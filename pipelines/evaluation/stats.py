"""Paired statistics for a challenger against the champion on the same locked test set.

Both models score the same cases, so their errors are correlated; comparing two
independent intervals would throw that pairing away and be far too conservative. Two
paired comparisons are offered:

* ROC AUC: DeLong's test (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837), with
  the covariance of the AUCs computed by the midrank algorithm of Sun & Xu (2014, IEEE
  Signal Processing Letters 21:1389, "Fast implementation of DeLong's algorithm for
  comparing the areas under correlated ROC curves"), O(k n log n) for k models.
* F1 at each model's operating threshold: a paired bootstrap. Several images of one lesion
  are correlated, so with lesion ids the bootstrap draws whole lesions (a cluster
  bootstrap); without them it draws images.
* The partial ROC AUC above 80% sensitivity (ISIC 2024's metric): the same paired
  bootstrap, over the scores.

Labels are binary throughout: 1 (or True) is melanoma.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
from scipy import sparse, stats

from pipelines.evaluation.metrics import (
    PARTIAL_AUC_MIN_SENSITIVITY,
    descending_score_groups,
    partial_auc_of_weights,
    partial_roc_auc,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

_MAX_ENTRIES_PER_CHUNK = 4_000_000
"""Bootstrap multiplicity entries (iterations x units) drawn at once: about 100 MB of
temporaries, so that 10,000 lesions x 10,000 iterations runs in bounded memory."""


# --------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AucComparison:
    """DeLong's test of challenger ROC AUC minus champion ROC AUC on paired scores."""

    challenger_auc: float
    champion_auc: float
    difference: float
    """challenger - champion"""
    standard_error: float
    """of the difference, from the DeLong covariance of the two AUCs"""
    z: float
    """difference / standard_error; 0 when both are 0, +/-inf when only the error is 0"""
    p_value: float
    """two-sided"""
    p_superiority: float
    """one-sided, H1: challenger AUC > champion AUC"""
    ci_low: float
    ci_high: float
    confidence: float
    """level of the two-sided interval [ci_low, ci_high] of the difference"""

    def lower_bound(self, alpha: float) -> float:
        """One-sided (1 - alpha) lower confidence bound of the difference."""
        _check_level("alpha", alpha)
        if self.standard_error == 0.0:
            return self.difference
        return self.difference - float(stats.norm.ppf(1.0 - alpha)) * self.standard_error

    def to_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AucComparison:
        return cls(**{field.name: float(data[field.name]) for field in fields(cls)})


def delong_covariance(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """ROC AUCs of k models scored on the same n cases and DeLong's covariance of them.

    `scores` has shape (k, n) (a 1-D array is one model). Returns (aucs of shape (k,),
    covariance of shape (k, k)). Ties count 1/2, as in the Mann-Whitney statistic.

    Sun & Xu's algorithm: the structural components (placements) come from midranks of
    each model's scores among the positives, among the negatives and among all cases, so
    no n_pos x n_neg comparison matrix is built.
    """
    truth = _binary_labels(labels)
    matrix = _score_matrix(scores, len(truth))
    aucs, positive, negative = _placements(truth, matrix)
    m, n = positive.shape[1], negative.shape[1]
    return aucs, _covariance(positive) / m + _covariance(negative) / n


def delong_test(
    labels: npt.ArrayLike,
    challenger: npt.ArrayLike,
    champion: npt.ArrayLike,
    confidence: float = 0.95,
    *,
    lesions: npt.ArrayLike | None = None,
) -> AucComparison:
    """DeLong's paired test of challenger AUC - champion AUC on the same cases.

    With `lesions` (one id per image) the variance treats each lesion's images as one
    cluster (Obuchowski 1997): images of one lesion are not independent evidence, and
    treating them so makes the standard error too small. One image per lesion gives
    DeLong's variance exactly.
    """
    _check_level("confidence", confidence)
    truth = _binary_labels(labels)
    first = _score_vector(challenger, "challenger", len(truth))
    second = _score_vector(champion, "champion", len(truth))
    aucs, positive, negative = _placements(truth, np.vstack([first, second]))
    difference = float(aucs[0] - aucs[1])
    if lesions is None:
        standard_error = _difference_standard_error(positive, negative)
    else:
        units, _ = _resampling_units(lesions, len(truth))
        standard_error = _clustered_difference_standard_error(
            positive[0] - positive[1], negative[0] - negative[1], units[truth], units[~truth]
        )
    z = _z_score(difference, standard_error)
    half_width = float(stats.norm.ppf(0.5 + confidence / 2.0)) * standard_error
    return AucComparison(
        challenger_auc=float(aucs[0]),
        champion_auc=float(aucs[1]),
        difference=difference,
        standard_error=standard_error,
        z=z,
        p_value=float(2.0 * stats.norm.sf(abs(z))),
        p_superiority=float(stats.norm.sf(z)),
        ci_low=difference - half_width,
        ci_high=difference + half_width,
        confidence=confidence,
    )


def _placements(truth: BoolArray, scores: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """AUCs and DeLong's structural components of each model.

    Returns (aucs (k,), positive placements (k, m), negative placements (k, n)): the
    placement of a positive is the share of negatives it outscores, V10 in DeLong's
    notation; that of a negative is the share of positives that outscore it, V01. A
    positive's midrank among all cases minus its midrank among the positives counts the
    negatives below it (ties 1/2), and likewise for the negatives.
    """
    positives, negatives = scores[:, truth], scores[:, ~truth]
    m, n = positives.shape[1], negatives.shape[1]
    overall = stats.rankdata(np.hstack([positives, negatives]), method="average", axis=1)
    within_positives = stats.rankdata(positives, method="average", axis=1)
    within_negatives = stats.rankdata(negatives, method="average", axis=1)
    positive = (overall[:, :m] - within_positives) / n
    negative = 1.0 - (overall[:, m:] - within_negatives) / m
    aucs = positive.mean(axis=1)
    return (
        np.asarray(aucs, dtype=np.float64),
        np.asarray(positive, dtype=np.float64),
        np.asarray(negative, dtype=np.float64),
    )


def _covariance(placements: FloatArray) -> FloatArray:
    """Sample covariance (ddof 1) between the rows (models), always (k, k)."""
    return np.atleast_2d(np.cov(placements, ddof=1)).astype(np.float64)


def _difference_standard_error(positive: FloatArray, negative: FloatArray) -> float:
    """Standard error of AUC_0 - AUC_1: var(c'V10)/m + var(c'V01)/n with c = (1, -1).

    The same as c' S c, but computed on the differences of placements, so that two models
    ranking every case alike give exactly 0 instead of a rounding residue.
    """
    positive_difference = positive[0] - positive[1]
    negative_difference = negative[0] - negative[1]
    variance = (
        float(np.var(positive_difference, ddof=1)) / positive.shape[1]
        + float(np.var(negative_difference, ddof=1)) / negative.shape[1]
    )
    return math.sqrt(max(variance, 0.0))


def _clustered_difference_standard_error(
    positive: FloatArray, negative: FloatArray, positive_units: IntArray, negative_units: IntArray
) -> float:
    """Obuchowski's (1997) variance of an AUC difference when cases come in clusters.

    `positive` / `negative` are the per-image differences of the two models' placements;
    each cluster sums its images' placements (X_k over its positives, Y_k over its
    negatives), and var = S10/M + S01/N + 2 S11/(M N) with
    S10 = I10 / ((I10 - 1) M) sum_k (X_k - m_k theta)^2 over clusters with positives,
    S01 likewise over clusters with negatives, and
    S11 = I / (I - 1) sum_k (X_k - m_k theta)(Y_k - n_k theta) over all clusters.
    """
    clusters = int(max(positive_units.max(), negative_units.max())) + 1
    theta = float(positive.mean())
    m, n = len(positive), len(negative)
    x = np.bincount(positive_units, weights=positive, minlength=clusters)
    y = np.bincount(negative_units, weights=negative, minlength=clusters)
    m_k = np.bincount(positive_units, minlength=clusters)
    n_k = np.bincount(negative_units, minlength=clusters)
    x_dev, y_dev = x - m_k * theta, y - n_k * theta
    with_positives, with_negatives = int((m_k > 0).sum()), int((n_k > 0).sum())
    if min(with_positives, with_negatives) < 2:
        raise ValueError(
            "DeLong's test by lesion needs melanoma in at least 2 lesions and benign images in "
            f"at least 2 lesions, got {with_positives} and {with_negatives}"
        )
    present = int(((m_k > 0) | (n_k > 0)).sum())
    s10 = with_positives / ((with_positives - 1) * m) * float(np.sum(x_dev**2))
    s01 = with_negatives / ((with_negatives - 1) * n) * float(np.sum(y_dev**2))
    s11 = present / (present - 1) * float(np.sum(x_dev * y_dev))
    variance = s10 / m + s01 / n + 2.0 * s11 / (m * n)
    return math.sqrt(max(variance, 0.0))


def _z_score(difference: float, standard_error: float) -> float:
    if standard_error > 0.0:
        return difference / standard_error
    return 0.0 if difference == 0.0 else math.copysign(math.inf, difference)


def _binary_labels(labels: npt.ArrayLike) -> BoolArray:
    """1-D labels of 0/1 (or booleans) with at least two cases of each class.

    Two of each, because the covariance of the structural components of one class is
    undefined (0/0) with a single case of it.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {array.shape}")
    truth = _as_binary(array, "labels")
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"labels need both classes, got {positives} positives and {negatives} negatives"
        )
    if positives < 2 or negatives < 2:
        raise ValueError(
            "DeLong needs at least two cases of each class, "
            f"got {positives} positives and {negatives} negatives"
        )
    return truth


def _as_binary(array: npt.NDArray[Any], name: str) -> BoolArray:
    if array.dtype == np.bool_:
        return array.astype(np.bool_)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be 0/1 or boolean, got dtype {array.dtype}")
    if not np.isin(array, (0, 1)).all():
        found = np.unique(array[~np.isin(array, (0, 1))])[:5].tolist()
        raise ValueError(f"{name} must be only 0/1 (1 = melanoma), found {found}")
    return np.asarray(array == 1, dtype=np.bool_)


def _score_matrix(scores: npt.ArrayLike, cases: int) -> FloatArray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise ValueError(f"scores must be (models, cases) or 1-D, got shape {array.shape}")
    matrix = np.atleast_2d(array)
    if matrix.shape[1] != cases:
        raise ValueError(f"scores have {matrix.shape[1]} cases per model but labels have {cases}")
    if np.isnan(matrix).any():
        raise ValueError("scores contain NaN")
    return matrix


def _score_vector(scores: npt.ArrayLike, name: str, cases: int) -> FloatArray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} scores must be 1-D, got shape {array.shape}")
    if len(array) != cases:
        raise ValueError(f"{name} has {len(array)} scores but labels have {cases}")
    if np.isnan(array).any():
        raise ValueError(f"{name} scores contain NaN")
    return array


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}")


# --------------------------------------------------------------------------------------
# Paired bootstrap of F1
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BootstrapDifference:
    """Challenger minus champion on the same test set, and how that difference spreads over
    paired bootstrap resamples (the same units drawn for both models each time)."""

    difference: float
    """challenger - champion, on the full test set"""
    ci_low: float
    ci_high: float
    """percentile interval of the bootstrap differences at `confidence` (two-sided)"""
    confidence: float
    alpha: float
    """the one-sided level `lower_bound` was taken at"""
    lower_bound: float
    """the alpha quantile of the bootstrap differences"""
    p_not_better: float
    """share of bootstrap differences <= 0"""
    iterations: int
    """resamples the spread was taken over"""
    resampled: str
    """"lesion" or "image": the unit drawn with replacement"""

    def to_dict(self) -> dict[str, float | int | str]:
        return {name: _typed(name, value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        values: dict[str, Any] = {
            f.name: _typed(f.name, data[f.name]) for f in fields(cls) if f.name in data
        }
        return cls(**values)


def _typed(name: str, value: Any) -> float | int | str:
    if name == "iterations":
        return int(value)
    if name == "resampled":
        return str(value)
    return float(value)


def _spread(differences: FloatArray, confidence: float, alpha: float) -> dict[str, float]:
    """The interval, one-sided bound and share not better of bootstrap differences."""
    tail = (1.0 - confidence) / 2.0
    ci_low, ci_high = np.quantile(differences, [tail, 1.0 - tail])
    return {
        "ci_low": float(ci_low),
        "ci_high": float(ci_high),
        "confidence": confidence,
        "alpha": alpha,
        "lower_bound": float(np.quantile(differences, alpha)),
        "p_not_better": float(np.mean(differences <= 0.0)),
    }


@dataclass(frozen=True, kw_only=True)
class F1Comparison(BootstrapDifference):
    """Paired bootstrap of challenger F1 minus champion F1 at their operating thresholds."""

    challenger_f1: float
    champion_f1: float


def paired_bootstrap_f1(
    labels: npt.ArrayLike,
    challenger_calls: npt.ArrayLike,
    champion_calls: npt.ArrayLike,
    *,
    lesions: npt.ArrayLike | None = None,
    iterations: int = 2000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> F1Comparison:
    """Paired bootstrap of challenger F1 - champion F1 (calls: True = called melanoma).

    With `lesions` (one id per image) whole lesions are drawn with replacement, since the
    images of one lesion are not independent; without, images are drawn. Each iteration
    resamples the same units for both models, which is what makes it paired.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    _check_level("confidence", confidence)
    _check_level("alpha", alpha)
    truth, challenger, champion = _bootstrap_inputs(labels, challenger_calls, champion_calls)
    units, resampled = _resampling_units(lesions, len(truth))
    unit_counts = _unit_counts(truth, challenger, champion, units)
    full = unit_counts.sum(axis=0, keepdims=True)
    challenger_f1 = float(_f1(full[:, 0], full[:, 1], full[:, 2])[0])
    champion_f1 = float(_f1(full[:, 3], full[:, 4], full[:, 5])[0])
    differences = _bootstrap_differences(unit_counts, iterations, np.random.default_rng(seed))
    return F1Comparison(
        challenger_f1=challenger_f1,
        champion_f1=champion_f1,
        difference=challenger_f1 - champion_f1,
        iterations=iterations,
        resampled=resampled,
        **_spread(differences, confidence, alpha),
    )


def _bootstrap_inputs(
    labels: npt.ArrayLike, challenger_calls: npt.ArrayLike, champion_calls: npt.ArrayLike
) -> tuple[BoolArray, BoolArray, BoolArray]:
    arrays = {
        "labels": np.asarray(labels),
        "challenger_calls": np.asarray(challenger_calls),
        "champion_calls": np.asarray(champion_calls),
    }
    for name, array in arrays.items():
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have equal lengths, got {lengths}")
    if lengths["labels"] == 0:
        raise ValueError("no cases to bootstrap")
    truth, challenger, champion = (_as_binary(array, name) for name, array in arrays.items())
    return truth, challenger, champion


def _resampling_units(
    lesions: npt.ArrayLike | None, cases: int
) -> tuple[IntArray, Literal["lesion", "image"]]:
    """Index of the resampling unit of each image: its lesion (ids sorted), or itself."""
    if lesions is None:
        return np.arange(cases, dtype=np.int64), "image"
    ids = np.asarray(lesions)
    if ids.ndim != 1 or len(ids) != cases:
        raise ValueError(f"lesions must be 1-D with one id per image ({cases}), got {ids.shape}")
    _, units = np.unique(ids, return_inverse=True)
    return units.astype(np.int64), "lesion"


def _unit_counts(
    truth: BoolArray, challenger: BoolArray, champion: BoolArray, units: IntArray
) -> FloatArray:
    """(units, 6): TP, FP, FN of the challenger, then of the champion, per unit."""
    per_image = np.column_stack(
        [
            truth & challenger,
            ~truth & challenger,
            truth & ~challenger,
            truth & champion,
            ~truth & champion,
            truth & ~champion,
        ]
    ).astype(np.float64)
    counts = np.zeros((int(units.max()) + 1, 6), dtype=np.float64)
    np.add.at(counts, units, per_image)
    return counts


def _draw_multiplicities(rng: np.random.Generator, units: int, rows: int) -> FloatArray:
    """(rows, units): how often each unit is drawn in each of `rows` bootstrap samples.

    Each row draws `units` unit indices uniformly with replacement,
    `rng.integers(0, units, size=(rows, units))`, and counts them.
    """
    drawn = rng.integers(0, units, size=(rows, units))
    offsets = (np.arange(rows, dtype=np.int64) * units)[:, None]
    counted = np.bincount((drawn + offsets).ravel(), minlength=rows * units)
    return counted.reshape(rows, units).astype(np.float64)


def _bootstrap_differences(
    unit_counts: FloatArray, iterations: int, rng: np.random.Generator
) -> FloatArray:
    """F1 differences of `iterations` bootstrap samples, drawn in memory-bounded chunks."""
    units = unit_counts.shape[0]
    rows_per_chunk = max(1, _MAX_ENTRIES_PER_CHUNK // units)
    differences = np.empty(iterations, dtype=np.float64)
    for start in range(0, iterations, rows_per_chunk):
        rows = min(rows_per_chunk, iterations - start)
        multiplicities = _draw_multiplicities(rng, units, rows)
        differences[start : start + rows] = _f1_differences(unit_counts, multiplicities)
    return differences


def _f1_differences(unit_counts: FloatArray, multiplicities: FloatArray) -> FloatArray:
    """Challenger F1 - champion F1 of each bootstrap sample (a row of multiplicities)."""
    totals = multiplicities @ unit_counts
    challenger = _f1(totals[:, 0], totals[:, 1], totals[:, 2])
    champion = _f1(totals[:, 3], totals[:, 4], totals[:, 5])
    return challenger - champion


def _f1(tp: FloatArray, fp: FloatArray, fn: FloatArray) -> FloatArray:
    """2TP / (2TP + FP + FN), defined as 0 when there is nothing to count."""
    denominator = 2.0 * tp + fp + fn
    return np.divide(2.0 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


# --------------------------------------------------------------------------------------
# Paired bootstrap of the partial ROC AUC
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PartialAucComparison(BootstrapDifference):
    """Paired bootstrap of challenger minus champion partial ROC AUC above
    `min_sensitivity` (0 to 1 - min_sensitivity), over the scores. Its `iterations` count
    the resamples with both classes (one without melanoma or without others has no ROC
    curve and is left out)."""

    challenger_partial_auc: float
    champion_partial_auc: float
    min_sensitivity: float = PARTIAL_AUC_MIN_SENSITIVITY


def paired_bootstrap_partial_auc(
    labels: npt.ArrayLike,
    challenger: npt.ArrayLike,
    champion: npt.ArrayLike,
    *,
    lesions: npt.ArrayLike | None = None,
    min_sensitivity: float = PARTIAL_AUC_MIN_SENSITIVITY,
    iterations: int = 2000,
    confidence: float = 0.95,
    alpha: float = 0.05,
    seed: int = 0,
) -> PartialAucComparison:
    """Paired bootstrap of challenger - champion partial ROC AUC on the same cases.

    As for F1: with `lesions` whole lesions are drawn with replacement, else images, the
    same units for both models in each iteration. A drawn unit counts as many times as it
    was drawn (a weighted ROC curve), so nothing is copied.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    _check_level("confidence", confidence)
    _check_level("alpha", alpha)
    truth = _as_binary(np.asarray(labels), "labels")
    if truth.ndim != 1 or truth.all() or not truth.any():
        raise ValueError("the partial ROC AUC needs 1-D labels with both classes")
    units, resampled = _resampling_units(lesions, len(truth))
    first = _score_vector(challenger, "challenger", len(truth))
    second = _score_vector(champion, "champion", len(truth))
    challenger_value = partial_roc_auc(truth, first, min_sensitivity)
    champion_value = partial_roc_auc(truth, second, min_sensitivity)
    models = (_ranked_model(first, truth, units), _ranked_model(second, truth, units))
    differences = _bootstrap_partial_auc_differences(
        int(units.max()) + 1, models, min_sensitivity, iterations, np.random.default_rng(seed)
    )
    if len(differences) == 0:
        raise ValueError("no bootstrap resample had both classes: too few lesions")
    return PartialAucComparison(
        challenger_partial_auc=challenger_value,
        champion_partial_auc=champion_value,
        difference=challenger_value - champion_value,
        iterations=len(differences),
        resampled=resampled,
        min_sensitivity=min_sensitivity,
        **_spread(differences, confidence, alpha),
    )


@dataclass(frozen=True)
class _RankedModel:
    """A model's ROC curve as blocks of consecutive cases in descending order of score, and
    which resampling units fall in each block, as melanoma and as not.

    A block is a run of tied scores holding both classes, or a maximal run of tied-score
    groups holding only one class: consecutive horizontal (or vertical) segments of the
    curve joined into one, which changes no area. With m melanoma the curve has at most
    2m + 1 blocks, far fewer than cases, and a resample's weight per block is its unit
    multiplicities times a sparse (units, blocks) count matrix."""

    melanoma: Any
    """scipy.sparse.csr_array (units, blocks): melanoma images of each unit in each block"""
    other: Any
    """the same for the other images"""
    blocks: IntArray
    """np.arange(blocks): every block is one ROC point"""


def _ranked_model(scores: FloatArray, truth: BoolArray, units: IntArray) -> _RankedModel:
    order, starts = descending_score_groups(scores)
    melanoma = truth[order]
    sizes = np.diff(np.append(starts, len(order)))
    with_melanoma = np.add.reduceat(melanoma.astype(np.int64), starts) > 0
    with_other = np.add.reduceat((~melanoma).astype(np.int64), starts) > 0
    kind = with_melanoma.astype(np.int64) + 2 * with_other.astype(np.int64)  # 3: both
    opens = np.append(True, (kind[1:] != kind[:-1]) | (kind[1:] == 3))
    block = np.repeat(np.cumsum(opens) - 1, sizes)
    count = (int(units.max()) + 1, int(block[-1]) + 1)
    ranked_units = units[order]

    def counts(cases: BoolArray) -> Any:
        ones = np.ones(int(cases.sum()))
        return sparse.csr_array((ones, (ranked_units[cases], block[cases])), shape=count)

    return _RankedModel(counts(melanoma), counts(~melanoma), np.arange(count[1]))


def _bootstrap_partial_auc_differences(
    units: int,
    models: tuple[_RankedModel, _RankedModel],
    min_sensitivity: float,
    iterations: int,
    rng: np.random.Generator,
) -> FloatArray:
    """Challenger - champion partial ROC AUC of each resample with both classes, drawn in
    memory-bounded chunks."""
    rows_per_chunk = max(1, _MAX_ENTRIES_PER_CHUNK // units)
    differences = np.empty(iterations, dtype=np.float64)
    for start in range(0, iterations, rows_per_chunk):
        rows = min(rows_per_chunk, iterations - start)
        multiplicities = _draw_multiplicities(rng, units, rows)
        challenger, champion = (
            partial_auc_of_weights(
                np.asarray(multiplicities @ model.melanoma, dtype=np.float64),
                np.asarray(multiplicities @ model.other, dtype=np.float64),
                model.blocks,
                min_sensitivity,
            )
            for model in models
        )
        differences[start : start + rows] = challenger - champion
    differences[np.abs(differences) < 1e-12] = 0.0  # the same curve, summed in another order
    return differences[~np.isnan(differences)]
