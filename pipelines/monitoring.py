"""How the champion does in the clinic: its logged predictions matched, weeks later, with
histopathology labels.

`real_world_performance(cases, policy)` is a pure function of the matched cases and the
policy; `cme monitor` fetches the cases and prints `render_text` or `to_json`. Sensitivity
and specificity come from the decisions the model logged at its threshold when it
predicted, never from re-thresholding the probabilities. Each proportion carries a Wilson
score interval. A metric is judged only when there are enough cases for it; otherwise it is
shown and not judged:

- sensitivity: at least `min_melanoma` melanoma;
- specificity: at least `min_other` non-melanoma;
- calibration error: at least `min_other` non-melanoma and `min_melanoma + min_other` cases
  in all. ECE averages over every case, so its noise shrinks with the number of cases, not
  with the number of melanoma; a model that calls every benign lesion 0.9 is miscalibrated
  whether or not melanoma were seen.

A warning is raised on the point estimate: sensitivity or specificity below its floor, ECE
above its ceiling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

REQUIRED_COLUMNS = (
    "model_version",
    "image_sha256",
    "probability",
    "decision",
    "truth",
    "predicted_at",
    "label_arrived_at",
)
METRICS = ("sensitivity", "specificity", "calibration_error")
UNREGISTERED = "unregistered"
_SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class MonitorPolicy:
    """The floors the champion must hold in the clinic, and how much evidence judging takes."""

    sensitivity_floor: float
    specificity_floor: float
    max_calibration_error: float
    min_melanoma: int = 20
    min_other: int = 20
    calibration_bins: int = 10
    confidence: float = 0.95

    def __post_init__(self) -> None:
        for name in ("sensitivity_floor", "specificity_floor", "max_calibration_error"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("min_melanoma", "min_other"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.calibration_bins < 1:
            raise ValueError(f"calibration_bins must be at least 1, got {self.calibration_bins}")
        _check_confidence(self.confidence)


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson score interval; value and bounds are None when total is 0."""

    successes: int
    total: int
    value: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class CalibrationBin:
    """Cases whose probability lies in [low, high) (the last bin also holds 1.0)."""

    low: float
    high: float
    cases: int
    mean_probability: float
    observed_rate: float


@dataclass(frozen=True)
class LabelDelay:
    """Days from the prediction to the histopathology label's arrival."""

    median_days: float
    p90_days: float
    max_days: float


@dataclass(frozen=True)
class MonitorFinding:
    """One warning: a judged metric outside the policy."""

    model_version: str | None
    metric: str
    value: float
    limit: float
    message: str


@dataclass(frozen=True)
class VersionPerformance:
    """One model version's real-world performance on its matched, de-duplicated cases."""

    model_version: str | None
    cases: int
    melanoma: int
    sensitivity: Rate
    specificity: Rate
    brier: float
    calibration_error: float
    calibration: tuple[CalibrationBin, ...]
    delay: LabelDelay
    first_prediction: datetime
    last_prediction: datetime
    findings: tuple[MonitorFinding, ...]
    judged: tuple[str, ...]
    policy: MonitorPolicy | None = field(default=None)
    """The policy it was judged by; lets a report say what was not judged and why."""

    @property
    def other(self) -> int:
        return self.cases - self.melanoma

    @property
    def label(self) -> str:
        return version_label(self.model_version)


def version_label(model_version: str | None) -> str:
    return UNREGISTERED if model_version is None else f"version {model_version}"


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


def wilson_interval(successes: int, total: int, confidence: float) -> Rate:
    """successes / total with its Wilson score interval at `confidence` (two-sided)."""
    _check_confidence(confidence)
    if total < 0 or not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return Rate(successes, total, None, None, None)
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / total
    shrink = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / shrink
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / shrink
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Rate(successes, total, p, low, high)


