"""The partial ROC AUC above 80% sensitivity (ISIC 2024's primary metric): by hand, against
the challenge's own formula, its paired lesion bootstrap, and where it shows up (metrics,
report JSON, MLflow headline, the reviewer's pages)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipelines.evaluation.evaluate import EvaluationSettings, ScoredModel, evaluate_on_test_set
from pipelines.evaluation.metrics import BinaryMetrics, binary_metrics, partial_roc_auc
from pipelines.evaluation.rendering import summary_html, summary_markdown
from pipelines.evaluation.report import ChampionComparison, EvaluationReport
from pipelines.evaluation.stats import (
    PartialAucComparison,
    _draw_multiplicities,
    _resampling_units,
    paired_bootstrap_partial_auc,
)

FAST = EvaluationSettings(bootstrap_iterations=300, min_subgroup_images=20, seed=5)


def isic_2024_pauc(labels: np.ndarray, scores: np.ndarray, min_tpr: float = 0.80) -> float:
    """The ISIC 2024 challenge's scoring code: scikit-learn's standardised partial AUC of the
    flipped problem (benign as positive), mapped back to 0..0.2."""
    v_gt = 1 - labels
    v_pred = -scores
    max_fpr = abs(1 - min_tpr)
    s = roc_auc_score(v_gt, v_pred, max_fpr=max_fpr)
    return float(0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (s - 0.5))


# --------------------------------------------------------------------------------------
# the metric by hand
# --------------------------------------------------------------------------------------


def test_a_perfect_ranking_gives_the_whole_band():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    assert partial_roc_auc(labels, [0.9, 0.8, 0.7, 0.3, 0.2, 0.2, 0.1]) == pytest.approx(0.2)


def test_a_ranking_that_says_nothing_gives_the_diagonals_share():
    """The diagonal TPR = FPR is above 0.8 on a triangle of area 0.2 * 0.2 / 2 = 0.02: tied
    scores exactly, random scores about."""
    labels = np.array([1, 0] * 4)
    assert partial_roc_auc(labels, np.full(8, 0.5)) == pytest.approx(0.02)
    rng = np.random.default_rng(0)
    many = (rng.random(40_000) < 0.2).astype(int)
    assert partial_roc_auc(many, rng.random(40_000)) == pytest.approx(0.02, abs=0.003)


def test_an_inverted_ranking_gives_nothing():
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert partial_roc_auc(labels, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]) == 0.0


def test_four_melanoma_and_four_others_by_hand():
    """Descending: M O M M O M O O. ROC points (FPR, TPR): (0, 0) (0, .25) (.25, .25)
    (.25, .5) (.25, .75) (.5, .75) (.5, 1) (.75, 1) (1, 1). TPR is above 0.8 only from
    FPR 0.5 on, at 1: area (1 - 0.5) * (1 - 0.8) = 0.1."""
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    assert partial_roc_auc(labels, scores) == pytest.approx(0.1)


def test_four_and_four_with_a_tie_crossing_the_line_by_hand():
    """As above, but the fourth melanoma ties with the second other at 0.5: one diagonal
    segment from (.25, .75) to (.5, 1). It crosses TPR 0.8 at FPR .25 + .05 / 1 = .30, so
    it adds the triangle (.5 - .30) * (1 - .8) / 2 = 0.02 to the 0.1 beyond FPR 0.5."""
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.3, 0.2])
    assert partial_roc_auc(labels, scores) == pytest.approx(0.12)
    assert isic_2024_pauc(labels, scores) == pytest.approx(0.12)


@pytest.mark.parametrize("seed", range(12))
def test_equals_the_isic_2024_formula_on_random_data(seed):
    rng = np.random.default_rng(seed)
    images = int(rng.integers(30, 3000))
    labels = (rng.random(images) < rng.uniform(0.05, 0.5)).astype(int)
    labels[:2] = [0, 1]
    scores = rng.normal(size=images) + rng.uniform(0, 3) * labels
    if seed % 3 == 0:  # coarse scores: many ties, across the classes too
        scores = np.round(scores, 1)
    assert partial_roc_auc(labels, scores) == pytest.approx(
        isic_2024_pauc(labels, scores), abs=1e-9
    )


def test_depends_only_on_the_ranking():
    rng = np.random.default_rng(4)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = rng.random(300) + 0.4 * labels
    assert partial_roc_auc(labels, scores) == pytest.approx(partial_roc_auc(labels, scores**3))


def test_in_the_binary_metrics_and_none_with_one_class():
    labels = np.array([1, 0, 1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    metrics = binary_metrics(labels, scores, 0.5)
    assert metrics.partial_roc_auc == pytest.approx(0.1)
    assert binary_metrics([0, 0, 0], [0.1, 0.2, 0.9], 0.5).partial_roc_auc is None
    with pytest.raises(ValueError, match="both melanoma and non-melanoma"):
        partial_roc_auc([1, 1], [0.2, 0.3])


def test_metrics_written_before_the_partial_auc_still_read():
    metrics = binary_metrics([1, 0, 1, 0], [0.9, 0.1, 0.6, 0.7], 0.5)
    old = metrics.to_dict()
    del old["partial_roc_auc"]
    assert BinaryMetrics.from_dict(old).partial_roc_auc is None
    assert BinaryMetrics.from_dict(metrics.to_dict()) == metrics


# --------------------------------------------------------------------------------------
# the paired bootstrap
# --------------------------------------------------------------------------------------


def lesion_data(images: int = 400, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Labels, lesion ids (one to three images a lesion) and two correlated models' scores,
    rounded so that scores tie within and across classes."""
    rng = np.random.default_rng(seed)
    lesion = np.sort(rng.integers(0, int(images * 0.7), images))
    labels = (rng.random(int(images * 0.7)) < 0.25)[lesion].astype(int)
    shared = rng.normal(size=images)
    challenger = np.round(1.4 * labels + shared + 0.6 * rng.normal(size=images), 1)
    champion = np.round(1.0 * labels + shared + 0.6 * rng.normal(size=images), 1)
    return labels, lesion, challenger, champion


