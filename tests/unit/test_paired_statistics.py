"""Paired statistics of challenger against champion: DeLong's AUC test and the paired
bootstrap of F1 (image or lesion resampling)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import f1_score, roc_auc_score

from pipelines.evaluation import stats as stats_module
from pipelines.evaluation.stats import (
    AucComparison,
    F1Comparison,
    delong_covariance,
    delong_test,
    paired_bootstrap_f1,
)

# --------------------------------------------------------------------------------------
# Reference data: pROC's aSAH (aneurysmal subarachnoid haemorrhage, 113 patients).
# Data: Turck N et al. (2010) "A multiparameter panel method for outcome prediction
# following aneurysmal subarachnoid hemorrhage", Intensive Care Med 36(1):107-115, shipped
# as `data(aSAH)` in the R package pROC (Robin X et al. 2011, BMC Bioinformatics 12:77,
# https://github.com/xrobin/pROC). Records: outcome (P = Poor, the case; G = Good), wfns
# (1-5, ordinal: many ties), s100b, ndka, in the package's row order. The values were
# taken from two independent transcriptions of `data(aSAH)` that agree record for record,
# and reproducing pROC's own expected values below to ~1e-14 confirms them.
# --------------------------------------------------------------------------------------
_ASAH = """
G 1 0.13 3.01 | G 1 0.14 8.54 | G 1 0.1 8.09 | G 1 0.04 10.42 | P 3 0.13 17.4
P 2 0.1 12.75 | G 5 0.47 6 | P 4 0.16 13.2 | G 1 0.18 15.54 | G 2 0.1 6.01
P 5 0.12 15.96 | G 2 0.1 17.86 | P 5 0.44 5.18 | P 5 0.71 8.9 | G 1 0.04 13.41
G 2 0.08 20.75 | P 5 0.49 11.6 | G 2 0.04 16.11 | P 2 0.07 32.37 | P 5 0.33 54.82
P 2 0.09 32.41 | G 1 0.09 49.94 | P 1 0.07 40.34 | G 1 0.11 9.47 | G 1 0.07 6.29
G 2 0.17 12.53 | G 1 0.07 6.54 | G 2 0.11 6.3 | G 1 0.13 80.3 | G 1 0.19 12.8
G 3 0.05 9.8 | G 4 0.16 9.81 | P 2 0.41 9.85 | G 1 0.14 18.21 | G 4 0.34 5.03
P 5 0.35 14.04 | P 4 0.48 21.93 | G 1 0.09 8.02 | P 4 0.96 7.42 | P 2 0.25 8.38
G 5 0.5 6.59 | G 5 0.46 9.63 | G 1 0.16 13.12 | G 1 0.07 7.96 | G 2 0.43 14.34
G 4 0.45 41.43 | G 1 0.11 7.63 | G 1 0.08 7.06 | G 2 0.09 12.59 | P 5 0.86 13.56
P 5 0.52 3.87 | G 2 0.08 9.44 | G 1 0.06 7.66 | G 2 0.13 12.98 | P 5 2.07 419.19
G 1 0.1 27.19 | G 2 0.14 22.27 | G 2 0.15 9.95 | P 2 0.07 21.22 | G 1 0.06 11.73
P 5 0.77 10.4 | G 1 0.05 58.83 | G 1 0.09 6.39 | P 2 0.3 11.09 | P 5 0.03 12.22
P 2 0.09 13.67 | G 1 0.04 17.21 | P 4 0.23 22.63 | P 5 0.7 12.9 | G 2 0.09 9.7
P 4 0.27 21.57 | P 4 0.71 8.23 | P 1 0.08 72.57 | P 4 0.26 15.54 | G 1 0.08 10.51
G 2 0.16 10.6 | G 1 0.09 14.57 | P 4 0.13 5.19 | P 2 0.1 9.63 | G 1 0.08 4.61
P 2 0.11 21.48 | G 3 0.33 17.3 | G 2 0.11 12.71 | G 4 0.28 9.44 | G 2 0.07 11.07
G 1 0.1 19.46 | G 4 0.32 10.83 | P 5 0.22 5.37 | G 1 0.07 11.97 | G 1 0.05 7.75
G 5 0.24 9.83 | G 4 0.38 10.55 | G 2 0.1 28.49 | G 2 0.15 8.53 | G 1 0.08 12.57
G 1 0.14 12.9 | G 1 0.1 46.83 | G 3 0.07 11.68 | G 1 0.04 12.67 | G 2 0.19 9.01
P 5 0.56 9.57 | P 2 0.14 34.06 | P 2 0.58 11.72 | P 5 0.32 14.26 | P 5 0.82 47.61
P 5 0.74 11.67 | G 2 0.15 24.58 | G 4 0.47 10.33 | G 4 0.17 13.87 | P 5 0.44 15.89
G 1 0.15 22.43 | G 1 0.5 6.79 | G 1 0.48 13.45
"""


def _asah() -> dict[str, np.ndarray]:
    records = [record.split() for record in _ASAH.replace("\n", " | ").split("|")]
    records = [record for record in records if record]
    return {
        "outcome": np.array([record[0] == "P" for record in records]).astype(int),
        "wfns": np.array([float(record[1]) for record in records]),
        "s100b": np.array([float(record[2]) for record in records]),
        "ndka": np.array([float(record[3]) for record in records]),
    }


ASAH = _asah()


# --------------------------------------------------------------------------------------
# DeLong: the AUC and its covariance
# --------------------------------------------------------------------------------------


def _tied_scores(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and k correlated score rows, rounded so that many scores tie."""
    labels = rng.integers(0, 2, n)
    shared = rng.normal(0.0, 1.0, n)
    scores = np.vstack(
        [np.round(0.8 * labels + shared + rng.normal(0.0, 0.8, n), 1) for _ in range(k)]
    )
    return labels, scores


