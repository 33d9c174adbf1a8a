"""Real-world monitoring of the champion: Wilson intervals, calibration, sensitivity and
specificity from logged decisions, de-duplication, grouping by version, judging only with
enough cases, label delay, and the text and JSON reports."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.monitoring import (
    REQUIRED_COLUMNS,
    MonitorPolicy,
    VersionPerformance,
    calibration_bins,
    expected_calibration_error,
    real_world_performance,
    render_text,
    to_json,
    wilson_interval,
)

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POLICY = MonitorPolicy(sensitivity_floor=0.80, specificity_floor=0.50, max_calibration_error=0.10)
NO_CALIBRATION_CEILING = replace(POLICY, max_calibration_error=1.0)
"""For crafted counts: their 0.1 and 0.9 probabilities are far from calibrated."""


def case(
    version: str | None,
    image: str,
    *,
    truth: bool,
    decision: bool,
    probability: float | None = None,
    at: datetime = T0,
    delay: timedelta = timedelta(days=14),
) -> dict[str, Any]:
    """One matched prediction; by default its probability agrees with its decision."""
    return {
        "model_version": version,
        "image_sha256": image,
        "probability": (0.9 if decision else 0.1) if probability is None else probability,
        "decision": decision,
        "truth": truth,
        "predicted_at": at,
        "label_arrived_at": at + delay,
    }


def counts(
    version: str | None,
    *,
    tp: int = 0,
    fn: int = 0,
    tn: int = 0,
    fp: int = 0,
    start: datetime = T0,
    inverted: bool = False,
) -> list[dict[str, Any]]:
    """Cases with known confusion counts, one distinct image each, an hour apart. With
    `inverted` each probability contradicts its decision: re-thresholding would flip it."""
    kinds = [("tp", True, True)] * tp + [("fn", True, False)] * fn
    kinds += [("tn", False, False)] * tn + [("fp", False, True)] * fp
    rows = []
    for i, (kind, truth, decision) in enumerate(kinds):
        probability = (0.1 if decision else 0.9) if inverted else None
        image = f"{version}-{kind}-{i}"
        at = start + timedelta(hours=i)
        row = case(version, image, truth=truth, decision=decision, probability=probability, at=at)
        rows.append(row)
    return rows


def performance_of(
    rows: list[dict[str, Any]], policy: MonitorPolicy = POLICY
) -> list[VersionPerformance]:
    return real_world_performance(pd.DataFrame(rows), policy)


def only(rows: list[dict[str, Any]], policy: MonitorPolicy = POLICY) -> VersionPerformance:
    [performance] = performance_of(rows, policy)
    return performance


# --------------------------------------------------------------------------------------
# Wilson interval
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "total", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),
        # Newcombe (1998, Statistics in Medicine 17:857), table I, method 3
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_published_values(
    successes: int, total: int, low: float, high: float
) -> None:
    rate = wilson_interval(successes, total, 0.95)
    assert (rate.successes, rate.total) == (successes, total)
    assert rate.value == pytest.approx(successes / total)
    assert rate.low == pytest.approx(low, abs=1e-4)
    assert rate.high == pytest.approx(high, abs=1e-4)


def test_wilson_interval_edges_and_confidence() -> None:
    empty = wilson_interval(0, 0, 0.95)
    assert (empty.value, empty.low, empty.high) == (None, None, None)
    assert wilson_interval(0, 5, 0.95).low == 0.0
    assert wilson_interval(5, 5, 0.95).high == 1.0
    wide, narrow = wilson_interval(8, 10, 0.99), wilson_interval(8, 10, 0.90)
    assert narrow.low is not None and wide.low is not None
    assert narrow.high is not None and wide.high is not None
    assert wide.low < narrow.low < 0.8 < narrow.high < wide.high


@pytest.mark.parametrize(
    ("successes", "total", "confidence"), [(3, 2, 0.95), (-1, 2, 0.95), (1, 2, 1.0)]
)
def test_wilson_interval_rejects_impossible_input(
    successes: int, total: int, confidence: float
) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, total, confidence)


# --------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------


def test_calibration_bins_are_equal_width_and_non_empty_with_one_in_the_last() -> None:
    truth = np.array([False, False, True, True, True])
    probability = np.array([0.0, 0.05, 0.1, 0.95, 1.0])
    table = calibration_bins(truth, probability, 10)
    assert [(b.low, b.high, b.cases) for b in table] == [
        (0.0, pytest.approx(0.1), 2),
        (pytest.approx(0.1), pytest.approx(0.2), 1),
        (pytest.approx(0.9), 1.0, 2),
    ]
    assert [b.mean_probability for b in table] == pytest.approx([0.025, 0.1, 0.975])
    assert [b.observed_rate for b in table] == [0.0, 1.0, 1.0]
    # (2 * 0.025 + 1 * 0.9 + 2 * 0.025) / 5
    assert expected_calibration_error(truth, probability, 10) == pytest.approx(0.2)


def test_calibration_rejects_probabilities_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match="probabilities"):
        calibration_bins(np.array([True]), np.array([1.2]), 10)
    with pytest.raises(ValueError, match="no cases"):
        expected_calibration_error(np.array([], dtype=bool), np.array([]), 10)


def synthetic(rate_of: float, seed: int = 0, n: int = 20_000) -> list[dict[str, Any]]:
    """n images with probability p ~ U(0, 1) and melanoma ~ Bernoulli(rate_of * p)."""
    rng = np.random.default_rng(seed)
    probability = rng.uniform(0.0, 1.0, n)
    truth = rng.random(n) < rate_of * probability
    return [
        case("7", f"img-{i}", truth=bool(t), decision=bool(p >= 0.5), probability=float(p),
             at=T0 + timedelta(minutes=i))
        for i, (p, t) in enumerate(zip(probability, truth, strict=True))
    ]  # fmt: skip


def test_a_calibrated_model_has_a_small_calibration_error_and_no_finding() -> None:
    performance = only(synthetic(rate_of=1.0))
    assert performance.calibration_error < 0.02
    assert "calibration_error" in performance.judged
    assert all(f.metric != "calibration_error" for f in performance.findings)
    assert len(performance.calibration) == 10
    for b in performance.calibration:
        assert b.observed_rate == pytest.approx(b.mean_probability, abs=0.05)
    assert performance.brier == pytest.approx(1 / 6, abs=0.01)  # E[p(1-p)] for U(0, 1)


def test_an_overconfident_model_has_a_large_calibration_error_and_a_finding() -> None:
    performance = only(synthetic(rate_of=0.5))
    assert performance.calibration_error == pytest.approx(0.25, abs=0.02)  # E[p - p/2]
    [finding] = [f for f in performance.findings if f.metric == "calibration_error"]
    assert finding.model_version == "7"
    assert finding.value == performance.calibration_error
    assert finding.limit == 0.10
    assert "version 7" in finding.message
    assert "above the ceiling 0.100" in finding.message


# --------------------------------------------------------------------------------------
# Sensitivity and specificity
# --------------------------------------------------------------------------------------


def test_sensitivity_and_specificity_come_from_the_logged_decisions() -> None:
    """Every probability contradicts its decision: re-thresholding would give 0 and 0."""
    performance = only(counts("3", tp=24, fn=6, tn=30, fp=10, inverted=True))
    assert (performance.cases, performance.melanoma, performance.other) == (70, 30, 40)
    assert performance.sensitivity == wilson_interval(24, 30, 0.95)
    assert performance.sensitivity.value == pytest.approx(0.8)
    assert performance.specificity == wilson_interval(30, 40, 0.95)
    assert performance.specificity.value == pytest.approx(0.75)
    assert performance.judged == ("sensitivity", "specificity", "calibration_error")
    assert [f.metric for f in performance.findings] == ["calibration_error"]


def test_sensitivity_below_the_floor_gives_a_readable_finding() -> None:
    performance = only(counts("3", tp=30, fn=12, tn=40, fp=5))
    [finding] = [f for f in performance.findings if f.metric == "sensitivity"]
    assert finding.value == pytest.approx(30 / 42)
    assert finding.limit == 0.80
    assert finding.message == (
        "version 3: real-world sensitivity 0.71 (95% CI 0.56-0.83, 42 melanoma) "
        "is below the floor 0.80"
    )


def test_specificity_below_the_floor_gives_a_finding() -> None:
    performance = only(counts("3", tp=40, tn=8, fp=22), NO_CALIBRATION_CEILING)
    assert [f.metric for f in performance.findings] == ["specificity"]
    [finding] = performance.findings
    assert finding.value == pytest.approx(8 / 30)
    assert finding.limit == 0.50
    assert "30 non-melanoma" in finding.message


def test_an_image_predicted_several_times_by_one_version_counts_once_at_its_earliest() -> None:
    later, earliest = T0 + timedelta(days=3), T0 + timedelta(days=1)
    rows = [
        case("1", "a", truth=True, decision=True, at=later + timedelta(days=1)),
        case("1", "a", truth=True, decision=False, at=earliest),  # this one counts
        case("1", "a", truth=True, decision=True, at=later),
        case("1", "b", truth=True, decision=True, at=T0 + timedelta(days=2)),
        case("2", "a", truth=True, decision=True, at=T0),  # another version: its own count
    ]
    first, second = performance_of(rows)
    assert first.model_version == "2"
    assert (first.cases, first.sensitivity.successes) == (1, 1)
    assert second.model_version == "1"
    assert (second.cases, second.melanoma) == (2, 2)
    assert (second.sensitivity.successes, second.sensitivity.total) == (1, 2)
    assert second.first_prediction == earliest
    assert second.last_prediction == T0 + timedelta(days=2)


def test_versions_are_grouped_apart_ordered_by_first_prediction_with_their_own_findings() -> None:
    rows = counts("4", tp=40, fn=2, tn=40, fp=5, start=T0 + timedelta(days=30))
    rows += counts("5", tp=20, fn=20, tn=40, fp=5, start=T0)
    rows += counts(None, tp=1, tn=1, start=T0 + timedelta(days=60))
    rows += [case(np.nan, "nan-1", truth=False, decision=False, at=T0 + timedelta(days=61))]  # type: ignore[arg-type]
    performance = performance_of(rows, NO_CALIBRATION_CEILING)
    assert [p.model_version for p in performance] == ["5", "4", None]
    bad, good, unregistered = performance
    assert (bad.cases, good.cases, unregistered.cases) == (85, 87, 3)
    assert [(f.model_version, f.metric) for f in bad.findings] == [("5", "sensitivity")]
    assert good.findings == ()
    assert unregistered.label == "unregistered"


def test_too_few_cases_are_shown_but_not_judged() -> None:
    """Ten melanoma all missed and ten benign all called: awful, but not judged."""
    performance = only(counts("8", fn=10, fp=10))
    assert performance.sensitivity.value == 0.0
    assert performance.specificity.value == 0.0
    assert performance.calibration_error == pytest.approx(0.9)
    assert performance.judged == ()
    assert performance.findings == ()


def test_each_metric_needs_its_own_minimum() -> None:
    few_melanoma = only(counts("8", tp=15, tn=30))  # 45 cases: specificity and ECE judged
    assert few_melanoma.judged == ("specificity", "calibration_error")
    few_cases = only(counts("8", tp=5, tn=30))  # 35 cases < 20 + 20: ECE not judged
    assert few_cases.judged == ("specificity",)
    few_other = only(counts("8", tp=60, tn=19))  # 19 non-melanoma: neither
    assert few_other.judged == ("sensitivity",)
    lenient = MonitorPolicy(0.8, 0.5, 0.1, min_melanoma=5, min_other=5)
    assert only(counts("8", tp=5, tn=5), lenient).judged == (
        "sensitivity", "specificity", "calibration_error",
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Label delay, input checks
# --------------------------------------------------------------------------------------


def test_label_delay_in_days_across_time_zones() -> None:
    plus_two = timezone(timedelta(hours=2))
    rows = []
    for day in range(1, 11):
        at = T0 + timedelta(days=day)
        row = case("1", f"img-{day}", truth=False, decision=False, at=at)
        row["label_arrived_at"] = (at + timedelta(days=day)).astimezone(plus_two)
        rows.append(row)
    delay = only(rows).delay
    assert delay.median_days == pytest.approx(5.5)
    assert delay.p90_days == pytest.approx(9.1)
    assert delay.max_days == pytest.approx(10.0)


def test_label_delay_counts_fractions_of_a_day() -> None:
    rows = [case("1", "a", truth=True, decision=True, delay=timedelta(hours=36))]
    assert only(rows).delay.median_days == pytest.approx(1.5)


def test_missing_columns_are_named() -> None:
    frame = pd.DataFrame(counts("1", tp=1)).drop(columns=["truth", "image_sha256"])
    with pytest.raises(ValueError, match="image_sha256, truth"):
        real_world_performance(frame, POLICY)


def test_no_cases_give_no_performance() -> None:
    assert real_world_performance(pd.DataFrame(columns=list(REQUIRED_COLUMNS)), POLICY) == []
    assert real_world_performance(pd.DataFrame(), POLICY) == []


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("probability", 1.5, "probabilities"),
        ("truth", "yes", "truth"),
        ("decision", None, "decision"),
    ],
)
def test_invalid_values_are_rejected(column: str, value: object, message: str) -> None:
    rows = counts("1", tp=2)
    rows[1][column] = value
    with pytest.raises(ValueError, match=message):
        performance_of(rows)


@pytest.mark.parametrize(
    "change",
    [
        {"sensitivity_floor": 1.5},
        {"max_calibration_error": -0.1},
        {"min_other": -1},
        {"calibration_bins": 0},
        {"confidence": 1.0},
    ],
)
def test_policy_rejects_impossible_settings(change: dict[str, Any]) -> None:
    settings: dict[str, Any] = {
        "sensitivity_floor": 0.8, "specificity_floor": 0.5, "max_calibration_error": 0.1,
    }  # fmt: skip
    with pytest.raises(ValueError, match=next(iter(change))):
        MonitorPolicy(**(settings | change))


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def report_cases() -> list[VersionPerformance]:
    rows = counts("2", tp=40, fn=2, tn=40, fp=5, start=T0)
    rows += counts("3", tp=30, fn=12, tn=40, fp=5, start=T0 + timedelta(days=30))
    rows += counts(None, tp=3, tn=25, start=T0 + timedelta(days=40))
    return performance_of(rows)


def test_render_text_marks_the_champion_and_names_the_breached_floors() -> None:
    text = render_text(report_cases(), champion="3")
    blocks = text.split("\n\n")
    assert [block.splitlines()[0] for block in blocks] == [
        "version 2",
        "version 3 (champion)",
        "unregistered",
    ]
    old, champion, unregistered = blocks
    assert "real-world sensitivity 0.71 (95% CI 0.56-0.83, 42 melanoma)" in champion
    assert "is below the floor 0.80" in champion
    assert "within the policy's floors" in old
    assert "below the floor" not in old
    assert "too few cases to judge sensitivity (3 melanoma < 20)" in unregistered
    assert "below the floor" not in unregistered


def test_render_text_aligns_the_limits_and_tabulates_calibration() -> None:
    champion = render_text(report_cases(), champion="3").split("\n\n")[1].splitlines()
    sensitivity = next(line for line in champion if line.strip().startswith("sensitivity"))
    specificity = next(line for line in champion if line.strip().startswith("specificity"))
    ece = next(line for line in champion if line.strip().startswith("ECE"))
    assert "floor 0.800" in sensitivity and "floor 0.500" in specificity
    assert "ceiling 0.100" in ece
    assert sensitivity.index("floor") == specificity.index("floor") == ece.index("ceiling")
    assert "95% CI 0.564-0.828" in sensitivity
    assert any("median 14.0 d, p90 14.0 d" in line for line in champion)
    header = next(i for i, line in enumerate(champion) if line.strip().startswith("calibration"))
    assert champion[header].split() == ["calibration", "bin", "cases", "mean", "p", "observed"]
    # probabilities 0.1 and 0.9 fall in the bins [0.1, 0.2) and [0.9, 1]: 12/52 and 30/35
    assert champion[header + 1].split() == ["0.10-0.20", "52", "0.100", "0.231"]
    assert champion[header + 2].split() == ["0.90-1.00", "35", "0.900", "0.857"]


def test_render_text_says_when_the_champion_has_no_labelled_cases() -> None:
    text = render_text(report_cases(), champion="9")
    assert "(champion)" in text
    assert "version 9 (champion): no labelled predictions yet" in text
    assert "no predictions matched" in render_text([], champion="9")


def test_to_json_round_trips_with_iso_dates_and_nones() -> None:
    rows = counts("2", tp=40, fn=2, tn=40, fp=5) + counts(None, tn=3, start=T0 + timedelta(1))
    performance = performance_of(rows)
    data = to_json(performance)
    assert json.loads(json.dumps(data)) == data
    first, unregistered = data["versions"]
    assert first["model_version"] == "2"
    assert datetime.fromisoformat(first["first_prediction"]) == T0
    assert first["sensitivity"]["successes"] == 40
    assert first["calibration"][0]["cases"] == performance[0].calibration[0].cases
    assert first["findings"] == []
    assert unregistered["model_version"] is None
    assert unregistered["label"] == "unregistered"
    assert unregistered["sensitivity"]["value"] is None
    assert unregistered["policy"]["min_melanoma"] == 20
