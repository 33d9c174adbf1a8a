"""The limits validation and drift checks hold a manifest to (params.yaml `validation`, `drift`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ManifestBounds:
    melanoma_share_min: float = 0.05
    melanoma_share_max: float = 0.6
    min_melanoma: int = 10
    min_split_lesions: int = 2
    age_min: float = 0
    age_max: float = 120
    min_side: int = 32
    max_side: int = 8000
    image_modes: tuple[str, ...] = ("RGB",)
    brightness_mean_min: float = 20
    brightness_mean_max: float = 240
    brightness_std_min: float = 3
    example_rows: int = 5


@dataclass(frozen=True)
class DriftThresholds:
    melanoma_share_change: float = 0.10
    age_ks: float = 0.25
    brightness_ks: float = 0.25
    sex_distance: float = 0.15
    localization_distance: float = 0.20
    min_new_labels: int = 30