def calibration_bins(
    truth: npt.ArrayLike, probability: npt.ArrayLike, bins: int
) -> tuple[CalibrationBin, ...]:
    """The non-empty ones of `bins` equal-width bins over [0, 1]; 1.0 falls in the last."""
    labels, scores = _calibration_inputs(truth, probability, bins)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    probability_sums = np.bincount(index, weights=scores, minlength=bins)
    melanoma_sums = np.bincount(index, weights=labels.astype(np.float64), minlength=bins)
    return tuple(
        CalibrationBin(
            low=float(edges[i]),
            high=float(edges[i + 1]),
            cases=int(counts[i]),
            mean_probability=float(probability_sums[i] / counts[i]),
            observed_rate=float(melanoma_sums[i] / counts[i]),
        )
        for i in range(bins)
        if counts[i]
    )


def expected_calibration_error(
    truth: npt.ArrayLike, probability: npt.ArrayLike, bins: int
) -> float:
    """Mean |mean probability - observed melanoma rate| over the bins, weighted by cases."""
    table = calibration_bins(truth, probability, bins)
    if not table:
        raise ValueError("no cases to compute a calibration error on")
    return _weighted_error(table)


def _weighted_error(table: tuple[CalibrationBin, ...]) -> float:
    cases = sum(b.cases for b in table)
    return sum(b.cases * abs(b.mean_probability - b.observed_rate) for b in table) / cases


def _calibration_inputs(
    truth: npt.ArrayLike, probability: npt.ArrayLike, bins: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    labels = np.asarray(truth).reshape(-1)
    scores = np.asarray(probability, dtype=np.float64).reshape(-1)
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} probabilities")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("truth must be boolean (or 0 and 1)")
    if not (np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0)).all():
        raise ValueError("probabilities must be finite and in [0, 1]")
    return labels.astype(np.bool_), scores


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


# --------------------------------------------------------------------------------------
# Real-world performance
# --------------------------------------------------------------------------------------


def real_world_performance(cases: pd.DataFrame, policy: MonitorPolicy) -> list[VersionPerformance]:
    """Each model version's performance on its matched cases, ordered by first prediction.

    One row per matched prediction; an image predicted several times by one version counts
    once, at its earliest prediction. A missing version (None or NaN) is its own group.
    No rows give []; rows without a required column raise ValueError."""
    if len(cases) == 0:  # no rows: a query with no results may carry no columns either
        return []
    missing = [column for column in REQUIRED_COLUMNS if column not in cases.columns]
    if missing:
        raise ValueError(f"cases lack column(s) {', '.join(missing)}")
    frame = _clean(cases)
    frame = frame.sort_values(["predicted_at"], kind="stable")
    frame = frame.drop_duplicates(["_group", "image_sha256"], keep="first")
    performance = [_version(group, policy) for _, group in frame.groupby("_group", sort=False)]
    return sorted(performance, key=lambda p: (p.first_prediction, p.label))


def _clean(cases: pd.DataFrame) -> pd.DataFrame:
    for column in REQUIRED_COLUMNS[1:]:
        if cases[column].isna().any():
            raise ValueError(f"column {column} has missing values")
    cases = cases.reset_index(drop=True)
    versions = [None if _missing(v) else str(v) for v in cases["model_version"]]
    frame = pd.DataFrame(
        {
            "model_version": pd.Series(versions, dtype=object),
            # None cannot be a groupby key; "" (no version) never collides with "=" + version
            "_group": ["" if v is None else f"={v}" for v in versions],
            "image_sha256": cases["image_sha256"].astype(str),
            "probability": pd.to_numeric(cases["probability"]).astype(np.float64),
            "decision": _booleans(cases["decision"], "decision"),
            "truth": _booleans(cases["truth"], "truth"),
            # naive times are taken as UTC
            "predicted_at": pd.to_datetime(cases["predicted_at"], utc=True),
            "label_arrived_at": pd.to_datetime(cases["label_arrived_at"], utc=True),
        }
    )
    scores = frame["probability"].to_numpy()
    if not (np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0)).all():
        raise ValueError("probabilities must be finite and in [0, 1]")
    return frame


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _booleans(values: pd.Series, name: str) -> npt.NDArray[np.bool_]:
    array = np.asarray(values.to_numpy())
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"column {name} must be boolean (or 0 and 1)")
    return array.astype(np.bool_)