def test_bootstrap_equals_resampling_lesions_by_copying_them():
    """The weighted curves of the vectorised bootstrap against the slow way: copy each drawn
    lesion's images as often as it was drawn and score the copies."""
    labels, lesion, challenger, champion = lesion_data()
    iterations, seed = 40, 9
    result = paired_bootstrap_partial_auc(
        labels, challenger, champion, lesions=lesion, iterations=iterations, seed=seed, alpha=0.1
    )
    units, _ = _resampling_units(lesion, len(labels))
    drawn = _draw_multiplicities(np.random.default_rng(seed), int(units.max()) + 1, iterations)
    differences = []
    for row in drawn:
        copies = row[units].astype(int)
        y = np.repeat(labels, copies)
        differences.append(
            partial_roc_auc(y, np.repeat(challenger, copies))
            - partial_roc_auc(y, np.repeat(champion, copies))
        )
    assert result.iterations == iterations
    assert result.resampled == "lesion"
    assert result.lower_bound == pytest.approx(np.quantile(differences, 0.1), abs=1e-12)
    assert (result.ci_low, result.ci_high) == pytest.approx(
        tuple(np.quantile(differences, [0.025, 0.975])), abs=1e-12
    )
    assert result.p_not_better == pytest.approx(np.mean(np.array(differences) <= 0))
    assert result.challenger_partial_auc == pytest.approx(partial_roc_auc(labels, challenger))
    assert result.difference == pytest.approx(
        partial_roc_auc(labels, challenger) - partial_roc_auc(labels, champion)
    )


