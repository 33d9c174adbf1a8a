"""How a model does within each group of patients (sex, age band, body site): a drop in one
group can hide behind a better overall score. Small groups are shown, flagged, and not used
to judge a drop."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from pipelines.evaluation.metrics import BinaryMetrics, as_probabilities, binary_metrics

UNKNOWN = "unknown"
SUBGROUP_ATTRIBUTES = ("age_band", "localization", "sex")
"""The attributes of the subgroup table, in the order its rows are sorted by."""


@dataclass(frozen=True)
class AgeBands:
    """Age bands by their edges: band i holds edges[i] <= age < edges[i + 1], the last band
    also its upper edge. Ages missing or outside the edges are "unknown"."""

    edges: tuple[float, ...] = (0, 30, 45, 60, 75, 120)

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or any(b <= a for a, b in itertools.pairwise(self.edges)):
            raise ValueError(f"age band edges must be at least two, increasing: {self.edges}")

    @property
    def labels(self) -> tuple[str, ...]:
        """The bands' names: "0-29", "30-44", ..., "75+" for whole-year edges."""
        inner = tuple(_band_label(low, high) for low, high in itertools.pairwise(self.edges[:-1]))
        return (*inner, f"{_year(self.edges[-2])}+")

    def band_of(self, ages: pd.Series) -> npt.NDArray[np.object_]:
        """Each age's band label, "unknown" when missing or outside the edges."""
        values = pd.to_numeric(ages, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        top = len(self.edges) - 1
        positions = np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, "right")
        positions[values == self.edges[-1]] = top  # the top edge belongs to the last band
        inside = (positions >= 1) & (positions <= top)
        labels = np.array([UNKNOWN, *self.labels], dtype=object)
        return np.where(inside, labels[positions.clip(0, top)], UNKNOWN)


def _year(edge: float) -> str:
    return str(int(edge)) if float(edge).is_integer() else str(edge)


def _band_label(low: float, high: float) -> str:
    if float(low).is_integer() and float(high).is_integer():
        return f"{int(low)}-{int(high) - 1}"
    return f"{_year(low)}-<{_year(high)}"


@dataclass(frozen=True)
class SubgroupRow:
    """One group's metrics at the model's operating threshold."""

    attribute: str
    group: str
    images: int
    melanoma: int
    sensitivity: float | None
    specificity: float | None
    f1: float
    roc_auc: float | None
    small: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SubgroupRow:
        return cls(**data)


def patient_groups(cases: pd.DataFrame, age_bands: AgeBands) -> pd.DataFrame:
    """Each case's group for every subgroup attribute; missing values are "unknown"."""
    return pd.DataFrame(
        {
            "age_band": age_bands.band_of(cases["age"]),
            "localization": _named(cases["localization"]),
            "sex": _named(cases["sex"]),
        }
    )


def _named(values: pd.Series) -> npt.NDArray[np.object_]:
    text = values.astype("string").str.strip()
    named: npt.NDArray[np.object_] = text.fillna(UNKNOWN).replace("", UNKNOWN).to_numpy(object)
    return named


def subgroup_table(
    cases: pd.DataFrame,
    probabilities: npt.ArrayLike,
    threshold: float,
    *,
    age_bands: AgeBands,
    min_images: int,
    min_melanoma: int,
) -> tuple[SubgroupRow, ...]:
    """Every group of every attribute, sorted by attribute then group ("unknown" last)."""
    scores = as_probabilities(probabilities)
    if len(scores) != len(cases):
        raise ValueError(f"{len(cases)} cases but {len(scores)} probabilities")
    labels = cases["label"].to_numpy()
    groups = patient_groups(cases, age_bands)
    rows = []
    for attribute in SUBGROUP_ATTRIBUTES:
        column = groups[attribute].to_numpy()
        for group in _ordered(attribute, set(column), age_bands):
            members = column == group
            metrics = binary_metrics(labels[members], scores[members], threshold)
            rows.append(_row(attribute, group, metrics, min_images, min_melanoma))
    return tuple(rows)


def _ordered(attribute: str, groups: set[str], age_bands: AgeBands) -> list[str]:
    if attribute == "age_band":
        return [band for band in (*age_bands.labels, UNKNOWN) if band in groups]
    return sorted(groups, key=lambda group: (group == UNKNOWN, group))


def _row(
    attribute: str, group: str, metrics: BinaryMetrics, min_images: int, min_melanoma: int
) -> SubgroupRow:
    return SubgroupRow(
        attribute=attribute,
        group=group,
        images=metrics.images,
        melanoma=metrics.melanoma,
        sensitivity=metrics.sensitivity if metrics.melanoma else None,
        specificity=metrics.specificity if metrics.benign else None,
        f1=metrics.f1,
        roc_auc=metrics.roc_auc,
        small=metrics.images < min_images or metrics.melanoma < min_melanoma,
    )