def _version(group: pd.DataFrame, policy: MonitorPolicy) -> VersionPerformance:
    version: str | None = group["model_version"].iloc[0]
    truth = group["truth"].to_numpy(dtype=np.bool_)
    decision = group["decision"].to_numpy(dtype=np.bool_)
    probability = group["probability"].to_numpy(dtype=np.float64)
    melanoma, other = int(truth.sum()), int((~truth).sum())
    sensitivity = wilson_interval(int((decision & truth).sum()), melanoma, policy.confidence)
    specificity = wilson_interval(int((~decision & ~truth).sum()), other, policy.confidence)
    table = calibration_bins(truth, probability, policy.calibration_bins)
    delays = (group["label_arrived_at"] - group["predicted_at"]).dt.total_seconds().to_numpy()
    days = delays / _SECONDS_PER_DAY
    judged = _judged(len(truth), melanoma, other, policy)
    performance = VersionPerformance(
        model_version=version,
        cases=len(truth),
        melanoma=melanoma,
        sensitivity=sensitivity,
        specificity=specificity,
        brier=float(np.mean((probability - truth) ** 2)),
        calibration_error=_weighted_error(table),
        calibration=table,
        delay=LabelDelay(
            median_days=float(np.median(days)),
            p90_days=float(np.percentile(days, 90)),
            max_days=float(np.max(days)),
        ),
        first_prediction=group["predicted_at"].min().to_pydatetime(),
        last_prediction=group["predicted_at"].max().to_pydatetime(),
        findings=(),
        judged=judged,
        policy=policy,
    )
    return replace(performance, findings=_findings(performance, policy))


def _judged(cases: int, melanoma: int, other: int, policy: MonitorPolicy) -> tuple[str, ...]:
    enough = {
        "sensitivity": melanoma >= policy.min_melanoma,
        "specificity": other >= policy.min_other,
        "calibration_error": other >= policy.min_other
        and cases >= policy.min_melanoma + policy.min_other,
    }
    return tuple(metric for metric in METRICS if enough[metric])


def _findings(performance: VersionPerformance, policy: MonitorPolicy) -> tuple[MonitorFinding, ...]:
    p, label = performance, performance.label
    ci = _ci_name(policy.confidence)
    findings = []
    for metric, rate, floor, whom in (
        ("sensitivity", p.sensitivity, policy.sensitivity_floor, "melanoma"),
        ("specificity", p.specificity, policy.specificity_floor, "non-melanoma"),
    ):
        if metric in p.judged and rate.value is not None and rate.value < floor:
            message = (
                f"{label}: real-world {metric} {rate.value:.2f} ({ci} {_interval(rate)}, "
                f"{rate.total} {whom}) is below the floor {floor:.2f}"
            )
            findings.append(MonitorFinding(p.model_version, metric, rate.value, floor, message))
    ceiling = policy.max_calibration_error
    if "calibration_error" in p.judged and p.calibration_error > ceiling:
        message = (
            f"{label}: expected calibration error {p.calibration_error:.3f} over {p.cases} "
            f"cases ({policy.calibration_bins} bins) is above the ceiling {ceiling:.3f}"
        )
        findings.append(
            MonitorFinding(
                p.model_version, "calibration_error", p.calibration_error, ceiling, message
            )
        )
    return tuple(findings)


def _ci_name(confidence: float | None) -> str:
    return "CI" if confidence is None else f"{round(confidence * 100, 4):g}% CI"


def _interval(rate: Rate) -> str:
    if rate.low is None or rate.high is None:
        return "undefined"
    return f"{rate.low:.2f}-{rate.high:.2f}"


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def render_text(performance: Sequence[VersionPerformance], *, champion: str | None) -> str:
    """A plain-text report for the terminal, one block per version, the champion marked."""
    if not performance:
        lines = ["no predictions matched with a histopathology label yet"]
        if champion is not None:
            lines.append(f"champion: {version_label(champion)}")
        return "\n".join(lines) + "\n"
    blocks = [_block(p, champion=champion) for p in performance]
    versions = {p.model_version for p in performance}
    if champion is not None and champion not in versions:
        blocks.append(f"{version_label(champion)} (champion): no labelled predictions yet")
    return "\n\n".join(blocks) + "\n"


