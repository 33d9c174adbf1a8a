"""Drift of newly confirmed labels against the previous snapshot.

A distribution shift is not an error (a new clinic, a screening campaign), so drift warns
and is recorded; it never fails validation. Each measure is simple enough to explain to a
reviewer: the change of melanoma share, the Kolmogorov-Smirnov statistic of age and of
brightness, and the total variation distance of the sex and body-site mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from scipy import stats

from pipelines.validation.bounds import DriftThresholds


@dataclass(frozen=True)
class PreviousSnapshot:
    snapshot_id: str
    manifest: pd.DataFrame


@dataclass(frozen=True)
class DriftCheck:
    feature: str
    measure: str
    value: float
    threshold: float
    warned: bool
    detail: str


@dataclass(frozen=True)
class DriftReport:
    previous_snapshot: str | None
    new_labels: int
    checks: tuple[DriftCheck, ...] = ()

    @property
    def warnings(self) -> tuple[DriftCheck, ...]:
        return tuple(check for check in self.checks if check.warned)

    def summary_lines(self) -> list[str]:
        if self.previous_snapshot is None:
            return ["drift: no previous snapshot to compare with"]
        head = f"drift: {self.new_labels} new labels against snapshot {self.previous_snapshot}"
        lines = [head]
        for check in self.checks:
            mark = "WARN" if check.warned else "ok  "
            lines.append(
                f"  {mark} {check.feature:<15} {check.measure} {check.value:.3f} "
                f"(threshold {check.threshold:g}): {check.detail}"
            )
        return lines


def new_labels(previous: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """Rows of `current` that `previous` lacks: new images and relabelled ones."""
    known = pd.MultiIndex.from_frame(previous[["image_id", "dx"]].astype(str))
    keys = pd.MultiIndex.from_frame(current[["image_id", "dx"]].astype(str))
    return current.loc[~keys.isin(known)]


def drift_report(
    snapshot: PreviousSnapshot | None, current: pd.DataFrame, thresholds: DriftThresholds
) -> DriftReport:
    if snapshot is None:
        return DriftReport(previous_snapshot=None, new_labels=len(current))
    previous = snapshot.manifest
    arrived = new_labels(previous, current)
    if arrived.empty:
        return DriftReport(previous_snapshot=snapshot.snapshot_id, new_labels=0)
    enough = len(arrived) >= thresholds.min_new_labels
    checks = (
        _share_change(previous, arrived, thresholds.melanoma_share_change, enough),
        _ks("age", previous, arrived, thresholds.age_ks, enough),
        _ks("brightness_mean", previous, arrived, thresholds.brightness_ks, enough),
        _mix("sex", previous, arrived, thresholds.sex_distance, enough),
        _mix("localization", previous, arrived, thresholds.localization_distance, enough),
    )
    return DriftReport(snapshot.snapshot_id, len(arrived), checks)


def _share_change(
    previous: pd.DataFrame, arrived: pd.DataFrame, threshold: float, enough: bool
) -> DriftCheck:
    before, now = float(previous["label"].mean()), float(arrived["label"].mean())
    change = abs(now - before)
    detail = f"melanoma {before:.1%} before, {now:.1%} among new labels"
    return DriftCheck(
        "melanoma", "share change", change, threshold, enough and change > threshold, detail
    )


def _ks(
    column: str, previous: pd.DataFrame, arrived: pd.DataFrame, threshold: float, enough: bool
) -> DriftCheck:
    before = pd.to_numeric(previous[column], errors="coerce").dropna()
    now = pd.to_numeric(arrived[column], errors="coerce").dropna()
    if before.empty or now.empty:
        return DriftCheck(column, "KS", 0.0, threshold, False, "no values to compare")
    statistic = float(stats.ks_2samp(before, now).statistic)
    detail = f"median {before.median():.1f} before, {now.median():.1f} among new labels"
    return DriftCheck(column, "KS", statistic, threshold, enough and statistic > threshold, detail)


def _mix(
    column: str, previous: pd.DataFrame, arrived: pd.DataFrame, threshold: float, enough: bool
) -> DriftCheck:
    before = previous[column].astype(str).value_counts(normalize=True)
    now = arrived[column].astype(str).value_counts(normalize=True)
    both = before.index.union(now.index)
    shift = (now.reindex(both, fill_value=0) - before.reindex(both, fill_value=0)).abs()
    distance = float(shift.sum() / 2)
    moved = shift.idxmax()
    detail = (
        f"largest change {moved}: {before.get(moved, 0.0):.1%} before, "
        f"{now.get(moved, 0.0):.1%} among new labels"
    )
    return DriftCheck(column, "TVD", distance, threshold, enough and distance > threshold, detail)