def test_auc_equals_sklearn_with_ties():
    labels, scores = _tied_scores(np.random.default_rng(1), 400, 3)
    aucs, _ = delong_covariance(labels, scores)
    for row, auc in zip(scores, aucs, strict=True):
        assert auc == pytest.approx(roc_auc_score(labels, row), abs=1e-12)


def _brute_force_delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong, DeLong & Clarke-Pearson (1988, Biometrics 44:837-845) from the definitions.

    X: the m positives' scores, Y: the n negatives'. psi(X, Y) = 1 if X > Y, 1/2 if X == Y,
    0 otherwise. Structural components V10(X_i) = mean over j of psi(X_i, Y_j) and
    V01(Y_j) = mean over i of psi(X_i, Y_j); AUC = mean V10. S10[r, s] and S01[r, s] are
    the sample covariances (divisor m - 1, n - 1) of the components of models r and s;
    the covariance of the AUC estimates is S = S10 / m + S01 / n.
    """

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    k = scores.shape[0]
    positives = [scores[r][labels == 1] for r in range(k)]
    negatives = [scores[r][labels == 0] for r in range(k)]
    m, n = len(positives[0]), len(negatives[0])
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r in range(k):
        for i in range(m):
            for j in range(n):
                value = psi(positives[r][i], negatives[r][j])
                v10[r, i] += value / n
                v01[r, j] += value / m
    aucs = v10.mean(axis=1)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = sum((v10[r] - aucs[r]) * (v10[s] - aucs[s])) / (m - 1)
            s01[r, s] = sum((v01[r] - aucs[r]) * (v01[s] - aucs[s])) / (n - 1)
    return aucs, s10 / m + s01 / n


@pytest.mark.parametrize(("k", "seed"), [(2, 2), (3, 3), (3, 4)])
def test_covariance_equals_brute_force_delong(k, seed):
    labels, scores = _tied_scores(np.random.default_rng(seed), 90, k)
    aucs, covariance = delong_covariance(labels, scores)
    expected_aucs, expected_covariance = _brute_force_delong(labels, scores)
    np.testing.assert_allclose(aucs, expected_aucs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=1e-9, atol=1e-15)


def test_single_model_variance_by_hand():
    """Positives X = (0.8, 0.6, 0.4), negatives Y = (0.6, 0.3, 0.2); one tie (0.6, 0.6).

    V10 = (1, 5/6, 2/3): X = 0.6 beats 0.3 and 0.2 and ties 0.6, (1 + 1 + 1/2) / 3.
    V01 = (1/2, 1, 1): Y = 0.6 is below 0.8, tied with 0.6, above 0.4, (1 + 1/2 + 0) / 3.
    AUC = mean V10 = 5/6. S10 = var(V10) = (1/36 + 0 + 1/36) / 2 = 1/36;
    S01 = var(V01) = (1/9 + 1/36 + 1/36) / 2 = 1/12. Var = 1/36 / 3 + 1/12 / 3 = 1/27.
    """
    aucs, covariance = delong_covariance([1, 1, 1, 0, 0, 0], [0.8, 0.6, 0.4, 0.6, 0.3, 0.2])
    assert aucs.shape == (1,) and covariance.shape == (1, 1)
    assert aucs[0] == pytest.approx(5 / 6, abs=1e-15)
    assert covariance[0, 0] == pytest.approx(1 / 27, abs=1e-15)


def test_reproduces_proc_on_asah():
    """pROC's expected values on its aSAH data, from pROC's own test suite
    (https://github.com/xrobin/pROC, tests/testthat/): test-auc.R (AUC of wfns and
    ndka), test-var.R and test-cov.R (DeLong variances and covariances), test-roc.test.R
    (paired DeLong roc.test: Z, two-sided p, 95% CI of the difference; one-sided p for
    alternative = "greater"/"less"; identical curves give Z = 0, p = 1). The s100b AUC
    is printed by pROC as "Area under the curve: 0.7314" (72 controls, 41 cases).
    pROC orders each pair as roc.test(first, second) and tests AUC(first) - AUC(second).
    """
    labels = ASAH["outcome"]
    assert (len(labels), int(labels.sum())) == (113, 41)
    aucs, covariance = delong_covariance(
        labels, np.vstack([ASAH["wfns"], ASAH["ndka"], ASAH["s100b"]])
    )
    wfns, ndka, s100b = 0, 1, 2
    assert aucs[wfns] == pytest.approx(0.823678861788618, rel=1e-12)
    assert aucs[ndka] == pytest.approx(0.611957994579946, rel=1e-12)
    assert round(aucs[s100b], 4) == 0.7314
    assert covariance[wfns, wfns] == pytest.approx(0.00146991470882363, rel=1e-12)
    assert covariance[ndka, ndka] == pytest.approx(0.0031908105493913, rel=1e-12)
    assert covariance[s100b, s100b] == pytest.approx(0.00266868245717244, rel=1e-12)
    assert covariance[wfns, ndka] == pytest.approx(-0.000532967856762438, rel=1e-12)
    assert covariance[ndka, s100b] == pytest.approx(-0.000756164938056579, rel=1e-12)
    assert covariance[s100b, wfns] == pytest.approx(0.00119615567376754, rel=1e-12)
    np.testing.assert_array_equal(covariance, covariance.T)

    published = [  # (first, second, Z, two-sided p, CI low, CI high)
        ("wfns", "s100b", 2.20898359144091, 0.0271757822291882,
         0.0104061769564846, 0.174214419249478),
        ("wfns", "ndka", 2.79777591868904, 0.00514557970691098,
         0.0634011709339876, 0.3600405634833566),
        ("ndka", "s100b", -1.39077002573558, 0.164295175223054,
         -0.2876917446341914, 0.0488706064228094),
    ]  # fmt: skip
    for first, second, z, p, low, high in published:
        result = delong_test(labels, ASAH[first], ASAH[second])
        assert result.z == pytest.approx(z, rel=1e-12)
        assert result.p_value == pytest.approx(p, rel=1e-10)
        assert (result.ci_low, result.ci_high) == pytest.approx((low, high), rel=1e-10)
        assert result.confidence == 0.95

    greater = delong_test(labels, ASAH["wfns"], ASAH["s100b"])
    assert greater.p_superiority == pytest.approx(0.0135878911145941, rel=1e-10)
    # pROC's alternative = "less" on (wfns, s100b), H1: AUC(wfns) < AUC(s100b), is the
    # superiority of s100b over wfns.
    less = delong_test(labels, ASAH["s100b"], ASAH["wfns"])
    assert less.p_superiority == pytest.approx(0.986412108885406, rel=1e-10)

    same = delong_test(labels, ASAH["wfns"], ASAH["wfns"])
    assert (same.z, same.p_value) == (0.0, 1.0)


# --------------------------------------------------------------------------------------
# DeLong: the test's behaviour
# --------------------------------------------------------------------------------------


def _binormal(
    rng: np.random.Generator, labels: np.ndarray, shift: tuple[float, float], rho: float
) -> tuple[np.ndarray, np.ndarray]:
    """Two models' scores: latent standard normals correlated by rho, positives shifted."""
    shared = rng.normal(size=labels.shape)
    own = rng.normal(size=(2, *labels.shape))
    latent = math.sqrt(rho) * shared + math.sqrt(1.0 - rho) * own
    return latent[0] + shift[0] * labels, latent[1] + shift[1] * labels