def _block(p: VersionPerformance, *, champion: str | None) -> str:
    policy = p.policy
    is_champion = champion is not None and p.model_version == champion
    ci = _ci_name(policy.confidence if policy else None)
    sensitivity_floor = f"floor {policy.sensitivity_floor:.3f}" if policy else ""
    specificity_floor = f"floor {policy.specificity_floor:.3f}" if policy else ""
    ceiling = f"ceiling {policy.max_calibration_error:.3f}" if policy else ""
    rows = [
        ("predictions", f"{_day(p.first_prediction)} to {_day(p.last_prediction)}", ""),
        ("cases", f"{p.cases} matched: {p.melanoma} melanoma, {p.other} other", ""),
        ("sensitivity", _rate_text(p.sensitivity, ci, "melanoma"), sensitivity_floor),
        ("specificity", _rate_text(p.specificity, ci, "other"), specificity_floor),
        ("Brier", f"{p.brier:.3f}", ""),
        ("ECE", f"{p.calibration_error:.3f} ({len(p.calibration)} non-empty bins)", ceiling),
        (
            "label delay",
            f"median {p.delay.median_days:.1f} d, p90 {p.delay.p90_days:.1f} d, "
            f"max {p.delay.max_days:.1f} d",
            "",
        ),
    ]
    width = max(len(value) for _, value, _ in rows)
    lines = [f"{p.label}{' (champion)' if is_champion else ''}"]
    lines += [f"  {name:<13}{value:<{width}}  {limit}".rstrip() for name, value, limit in rows]
    lines += _calibration_table(p.calibration)
    lines += _verdict(p)
    return "\n".join(lines)


def _rate_text(rate: Rate, ci: str, whom: str) -> str:
    if rate.value is None:
        return f"undefined (no {whom})"
    return f"{rate.value:.3f}  {ci} {rate.low:.3f}-{rate.high:.3f}  ({rate.successes}/{rate.total})"


def _calibration_table(table: tuple[CalibrationBin, ...]) -> list[str]:
    lines = [f"  {'calibration':<13}{'bin':<11}{'cases':>7}{'mean p':>9}{'observed':>10}"]
    lines += [
        f"  {'':<13}{f'{b.low:.2f}-{b.high:.2f}':<11}{b.cases:>7}"
        f"{b.mean_probability:>9.3f}{b.observed_rate:>10.3f}"
        for b in table
    ]
    return lines


def _verdict(p: VersionPerformance) -> list[str]:
    lines = [f"  ! {finding.message}" for finding in p.findings]
    if p.judged and not p.findings:
        lines.append(f"  within the policy's floors ({', '.join(p.judged)} judged)")
    lines += [f"  {_not_judged(p, metric)}" for metric in METRICS if metric not in p.judged]
    return lines


def _not_judged(p: VersionPerformance, metric: str) -> str:
    policy = p.policy
    if policy is None:
        return f"too few cases to judge {metric}"
    if metric == "sensitivity":
        why = f"{p.melanoma} melanoma < {policy.min_melanoma}"
    elif metric == "specificity" or p.other < policy.min_other:
        why = f"{p.other} other < {policy.min_other}"
    else:
        why = f"{p.cases} cases < {policy.min_melanoma + policy.min_other}"
    return f"too few cases to judge {metric} ({why})"


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M %Z").rstrip()


def to_json(performance: Sequence[VersionPerformance]) -> dict[str, Any]:
    """The report as JSON-ready data: datetimes in ISO 8601, tuples as lists, None kept."""
    return {"versions": [_jsonable(asdict(p) | {"label": p.label}) for p in performance]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
