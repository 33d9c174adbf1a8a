"""Evaluation on the locked test set: metrics at an operating threshold, the threshold for a
target sensitivity, the subgroup table, the report and its pages, champion comparison and
the artifacts a reviewer sees."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pipelines.evaluation.artifacts import write_evaluation_artifacts
from pipelines.evaluation.evaluate import (
    EvaluationSettings,
    ScoredModel,
    evaluate_on_test_set,
)
from pipelines.evaluation.metrics import (
    BinaryMetrics,
    ConfusionMatrix,
    binary_metrics,
    threshold_for_sensitivity,
)
from pipelines.evaluation.rendering import summary_html, summary_markdown
from pipelines.evaluation.report import EvaluationReport
from pipelines.evaluation.stats import delong_test, paired_bootstrap_f1
from pipelines.evaluation.subgroups import AgeBands, SubgroupRow, subgroup_table

SEXES = np.array(["female", "male", None], dtype=object)
SITES = np.array(["back", "face", "lower extremity", "trunk", "ear"], dtype=object)
FAST = EvaluationSettings(bootstrap_iterations=200, min_subgroup_images=20, seed=3)


def make_cases(images: int = 240, seed: int = 0) -> pd.DataFrame:
    """Test-split manifest rows: lesions with one to three images, some missing facts, a
    rare body site (ear)."""
    rng = np.random.default_rng(seed)
    lesion_numbers = np.sort(rng.integers(0, int(images * 0.7), size=images))
    lesion_label = rng.random(int(images * 0.7)) < 0.3
    ages = rng.choice([np.nan, 15.0, 35.0, 50.0, 65.0, 80.0], size=images)
    return pd.DataFrame(
        {
            "image_id": [f"ISIC_{i:05d}" for i in range(images)],
            "lesion_id": [f"HAM_{n:05d}" for n in lesion_numbers],
            "label": lesion_label[lesion_numbers].astype(np.int64),
            "sex": rng.choice(SEXES, size=images, p=[0.5, 0.45, 0.05]),
            "age": ages,
            "localization": rng.choice(SITES, size=images, p=[0.35, 0.2, 0.25, 0.17, 0.03]),
            "split": "test",
        }
    )


def scores_for(labels: np.ndarray, skill: float, seed: int) -> np.ndarray:
    """Probabilities that separate the classes by `skill` (0: chance)."""
    rng = np.random.default_rng(seed)
    logits = skill * (2 * labels - 1) + rng.normal(size=len(labels))
    return 1.0 / (1.0 + np.exp(-logits))


def scored(cases: pd.DataFrame, skill: float, seed: int, version: str | None) -> ScoredModel:
    return ScoredModel(
        model_uri=f"models:/melanoma-resnet50/{version or 'run'}",
        version=version,
        threshold=0.5,
        probabilities=scores_for(cases["label"].to_numpy(), skill, seed),
    )


@pytest.fixture(scope="module")
def cases() -> pd.DataFrame:
    return make_cases()


@pytest.fixture(scope="module")
def challenger(cases: pd.DataFrame) -> ScoredModel:
    return scored(cases, skill=1.5, seed=11, version=None)


@pytest.fixture(scope="module")
def champion(cases: pd.DataFrame) -> ScoredModel:
    return replace(scored(cases, skill=1.0, seed=12, version="3"), threshold=0.4)


@pytest.fixture(scope="module")
def report(cases, challenger, champion) -> EvaluationReport:
    return evaluate_on_test_set("snap-2026-11-02", cases, challenger, champion, FAST)


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_metrics_equal_sklearn_on_random_data(seed, threshold):
    rng = np.random.default_rng(seed)
    labels = (rng.random(150) < 0.25).astype(int)
    probabilities = scores_for(labels, 1.0, seed)
    calls = (probabilities >= threshold).astype(int)

    metrics = binary_metrics(labels, probabilities, threshold)

    tn, fp, fn, tp = confusion_matrix(labels, calls, labels=[0, 1]).ravel()
    assert metrics.confusion == ConfusionMatrix(tn, fp, fn, tp)
    assert metrics.accuracy == pytest.approx(accuracy_score(labels, calls))
    assert metrics.precision == pytest.approx(precision_score(labels, calls, zero_division=0))
    assert metrics.sensitivity == pytest.approx(recall_score(labels, calls))
    assert metrics.specificity == pytest.approx(recall_score(1 - labels, 1 - calls))
    assert metrics.f1 == pytest.approx(f1_score(labels, calls, zero_division=0))
    assert metrics.roc_auc == pytest.approx(roc_auc_score(labels, probabilities))
    assert metrics.brier == pytest.approx(brier_score_loss(labels, probabilities))
    assert (metrics.images, metrics.melanoma) == (150, labels.sum())


def test_six_cases_counted_by_hand():
    labels = [1, 1, 1, 0, 0, 0]
    probabilities = [0.9, 0.5, 0.2, 0.7, 0.1, 0.3]  # 0.5 sits on the threshold: melanoma

    metrics = binary_metrics(labels, probabilities, 0.5)

    # caught 0.9 and 0.5, missed 0.2; false alarm 0.7; cleared 0.1 and 0.3
    assert metrics.confusion == ConfusionMatrix(
        true_negatives=2, false_positives=1, false_negatives=1, true_positives=2
    )
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.precision == pytest.approx(2 / 3)
    assert metrics.sensitivity == pytest.approx(2 / 3)
    assert metrics.specificity == pytest.approx(2 / 3)
    assert metrics.f1 == pytest.approx(2 / 3)
    # melanoma outranks benign in 3 + 2 + 1 of the 9 pairs
    assert metrics.roc_auc == pytest.approx(6 / 9)
    assert metrics.brier == pytest.approx((0.01 + 0.25 + 0.64 + 0.49 + 0.01 + 0.09) / 6)


def test_undefined_ratios_are_zero_and_auc_is_none_with_one_class():
    metrics = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)

    assert (metrics.precision, metrics.sensitivity, metrics.f1) == (0.0, 0.0, 0.0)
    assert metrics.specificity == 1.0
    assert metrics.roc_auc is None
    assert BinaryMetrics.from_dict(metrics.to_dict()) == metrics


def test_metrics_refuse_labels_other_than_zero_and_one():
    with pytest.raises(ValueError, match="0 \\(not melanoma\\) or 1"):
        binary_metrics([0, 2], [0.1, 0.9], 0.5)


@pytest.mark.parametrize("target", [0.5, 0.7, 0.85, 0.9, 0.95, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_threshold_for_sensitivity_is_the_highest_reaching_the_target(target, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(200) < 0.3).astype(int)
    probabilities = np.round(scores_for(labels, 1.0, seed), 2)  # rounding makes ties

    threshold = threshold_for_sensitivity(labels, probabilities, target)

    assert binary_metrics(labels, probabilities, threshold).sensitivity >= target
    higher = np.nextafter(threshold, np.inf)
    assert binary_metrics(labels, probabilities, higher).sensitivity < target


def test_threshold_for_sensitivity_by_hand():
    labels = [1, 1, 1, 1, 0, 0]
    probabilities = [0.9, 0.8, 0.6, 0.3, 0.7, 0.1]

    assert threshold_for_sensitivity(labels, probabilities, 0.75) == 0.6  # 3 of 4
    assert threshold_for_sensitivity(labels, probabilities, 0.7) == 0.6
    assert threshold_for_sensitivity(labels, probabilities, 0.5) == 0.8  # 2 of 4
    assert threshold_for_sensitivity(labels, probabilities, 1.0) == 0.3


def test_threshold_for_sensitivity_needs_melanoma():
    with pytest.raises(ValueError, match="no melanoma"):
        threshold_for_sensitivity([0, 0], [0.2, 0.4], 0.9)


# --------------------------------------------------------------------------------------
# subgroups
# --------------------------------------------------------------------------------------


def test_age_bands_label_and_place_ages():
    bands = AgeBands()

    assert bands.labels == ("0-29", "30-44", "45-59", "60-74", "75+")
    ages = pd.Series([0, 29.9, 30, 44.5, 45, 74, 75, 85, 120, 121, -1, np.nan])
    assert list(bands.band_of(ages)) == [
        "0-29", "0-29", "30-44", "30-44", "45-59", "60-74", "75+", "75+", "75+",
        "unknown", "unknown", "unknown",
    ]  # fmt: skip


def test_subgroup_counts_equal_groupby_counts(cases, challenger):
    rows = subgroup_table(
        cases, challenger.probabilities, 0.5, age_bands=AgeBands(), min_images=20, min_melanoma=5
    )

    frame = cases.assign(
        sex=cases["sex"].fillna("unknown"),
        age_band=AgeBands().band_of(cases["age"]),
    )
    for attribute in ("sex", "age_band", "localization"):
        expected = frame.groupby(attribute)["label"].agg(["size", "sum"])
        found = {r.group: (r.images, r.melanoma) for r in rows if r.attribute == attribute}
        assert found == {g: (int(n), int(m)) for g, (n, m) in expected.iterrows()}


def test_subgroup_rows_are_the_group_metrics_and_sorted(cases, challenger):
    probabilities = challenger.probabilities
    rows = subgroup_table(
        cases, probabilities, 0.5, age_bands=AgeBands(), min_images=20, min_melanoma=5
    )

    assert [r.attribute for r in rows] == sorted(r.attribute for r in rows)
    ages = [r.group for r in rows if r.attribute == "age_band"]
    assert ages == ["0-29", "30-44", "45-59", "60-74", "75+", "unknown"]
    sexes = [r.group for r in rows if r.attribute == "sex"]
    assert sexes == ["female", "male", "unknown"]
    face = next(r for r in rows if r.group == "face")
    members = (cases["localization"] == "face").to_numpy()
    expected = binary_metrics(cases["label"][members], probabilities[members], 0.5)
    assert (face.sensitivity, face.specificity) == (expected.sensitivity, expected.specificity)
    assert (face.f1, face.roc_auc) == (expected.f1, expected.roc_auc)


def test_subgroups_follow_row_positions_not_the_frame_index(cases, challenger):
    reindexed = cases.set_axis(np.arange(len(cases))[::-1] + 1000)
    settings = {"age_bands": AgeBands(), "min_images": 20, "min_melanoma": 5}

    assert subgroup_table(reindexed, challenger.probabilities, 0.5, **settings) == (
        subgroup_table(cases, challenger.probabilities, 0.5, **settings)
    )


def test_small_groups_are_flagged_not_hidden(cases, challenger):
    rows = subgroup_table(
        cases, challenger.probabilities, 0.5, age_bands=AgeBands(), min_images=20, min_melanoma=5
    )

    for row in rows:
        assert row.small == (row.images < 20 or row.melanoma < 5)
    ear = next(r for r in rows if r.group == "ear")
    assert ear.small
    assert any(not r.small for r in rows)


def test_single_class_groups_have_no_auc_and_no_sensitivity():
    cases = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d", "e"],
            "lesion_id": ["l1", "l2", "l3", "l4", "l5"],
            "label": [0, 0, 1, 0, 1],
            "sex": ["male", "male", "female", "female", ""],
            "age": [40.0, 41.0, np.nan, 70.0, 70.0],
            "localization": ["back", "back", "face", "face", None],
        }
    )
    rows = subgroup_table(
        cases, [0.2, 0.6, 0.9, 0.3, 0.4], 0.5, age_bands=AgeBands(), min_images=1, min_melanoma=0
    )
    table = {(r.attribute, r.group): r for r in rows}

    male = table["sex", "male"]
    assert (male.images, male.melanoma, male.sensitivity, male.roc_auc) == (2, 0, None, None)
    assert male.specificity == 0.5
    unknown_sex = table["sex", "unknown"]
    assert (unknown_sex.specificity, unknown_sex.sensitivity) == (None, 0.0)
    assert table["age_band", "unknown"].images == 1
    assert table["localization", "unknown"].melanoma == 1
    assert table["localization", "face"].roc_auc == 1.0
    assert all(SubgroupRow.from_dict(r.to_dict()) == r for r in rows)


# --------------------------------------------------------------------------------------
# evaluation and report
# --------------------------------------------------------------------------------------


def test_champion_comparison_is_the_paired_statistics(report, cases, challenger, champion):
    labels = cases["label"].to_numpy()

    assert report.versus is not None
    assert report.versus.auc == delong_test(
        labels,
        challenger.probabilities,
        champion.probabilities,
        0.95,
        lesions=cases["lesion_id"].to_numpy(),
    )
    assert report.versus.f1 == paired_bootstrap_f1(
        labels,
        challenger.probabilities >= 0.5,
        champion.probabilities >= 0.4,
        lesions=cases["lesion_id"],
        iterations=200,
        seed=3,
    )
    assert report.versus.f1.resampled == "lesion"
    assert report.versus.champion.metrics == binary_metrics(labels, champion.probabilities, 0.4)
    assert report.challenger.metrics == binary_metrics(labels, challenger.probabilities, 0.5)
    assert (report.test_images, report.test_melanoma) == (len(cases), labels.sum())
    assert report.test_lesions == cases["lesion_id"].nunique()
    assert report.versus.champion.version == "3"
    assert report.challenger.version is None


def test_without_champion_there_is_no_comparison(cases, challenger):
    report = evaluate_on_test_set("snap", cases, challenger, None, FAST)

    assert report.versus is None
    assert not any(key.startswith(("champion_", "delta_")) for key in report.headline())
    assert EvaluationReport.from_json(report.to_json()) == report


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.1, np.inf])
def test_bad_probability_names_the_model_and_image(cases, challenger, champion, bad):
    probabilities = champion.probabilities.copy()
    probabilities[[17, 40]] = bad
    broken = replace(champion, probabilities=probabilities)

    with pytest.raises(ValueError, match=r"champion .*image ISIC_00017 "):
        evaluate_on_test_set("snap", cases, challenger, broken, FAST)


def test_probabilities_must_cover_every_test_image(cases, challenger):
    short = replace(challenger, probabilities=challenger.probabilities[:-1])

    with pytest.raises(ValueError, match=r"challenger .*239 probabilities for 240 test images"):
        evaluate_on_test_set("snap", cases, short, None, FAST)


def test_test_set_with_one_class_is_refused(cases, challenger):
    benign = cases[cases["label"] == 0].reset_index(drop=True)
    model = replace(challenger, probabilities=np.full(len(benign), 0.2))

    with pytest.raises(
        ValueError, match=rf"needs at least 2 melanoma.*0 melanoma and {len(benign)}"
    ):
        evaluate_on_test_set("snap", benign, model, None, FAST)


def test_report_round_trips_through_json(report):
    text = report.to_json()

    assert EvaluationReport.from_json(text) == report
    assert EvaluationReport.from_dict(json.loads(text)) == report
    assert isinstance(EvaluationReport.from_json(text).challenger.subgroups, tuple)


def test_the_report_names_each_models_architecture_and_reads_reports_without_it(
    cases, challenger, champion
):
    densenet = replace(challenger, architecture="densenet201, feature_extraction")
    resnet = replace(champion, architecture="resnet50, fine_tune")
    named = evaluate_on_test_set("snap", cases, densenet, resnet, FAST)

    assert named.challenger.name == "challenger (densenet201, feature_extraction)"
    assert named.versus is not None
    assert named.versus.champion.name == "champion (version 3; resnet50, fine_tune)"
    assert EvaluationReport.from_json(named.to_json()) == named
    older = json.loads(named.to_json())
    del older["challenger"]["architecture"]  # a report stored before it was recorded
    assert EvaluationReport.from_dict(older).challenger.architecture == ""


def test_headline_is_flat_metrics_for_mlflow(report):
    headline = report.headline()

    for key in (
        "test_f1", "test_roc_auc", "test_sensitivity", "test_specificity", "test_precision",
        "test_accuracy", "test_brier", "test_threshold", "champion_test_f1",
        "champion_test_roc_auc", "delta_roc_auc", "delta_roc_auc_p_superiority", "delta_f1",
        "delta_f1_ci_low", "delta_f1_ci_high",
    ):  # fmt: skip
        assert isinstance(headline[key], float), key
    assert headline["test_threshold"] == 0.5
    assert headline["champion_test_threshold"] == 0.4
    assert headline["delta_f1"] == pytest.approx(
        report.challenger.metrics.f1 - report.versus.champion.metrics.f1
    )


def test_headline_skips_undefined_values(report):
    without_auc = replace(report, versus=replace(report.versus, auc=None))

    assert "delta_roc_auc" not in without_auc.headline()
    assert EvaluationReport.from_json(without_auc.to_json()) == without_auc


# --------------------------------------------------------------------------------------
# pages for the reviewer
# --------------------------------------------------------------------------------------


def test_summary_html_escapes_decision_lines_and_flags_groups(report, tmp_path):
    (tmp_path / "roc.png").write_bytes(b"\x89PNG fake bytes")
    decision = ["REJECTED: F1 lower bound -0.02 < 0", "<script>alert(1)</script>"]

    page = summary_html(report, decision, {"ROC curve": "roc.png"}, image_folder=tmp_path)

    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "REJECTED: F1 lower bound -0.02 &lt; 0" in page
    encoded = base64.b64encode(b"\x89PNG fake bytes").decode()
    assert f'src="data:image/png;base64,{encoded}"' in page
    assert "ROC curve" in page
    small = [r for r in report.challenger.subgroups if r.small]
    assert page.count('<tr class="small">') == len(small)
    assert 'class="worse"' in page
    assert "DeLong" in page and "bootstrap" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)


def test_summary_html_without_champion_and_without_folder_links_by_name(cases, challenger):
    report = evaluate_on_test_set("snap", cases, challenger, None, FAST)

    page = summary_html(report, images={"ROC curve": "roc.png"})

    assert 'src="roc.png"' in page
    assert "No champion yet" in page
    assert 'class="worse"' not in page


def test_summary_markdown_lists_decision_headline_and_subgroups(report):
    text = summary_markdown(report, ["PROMOTED: beats the champion"])

    assert "- PROMOTED: beats the champion" in text
    assert f"| ROC AUC | {report.challenger.metrics.roc_auc:.3f} |" in text
    assert "| localization | ear |" in text
    assert "| age band | 75+ |" in text
    assert "small" in text


# --------------------------------------------------------------------------------------
# artifacts
# --------------------------------------------------------------------------------------


def test_artifacts_are_written_readable_and_aligned(report, cases, challenger, champion, tmp_path):
    shuffled = cases.sample(frac=1.0, random_state=1)  # predictions follow the rows given
    order = shuffled.index.to_numpy()
    first = replace(challenger, probabilities=challenger.probabilities[order])
    second = replace(champion, probabilities=champion.probabilities[order])

    paths = write_evaluation_artifacts(report, shuffled, first, second, tmp_path, ["PROMOTED"])

    names = {path.name for path in paths}
    assert names == {
        "evaluation.json", "summary.md", "summary.html", "roc.png", "pr.png",
        "reliability.png", "confusion.png", "subgroups.csv", "predictions.csv",
    }  # fmt: skip
    assert all(path.parent == tmp_path and path.stat().st_size > 0 for path in paths)
    for name in ("roc.png", "pr.png", "reliability.png", "confusion.png"):
        with Image.open(tmp_path / name) as image:
            image.verify()
            assert image.format == "PNG"
    assert plt.get_fignums() == []
    assert EvaluationReport.from_json((tmp_path / "evaluation.json").read_text()) == report
    assert "data:image/png;base64," in (tmp_path / "summary.html").read_text()
    _check_predictions(pd.read_csv(tmp_path / "predictions.csv"), cases, challenger, champion)
    subgroups = pd.read_csv(tmp_path / "subgroups.csv", keep_default_na=False)
    assert subgroups["role"].value_counts().to_dict() == {
        "challenger": len(report.challenger.subgroups),
        "champion": len(report.versus.champion.subgroups),
    }


def _check_predictions(predictions, cases, challenger, champion):
    by_image = predictions.set_index("image_id").loc[cases["image_id"]]
    assert list(by_image["lesion_id"]) == list(cases["lesion_id"])
    assert list(by_image["label"]) == list(cases["label"])
    np.testing.assert_allclose(by_image["challenger_probability"], challenger.probabilities)
    np.testing.assert_allclose(by_image["champion_probability"], champion.probabilities)


def test_artifacts_without_champion(cases, challenger, tmp_path: Path):
    report = evaluate_on_test_set("snap", cases, challenger, None, FAST)

    write_evaluation_artifacts(report, cases, challenger, None, tmp_path)

    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert list(predictions.columns) == [
        "image_id", "lesion_id", "label", "challenger_probability",
    ]  # fmt: skip
    assert set(pd.read_csv(tmp_path / "subgroups.csv")["role"]) == {"challenger"}