def test_identical_rankings_give_no_difference():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 300)
    scores = labels + rng.normal(size=300)
    for champion in (scores, np.exp(scores) * 3.0 - 1.0):  # same order, other scale
        result = delong_test(labels, scores, champion)
        assert result.difference == 0.0
        assert result.standard_error == 0.0
        assert result.z == 0.0
        assert result.p_value == 1.0
        assert result.p_superiority == 0.5
        assert (result.ci_low, result.ci_high) == (0.0, 0.0)
        assert result.lower_bound(0.05) == 0.0


def test_clearly_better_challenger_is_significant():
    rng = np.random.default_rng(6)
    labels = (rng.random(2000) < 0.3).astype(int)
    challenger, champion = _binormal(rng, labels, shift=(1.5, 0.5), rho=0.5)
    result = delong_test(labels, challenger, champion)
    assert result.difference > 0.15
    assert result.p_superiority < 1e-6
    assert result.p_value < 1e-6
    assert result.ci_low > 0.0
    assert result.lower_bound(0.05) > 0.0


def test_swapping_the_models_flips_the_comparison():
    rng = np.random.default_rng(7)
    labels = (rng.random(500) < 0.2).astype(int)
    a, b = _binormal(rng, labels, shift=(1.0, 0.8), rho=0.6)
    forward, backward = delong_test(labels, a, b), delong_test(labels, b, a)
    assert backward.difference == pytest.approx(-forward.difference, abs=1e-15)
    assert backward.z == pytest.approx(-forward.z, rel=1e-12)
    assert backward.standard_error == pytest.approx(forward.standard_error, rel=1e-12)
    assert backward.p_value == pytest.approx(forward.p_value, rel=1e-12)
    assert forward.p_superiority + backward.p_superiority == pytest.approx(1.0, abs=1e-12)
    assert (backward.ci_low, backward.ci_high) == pytest.approx(
        (-forward.ci_high, -forward.ci_low), abs=1e-12
    )