def test_identical_rankings_differ_by_exactly_nothing():
    labels, lesion, challenger, _ = lesion_data(seed=1)
    result = paired_bootstrap_partial_auc(
        labels, challenger, np.exp(challenger), lesions=lesion, iterations=200
    )
    assert (result.difference, result.ci_low, result.ci_high, result.lower_bound) == (0, 0, 0, 0)
    assert result.p_not_better == 1.0


def test_a_better_ranking_shows_in_the_interval():
    labels, lesion, challenger, champion = lesion_data(images=2000, seed=2)
    result = paired_bootstrap_partial_auc(labels, challenger, champion, lesions=lesion)
    assert result.difference > 0
    assert result.ci_low <= result.lower_bound <= result.difference <= result.ci_high
    by_image = paired_bootstrap_partial_auc(labels, challenger, champion)
    assert by_image.resampled == "image"
    assert PartialAucComparison.from_dict(result.to_dict()) == result


def test_bootstrap_refuses_a_single_class():
    with pytest.raises(ValueError, match="both classes"):
        paired_bootstrap_partial_auc([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])


# --------------------------------------------------------------------------------------
# in the evaluation and its pages
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report() -> EvaluationReport:
    labels, lesion, challenger, champion = lesion_data(images=300, seed=3)
    cases = pd.DataFrame(
        {
            "image_id": [f"I{i:04d}" for i in range(len(labels))],
            "lesion_id": [f"L{n:04d}" for n in lesion],
            "label": labels,
            "sex": "female",
            "age": 50.0,
            "localization": "back",
        }
    )

    def model(scores: np.ndarray, version: str | None) -> ScoredModel:
        return ScoredModel(f"models:/m/{version}", version, 0.5, 1 / (1 + np.exp(-scores)))

    return evaluate_on_test_set("snap", cases, model(challenger, None), model(champion, "1"), FAST)


def test_every_evaluation_compares_the_partial_auc(report):
    versus = report.versus
    assert versus is not None and versus.partial_auc is not None
    partial = versus.partial_auc
    assert partial.challenger_partial_auc == report.challenger.metrics.partial_roc_auc
    assert partial.champion_partial_auc == versus.champion.metrics.partial_roc_auc
    assert partial.alpha == FAST.alpha and partial.resampled == "lesion"
    assert 0 <= partial.challenger_partial_auc <= 0.2


def test_headline_carries_the_partial_auc_for_mlflow(report):
    headline = report.headline()
    assert headline["test_partial_roc_auc"] == report.challenger.metrics.partial_roc_auc
    assert report.versus is not None and report.versus.partial_auc is not None
    assert headline["delta_partial_roc_auc"] == report.versus.partial_auc.difference
    for key in ("champion_test_partial_roc_auc", "delta_partial_roc_auc_lower_bound"):
        assert isinstance(headline[key], float)


def test_reports_written_before_the_partial_auc_still_read(report):
    data = json.loads(report.to_json())
    assert EvaluationReport.from_dict(data) == report
    del data["versus"]["partial_auc"]
    for evaluation in (data["challenger"], data["versus"]["champion"]):
        del evaluation["metrics"]["partial_roc_auc"]
    old = EvaluationReport.from_dict(data)
    assert old.versus is not None and old.versus.partial_auc is None
    assert "test_partial_roc_auc" not in old.headline()
    assert "delta_partial_roc_auc" not in old.headline()
    assert ChampionComparison.from_dict(data["versus"]).partial_auc is None


def test_pages_show_the_partial_auc_and_its_difference(report):
    versus = report.versus
    assert versus is not None and versus.partial_auc is not None
    difference = f"{versus.partial_auc.difference:+.4f}"
    markdown = summary_markdown(report)
    assert "| Partial ROC AUC above 80% sensitivity (0 to 0.2) |" in markdown
    assert f"Partial ROC AUC above 80% sensitivity difference {difference}" in markdown
    html = summary_html(report)
    assert "Partial ROC AUC above 80% sensitivity (0 to 0.2)" in html
    assert f"difference {difference} (paired bootstrap over lesions" in html