def test_intervals_and_bounds_agree():
    rng = np.random.default_rng(8)
    labels = (rng.random(400) < 0.4).astype(int)
    a, b = _binormal(rng, labels, shift=(1.0, 0.7), rho=0.5)
    result = delong_test(labels, a, b, confidence=0.90)
    assert result.confidence == 0.90
    assert result.ci_low == pytest.approx(result.lower_bound(0.05), abs=1e-12)
    assert result.ci_low < result.difference < result.ci_high
    assert result.ci_high - result.difference == pytest.approx(
        norm.ppf(0.95) * result.standard_error, rel=1e-12
    )
    wider = delong_test(labels, a, b, confidence=0.99)
    assert wider.ci_low < result.ci_low and wider.ci_high > result.ci_high
    assert result.lower_bound(0.01) < result.lower_bound(0.05) < result.difference


def test_perfect_against_uninformative_has_infinite_z():
    labels = np.array([1, 1, 1, 0, 0, 0])
    perfect = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    flat = np.full(6, 0.5)
    result = delong_test(labels, perfect, flat)
    assert result.difference == 0.5 and result.standard_error == 0.0
    assert result.z == math.inf and result.p_value == 0.0 and result.p_superiority == 0.0
    assert delong_test(labels, flat, perfect).z == -math.inf


def test_false_positive_rate_under_the_null_is_nominal():
    """Equal true AUCs (same shift), scores correlated 0.5: p < 0.05 about 5% of the time."""
    rng = np.random.default_rng(9)
    labels = (np.arange(300) < 100).astype(int)
    rejections = 0
    for _ in range(400):
        a, b = _binormal(rng, labels, shift=(1.0, 1.0), rho=0.5)
        rejections += delong_test(labels, a, b).p_value < 0.05
    assert 0.02 <= rejections / 400 <= 0.09


def test_auc_comparison_round_trips_through_json():
    rng = np.random.default_rng(10)
    labels = (rng.random(200) < 0.3).astype(int)
    a, b = _binormal(rng, labels, shift=(1.2, 0.9), rho=0.5)
    result = delong_test(labels, a, b)
    data = result.to_dict()
    assert all(type(value) is float for value in data.values())
    assert AucComparison.from_dict(json.loads(json.dumps(data))) == result


@pytest.mark.parametrize(
    ("labels", "challenger", "champion", "message"),
    [
        ([1, 0, 1, 0], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], "challenger has 3 scores"),
        ([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2], "champion has 2 scores"),
        ([1, 0, 2, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "only 0/1"),
        (["a", "b", "a", "b"], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "0/1"),
        ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "both classes"),
        ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "both classes"),
        ([1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "at least two"),
        ([[1, 0], [1, 0]], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "1-D"),
        ([1, 0, 1, 0], [[0.1, 0.2, 0.3, 0.4]], [0.1, 0.2, 0.3, 0.4], "1-D"),
        ([1, 0, 1, 0], [0.1, math.nan, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4], "NaN"),
    ],
)
def test_delong_refuses_bad_input(labels, challenger, champion, message):
    with pytest.raises(ValueError, match=message):
        delong_test(labels, challenger, champion)


def test_delong_covariance_refuses_bad_input():
    with pytest.raises(ValueError, match="scores have 3 cases"):
        delong_covariance([1, 0, 1, 0], [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="both classes"):
        delong_covariance([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="confidence"):
        delong_test([1, 0, 1, 0], [1, 2, 3, 4], [1, 2, 3, 4], confidence=1.0)


# --------------------------------------------------------------------------------------
# Paired bootstrap of F1
# --------------------------------------------------------------------------------------


def _calls(
    rng: np.random.Generator, labels: np.ndarray, sensitivity: float, specificity: float
) -> np.ndarray:
    called = rng.random(labels.shape)
    return np.where(labels == 1, called < sensitivity, called >= specificity)


def _naive_bootstrap(
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    unit_of_image: np.ndarray,
    drawn: np.ndarray,
) -> np.ndarray:
    """F1 differences from a Python loop: for each row of drawn unit indices, gather the
    images of every drawn unit (a lesion drawn twice brings all its images twice) and
    count TP, FP and FN over them."""
    images_of = [np.flatnonzero(unit_of_image == unit) for unit in range(drawn.shape[1])]

    def f1(truth: np.ndarray, calls: np.ndarray) -> float:
        tp = float(np.sum(truth & calls))
        fp = float(np.sum(~truth & calls))
        fn = float(np.sum(truth & ~calls))
        return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    differences = []
    for row in drawn:
        images = np.concatenate([images_of[unit] for unit in row])
        truth = labels[images] == 1
        differences.append(f1(truth, challenger[images]) - f1(truth, champion[images]))
    return np.array(differences)


def _expected(differences: np.ndarray, confidence: float, alpha: float) -> dict[str, float]:
    tail = (1 - confidence) / 2
    return {
        "ci_low": float(np.quantile(differences, tail)),
        "ci_high": float(np.quantile(differences, 1 - tail)),
        "lower_bound": float(np.quantile(differences, alpha)),
        "p_not_better": float(np.mean(differences <= 0)),
    }


def _lesion_data(
    rng: np.random.Generator, lesions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1 to 5 images per lesion; a lesion's images share its label, calls mostly agree."""
    per_lesion = rng.integers(1, 6, lesions)
    ids = np.repeat([f"HAM_{i:07d}" for i in rng.permutation(lesions)], per_lesion)
    lesion_labels = (rng.random(lesions) < 0.35).astype(int)
    labels = np.repeat(lesion_labels, per_lesion)
    challenger = _calls(rng, labels, 0.8, 0.85)
    champion = _calls(rng, labels, 0.7, 0.8)
    return labels, challenger, champion, ids


def test_f1_values_equal_sklearn():
    rng = np.random.default_rng(11)
    labels = (rng.random(500) < 0.2).astype(int)
    challenger, champion = _calls(rng, labels, 0.8, 0.9), _calls(rng, labels, 0.6, 0.85)
    result = paired_bootstrap_f1(labels, challenger, champion, iterations=50)
    assert result.challenger_f1 == pytest.approx(f1_score(labels, challenger), abs=1e-12)
    assert result.champion_f1 == pytest.approx(f1_score(labels, champion), abs=1e-12)
    assert result.difference == pytest.approx(result.challenger_f1 - result.champion_f1)
    assert result.resampled == "image" and result.iterations == 50


def test_identical_calls_make_no_difference():
    rng = np.random.default_rng(12)
    labels = (rng.random(300) < 0.3).astype(int)
    calls = _calls(rng, labels, 0.7, 0.8)
    result = paired_bootstrap_f1(labels, calls, calls.copy(), iterations=300)
    assert result.difference == 0.0
    assert (result.ci_low, result.ci_high, result.lower_bound) == (0.0, 0.0, 0.0)
    assert result.p_not_better == 1.0


def test_image_bootstrap_equals_a_naive_loop_over_the_same_draws():
    """Each bootstrap sample draws `units` unit indices uniformly with replacement,
    `np.random.default_rng(seed).integers(0, units, size=(iterations, units))`."""
    rng = np.random.default_rng(13)
    labels = (rng.random(120) < 0.3).astype(int)
    challenger, champion = _calls(rng, labels, 0.8, 0.8), _calls(rng, labels, 0.7, 0.8)
    result = paired_bootstrap_f1(
        labels, challenger, champion, iterations=300, confidence=0.9, alpha=0.1, seed=42
    )
    drawn = np.random.default_rng(42).integers(0, 120, size=(300, 120))
    naive = _naive_bootstrap(labels, challenger, champion, np.arange(120), drawn)
    expected = _expected(naive, confidence=0.9, alpha=0.1)
    assert {key: getattr(result, key) for key in expected} == pytest.approx(expected, abs=1e-12)
    assert (result.confidence, result.alpha, result.resampled) == (0.9, 0.1, "image")


def test_lesion_bootstrap_equals_a_naive_loop_over_the_same_draws():
    """Units are the distinct lesion ids in sorted order; a drawn lesion brings all of its
    images (twice if drawn twice)."""
    rng = np.random.default_rng(14)
    labels, challenger, champion, ids = _lesion_data(rng, 40)
    result = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, iterations=300, seed=3)
    lesion_ids, unit_of_image = np.unique(ids, return_inverse=True)
    drawn = np.random.default_rng(3).integers(0, len(lesion_ids), size=(300, len(lesion_ids)))
    naive = _naive_bootstrap(labels, challenger, champion, unit_of_image, drawn)
    expected = _expected(naive, confidence=0.95, alpha=0.05)
    assert {key: getattr(result, key) for key in expected} == pytest.approx(expected, abs=1e-12)
    assert result.resampled == "lesion"
    assert result.challenger_f1 == pytest.approx(f1_score(labels, challenger), abs=1e-12)


def test_chunked_draws_equal_the_naive_loop(monkeypatch):
    """Large problems are drawn in chunks of rows; the chunks must join up exactly."""
    monkeypatch.setattr(stats_module, "_MAX_ENTRIES_PER_CHUNK", 7 * 60)  # 7 rows a chunk
    rng = np.random.default_rng(15)
    labels = (rng.random(60) < 0.4).astype(int)
    challenger, champion = _calls(rng, labels, 0.8, 0.8), _calls(rng, labels, 0.6, 0.8)
    result = paired_bootstrap_f1(labels, challenger, champion, iterations=53, seed=8)
    draws = np.random.default_rng(8)
    drawn = np.vstack(
        [draws.integers(0, 60, size=(min(7, 53 - start), 60)) for start in range(0, 53, 7)]
    )
    naive = _naive_bootstrap(labels, challenger, champion, np.arange(60), drawn)
    expected = _expected(naive, confidence=0.95, alpha=0.05)
    assert {key: getattr(result, key) for key in expected} == pytest.approx(expected, abs=1e-12)


def test_one_image_per_lesion_resamples_like_images():
    rng = np.random.default_rng(16)
    labels = (rng.random(80) < 0.3).astype(int)
    challenger, champion = _calls(rng, labels, 0.8, 0.8), _calls(rng, labels, 0.7, 0.8)
    ids = np.array([f"L{i:03d}" for i in range(80)])  # sorted order = image order
    by_lesion = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, iterations=200)
    by_image = paired_bootstrap_f1(labels, challenger, champion, iterations=200)
    assert by_lesion.to_dict() | {"resampled": "image"} == by_image.to_dict()


def test_lesion_resampling_widens_the_interval_for_correlated_images():
    """Eight images per lesion sharing label and calls: only 60 independent units, so the
    lesion bootstrap interval is about sqrt(8) times the (overconfident) image one."""
    rng = np.random.default_rng(17)
    lesion_labels = (rng.random(60) < 0.4).astype(int)
    lesion_challenger = _calls(rng, lesion_labels, 0.8, 0.8)
    lesion_champion = _calls(rng, lesion_labels, 0.65, 0.75)
    labels, challenger, champion = (
        np.repeat(values, 8) for values in (lesion_labels, lesion_challenger, lesion_champion)
    )
    ids = np.repeat([f"lesion-{i}" for i in range(60)], 8)
    by_lesion = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, iterations=1000)
    by_image = paired_bootstrap_f1(labels, challenger, champion, iterations=1000)
    assert by_lesion.difference == by_image.difference
    lesion_width = by_lesion.ci_high - by_lesion.ci_low
    image_width = by_image.ci_high - by_image.ci_low
    assert lesion_width > 2.0 * image_width


def test_same_seed_same_result_and_seed_matters():
    rng = np.random.default_rng(18)
    labels, challenger, champion, ids = _lesion_data(rng, 50)
    first = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, seed=5, iterations=500)
    again = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, seed=5, iterations=500)
    other = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, seed=6, iterations=500)
    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_truly_better_challenger_is_usually_detected():
    """Challenger F1 about 0.79 against 0.63: the interval excludes 0 nearly always."""
    rng = np.random.default_rng(19)
    detected = 0
    for replicate in range(20):
        labels = (rng.random(600) < 0.3).astype(int)
        challenger = _calls(rng, labels, 0.85, 0.9)
        champion = _calls(rng, labels, 0.7, 0.8)
        result = paired_bootstrap_f1(labels, challenger, champion, iterations=400, seed=replicate)
        detected += result.ci_low > 0.0
        assert result.ci_low <= result.lower_bound <= result.difference <= result.ci_high
    assert detected >= 16


def test_large_problem_runs_in_chunks():
    rng = np.random.default_rng(20)
    labels, challenger, champion, ids = _lesion_data(rng, 3000)
    result = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, iterations=2000)
    assert result.iterations == 2000
    assert result.ci_low < result.difference < result.ci_high


def test_f1_comparison_round_trips_through_json():
    rng = np.random.default_rng(21)
    labels, challenger, champion, ids = _lesion_data(rng, 30)
    result = paired_bootstrap_f1(labels, challenger, champion, lesions=ids, iterations=100)
    data = result.to_dict()
    assert type(data["iterations"]) is int and data["resampled"] == "lesion"
    assert type(data["ci_low"]) is float
    assert F1Comparison.from_dict(json.loads(json.dumps(data))) == result


def test_f1_is_zero_when_nothing_is_called_or_present():
    labels = np.zeros(10, dtype=int)
    calls = np.zeros(10, dtype=bool)
    result = paired_bootstrap_f1(labels, calls, calls, iterations=20)
    assert (result.challenger_f1, result.champion_f1, result.difference) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("arguments", "options", "message"),
    [
        (([1, 0, 1], [True, False], [True, False, True]), {}, "equal lengths"),
        (([1, 0, 2], [True, False, True], [True, False, True]), {}, "only 0/1"),
        (([1, 0, 1], [True, False, 2], [True, False, True]), {}, "challenger_calls"),
        (([1, 0, 1], [True, False, True], [True, False, True]), {"lesions": ["a"]}, "lesions"),
        (([1, 0, 1], [True, False, True], [True, False, True]), {"iterations": 0}, "iterations"),
        (([1, 0, 1], [True, False, True], [True, False, True]), {"alpha": 0.0}, "alpha"),
        (([1, 0, 1], [True, False, True], [True, False, True]), {"confidence": 2}, "confidence"),
        (([], [], []), {}, "no cases"),
    ],
)
def test_bootstrap_refuses_bad_input(arguments, options, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap_f1(*arguments, **options)


# --------------------------------------------------------------------------------------
# DeLong with lesions as clusters (Obuchowski 1997)
# --------------------------------------------------------------------------------------


def _brute_force_clustered_variance(
    labels: np.ndarray, a: np.ndarray, b: np.ndarray, lesions: np.ndarray
) -> float:
    """Obuchowski's variance of AUC_a - AUC_b, term by term, from the kernel psi."""
    truth = labels.astype(bool)
    pos, neg = np.flatnonzero(truth), np.flatnonzero(~truth)

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = {i: np.mean([psi(a[i], a[j]) - psi(b[i], b[j]) for j in neg]) for i in pos}
    v01 = {j: np.mean([psi(a[i], a[j]) - psi(b[i], b[j]) for i in pos]) for j in neg}
    theta = float(np.mean(list(v10.values())))
    m, n = len(pos), len(neg)
    clusters = sorted(set(lesions))
    x = {k: sum(v10[i] for i in pos if lesions[i] == k) for k in clusters}
    y = {k: sum(v01[j] for j in neg if lesions[j] == k) for k in clusters}
    m_k = {k: sum(1 for i in pos if lesions[i] == k) for k in clusters}
    n_k = {k: sum(1 for j in neg if lesions[j] == k) for k in clusters}
    i10 = sum(1 for k in clusters if m_k[k] > 0)
    i01 = sum(1 for k in clusters if n_k[k] > 0)
    s10 = i10 / ((i10 - 1) * m) * sum((x[k] - m_k[k] * theta) ** 2 for k in clusters if m_k[k])
    s01 = i01 / ((i01 - 1) * n) * sum((y[k] - n_k[k] * theta) ** 2 for k in clusters if n_k[k])
    i = len(clusters)
    s11 = i / (i - 1) * sum((x[k] - m_k[k] * theta) * (y[k] - n_k[k] * theta) for k in clusters)
    return s10 / m + s01 / n + 2 * s11 / (m * n)


def test_clustered_variance_equals_obuchowski_term_by_term():
    """Clusters of mixed class too (a patient with several lesions), ties included."""
    rng = np.random.default_rng(21)
    labels = (rng.random(60) < 0.4).astype(int)
    a, b = np.round(rng.normal(size=(2, 60)) + labels, 1)
    lesions = rng.integers(0, 18, 60).astype(str)
    result = delong_test(labels, a, b, lesions=lesions)
    expected = _brute_force_clustered_variance(labels, a, b, lesions)
    assert result.standard_error == pytest.approx(math.sqrt(expected), rel=1e-10)


def test_one_image_per_lesion_gives_delongs_variance():
    rng = np.random.default_rng(22)
    labels = (np.arange(80) < 30).astype(int)
    a, b = _binormal(rng, labels, shift=(1.2, 1.0), rho=0.6)
    plain = delong_test(labels, a, b)
    clustered = delong_test(labels, a, b, lesions=[f"L{i}" for i in range(80)])
    assert clustered.standard_error == pytest.approx(plain.standard_error, rel=1e-12)
    assert clustered.difference == plain.difference


def _lesion_scores(
    rng: np.random.Generator, lesions: int, within: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1 to 4 images per lesion, equal true AUCs; an image's error shares `within` of its
    variance with the other images of its lesion (same model)."""
    sizes = rng.integers(1, 5, lesions)
    ids = np.repeat(np.arange(lesions), sizes)
    labels = np.repeat((rng.random(lesions) < 0.3).astype(int), sizes)
    shared = rng.normal(size=(2, lesions))[:, ids]
    own = rng.normal(size=(2, len(ids)))
    errors = math.sqrt(within) * shared + math.sqrt(1 - within) * own
    return labels, errors[0] + labels, errors[1] + labels, ids


def test_clustering_keeps_the_false_positive_rate_nominal_with_correlated_images():
    """Images of a lesion share most of their error: DeLong by image rejects a true null
    too often; by lesion it stays near 5%."""
    rng = np.random.default_rng(23)
    by_image = by_lesion = 0
    for _ in range(300):
        labels, a, b, ids = _lesion_scores(rng, 120, within=0.8)
        by_image += delong_test(labels, a, b).p_value < 0.05
        by_lesion += delong_test(labels, a, b, lesions=ids).p_value < 0.05
    assert 0.02 <= by_lesion / 300 <= 0.09
    assert by_image > by_lesion


def test_clustered_delong_needs_two_lesions_of_each_class():
    labels = np.array([1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="at least 2 lesions"):
        delong_test(labels, [0.9, 0.8, 0.1, 0.2, 0.3], [0.7, 0.6, 0.2, 0.1, 0.4],
                    lesions=["a", "a", "b", "c", "d"])  # fmt: skip
