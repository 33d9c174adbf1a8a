"""params.yaml, typed, with `-S key=value` overrides in the manner of `dvc exp run -S`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.dataset import SplitFractions
from pipelines.errors import BadInput
from pipelines.gate import GatePolicy, MetricRule, Mode, SubgroupMetric
from pipelines.monitoring import MonitorPolicy
from pipelines.training.backbones import ConvnetShape
from pipelines.training.config import Augmentation, TrainConfig, TrainConfigError
from pipelines.validation.bounds import DriftThresholds, ManifestBounds
from registry.labels import LABEL_SOURCES, IntakeRules

if TYPE_CHECKING:
    from pipelines.evaluation.evaluate import EvaluationSettings


class ParamsError(BadInput, ValueError):
    """params.yaml or an override is not valid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntakeParams(_Section):
    max_pixels: int = Field(default=40_000_000, gt=0)
    max_file_bytes: int = Field(default=50_000_000, gt=0)
    min_side: int = Field(default=32, gt=0)
    max_side: int = Field(default=8000, gt=0)
    age_min: float = 0
    age_max: float = 120
    batch_size: int = Field(default=500, gt=0)

    def rules(self) -> IntakeRules:
        return IntakeRules(
            max_pixels=self.max_pixels,
            max_file_bytes=self.max_file_bytes,
            min_side=self.min_side,
            max_side=self.max_side,
            age_min=self.age_min,
            age_max=self.age_max,
        )


class SampleDataParams(_Section):
    n: int = Field(default=200, gt=0)
    image_size: int = Field(default=128, ge=32)
    melanoma_fraction: float = Field(default=0.3, ge=0, le=1)
    multi_image_lesion_fraction: float = Field(default=0.35, ge=0, le=1)


class SplitParams(_Section):
    train: float = Field(default=0.7, ge=0, le=1)
    val: float = Field(default=0.15, ge=0, le=1)
    test: float = Field(default=0.15, ge=0, le=1)
    salt: str = "cme-lesion-split-v1"

    @model_validator(mode="after")
    def _shares_add_up(self) -> SplitParams:
        if abs(self.train + self.val + self.test - 1) > 1e-9:
            raise ValueError(
                f"train + val + test must be 1, got {self.train + self.val + self.test:g}"
            )
        return self

    def fractions(self) -> SplitFractions:
        return SplitFractions(train=self.train, val=self.val, test=self.test, salt=self.salt)


class SnapshotParams(_Section):
    label_sources: tuple[str, ...] = Field(default=("histo",), min_length=1)

    @model_validator(mode="after")
    def _known_sources(self) -> SnapshotParams:
        unknown = sorted(set(self.label_sources) - LABEL_SOURCES)
        if unknown:
            raise ValueError(f"unknown label source(s) {unknown}; known: {sorted(LABEL_SOURCES)}")
        return self


class ValidationParams(_Section):
    melanoma_share_min: float = Field(default=0.05, ge=0, le=1)
    melanoma_share_max: float = Field(default=0.6, ge=0, le=1)
    min_melanoma: int = Field(default=10, ge=0)
    min_split_lesions: int = Field(default=2, ge=0)
    age_min: float = 0
    age_max: float = 120
    min_side: int = Field(default=32, gt=0)
    max_side: int = Field(default=8000, gt=0)
    image_modes: tuple[str, ...] = ("RGB",)
    brightness_mean_min: float = Field(default=20, ge=0, le=255)
    brightness_mean_max: float = Field(default=240, ge=0, le=255)
    brightness_std_min: float = Field(default=3, ge=0)
    example_rows: int = Field(default=5, ge=1)

    def bounds(self) -> ManifestBounds:
        return ManifestBounds(**self.model_dump())


class DriftParams(_Section):
    melanoma_share_change: float = Field(default=0.10, ge=0, le=1)
    age_ks: float = Field(default=0.25, ge=0, le=1)
    brightness_ks: float = Field(default=0.25, ge=0, le=1)
    sex_distance: float = Field(default=0.15, ge=0, le=1)
    localization_distance: float = Field(default=0.20, ge=0, le=1)
    min_new_labels: int = Field(default=30, ge=1)

    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(**self.model_dump())


class TrainParams(_Section):
    image_size: int = Field(default=224, ge=32)
    batch_size: int = Field(default=32, ge=1)
    backbone: str = "resnet50"
    approach: Literal["fine_tune", "feature_extraction", "convnet"] = "fine_tune"
    convnet_filters: tuple[int, ...] = Field(default=(32, 64, 128, 256, 512), min_length=1)
    convnet_dense_units: int = Field(default=256, ge=1)
    convnet_l2: float = Field(default=1e-4, ge=0)
    feature_cache: bool = True
    weights: str = "imagenet"
    unfreeze_from: str = "last"
    dropout: float = Field(default=0.3, ge=0, lt=1)
    head_epochs: int = Field(default=2, ge=0)
    head_learning_rate: float = Field(default=1e-3, gt=0)
    epochs: int = Field(default=10, ge=0)
    learning_rate: float = Field(default=1e-5, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    ema_momentum: float = Field(default=0.0, ge=0, lt=1)
    gradient_clip_norm: float = Field(default=0.0, ge=0)
    diagnosis_weight: float = Field(default=0.0, ge=0)
    patience: int = Field(default=3, ge=1)
    imbalance: Literal["class_weight", "oversample", "none"] = "class_weight"
    augmentation: bool = True
    zoom: float = Field(default=0.1, ge=0, lt=1)
    colour_jitter: float = Field(default=0.1, ge=0, lt=1)
    cache: str = "memory"
    seed: int = 42
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    deterministic: bool = False
    threshold: float = Field(default=0.5, gt=0, lt=1)
    test_time_augmentation: Literal["none", "dihedral"] = "none"
    ensemble_size: int = Field(default=1, ge=1)
    init: Literal["champion", "base"] = "champion"
    shrink: float = Field(default=1.0, gt=0, le=1)
    perturb: float = Field(default=0.0, ge=0)
    warm_epochs: int = Field(default=3, ge=1)

    def config(self) -> TrainConfig:
        convnet = {"convnet_filters", "convnet_dense_units", "convnet_l2"}
        values = self.model_dump(exclude={"augmentation", "zoom", "colour_jitter", *convnet})
        augmentation = Augmentation(self.augmentation, self.zoom, self.colour_jitter)
        shape = ConvnetShape(self.convnet_filters, self.convnet_dense_units, self.convnet_l2)
        try:
            return TrainConfig(**values, augmentation=augmentation, convnet=shape)
        except TrainConfigError as error:
            raise ParamsError(str(error)) from None


class EvaluateParams(_Section):
    target_sensitivity: float | None = Field(default=None, gt=0, le=1)
    age_bands: tuple[float, ...] = Field(default=(0, 30, 45, 60, 75, 120), min_length=2)
    min_subgroup_images: int = Field(default=30, ge=1)
    min_subgroup_melanoma: int = Field(default=50, ge=0)
    bootstrap_iterations: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _bands_increase(self) -> EvaluateParams:
        if list(self.age_bands) != sorted(set(self.age_bands)):
            raise ValueError(f"age_bands must increase strictly, got {list(self.age_bands)}")
        return self

    def settings(self, alpha: float) -> EvaluationSettings:
        from pipelines.evaluation.evaluate import EvaluationSettings
        from pipelines.evaluation.subgroups import AgeBands

        return EvaluationSettings(
            age_bands=AgeBands(self.age_bands),
            min_subgroup_images=self.min_subgroup_images,
            min_subgroup_melanoma=self.min_subgroup_melanoma,
            bootstrap_iterations=self.bootstrap_iterations,
            confidence=self.confidence,
            alpha=alpha,
            seed=self.seed,
        )


class GateParams(_Section):
    roc_auc: Mode = Mode.non_inferiority
    roc_auc_margin: float = Field(default=0.02, ge=0, lt=1)
    f1: Mode = Mode.non_inferiority
    f1_margin: float = Field(default=0.02, ge=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    sensitivity_floor: float = Field(default=0.80, ge=0, le=1)
    specificity_floor: float = Field(default=0.50, ge=0, le=1)
    partial_roc_auc: Literal["off"] | Mode = "off"
    partial_roc_auc_margin: float = Field(default=0.0, ge=0, lt=0.2)
    max_subgroup_drop: float = Field(default=0.15, ge=0, le=1)
    subgroup_metrics: tuple[SubgroupMetric, ...] = ("sensitivity", "roc_auc")
    first_model_roc_auc: float = Field(default=0.75, ge=0, le=1)
    first_model_f1: float = Field(default=0.40, ge=0, le=1)
    approval: Literal["required", "not_required"] = "required"

    @field_validator("partial_roc_auc", mode="before")
    @classmethod
    def _unquoted_off(cls, value: object) -> object:
        """YAML reads an unquoted `off` (in params.yaml or `-S gate.partial_roc_auc=off`)
        as false."""
        return "off" if value is False else value

    def policy(self) -> GatePolicy:
        return GatePolicy(
            roc_auc=MetricRule(self.roc_auc, self.roc_auc_margin),
            f1=MetricRule(self.f1, self.f1_margin),
            alpha=self.alpha,
            sensitivity_floor=self.sensitivity_floor,
            specificity_floor=self.specificity_floor,
            partial_roc_auc=None
            if self.partial_roc_auc == "off"
            else MetricRule(Mode(self.partial_roc_auc), self.partial_roc_auc_margin),
            max_subgroup_drop=self.max_subgroup_drop,
            subgroup_metrics=tuple(self.subgroup_metrics),
            first_model_roc_auc=self.first_model_roc_auc,
            first_model_f1=self.first_model_f1,
            approval_required=self.approval == "required",
        )


class RetrainParams(_Section):
    min_new_labels: int = Field(default=30, ge=0)
    lease_minutes: float = Field(default=10, gt=0)
    full_every: int = Field(default=6, ge=0)
    full_on_drift: bool = True


class InboxParams(_Section):
    settle_seconds: float = Field(default=120, ge=0)


class MonitorParams(_Section):
    specificity_floor: float = Field(default=0.5, ge=0, le=1)
    max_calibration_error: float = Field(default=0.15, gt=0, le=1)
    min_melanoma: int = Field(default=20, ge=1)
    min_other: int = Field(default=20, ge=1)
    calibration_bins: int = Field(default=10, ge=2, le=100)

    def policy(self, gate: GateParams, confidence: float) -> MonitorPolicy:
        return MonitorPolicy(
            sensitivity_floor=gate.sensitivity_floor,
            specificity_floor=self.specificity_floor,
            max_calibration_error=self.max_calibration_error,
            min_melanoma=self.min_melanoma,
            min_other=self.min_other,
            calibration_bins=self.calibration_bins,
            confidence=confidence,
        )


class Params(_Section):
    intake: IntakeParams = IntakeParams()
    split: SplitParams = SplitParams()
    snapshot: SnapshotParams = SnapshotParams()
    validation: ValidationParams = ValidationParams()
    drift: DriftParams = DriftParams()
    sample_data: SampleDataParams = SampleDataParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    retrain: RetrainParams = RetrainParams()
    inbox: InboxParams = InboxParams()
    monitor: MonitorParams = MonitorParams()


def load_params(path: Path, overrides: Sequence[str] = ()) -> Params:
    """Read params.yaml (embedded defaults when the file is absent) and apply overrides."""
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ParamsError(f"{path}: not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ParamsError(
                f"{path}: expected a mapping of sections, got {type(loaded).__name__}"
            )
        raw = loaded or {}
    for override in overrides:
        _apply_override(raw, override)
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise ParamsError(f"{path}: {problems}") from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {override!r}: expected key=value, e.g. intake.batch_size=200")
    path = key.strip().split(".")
    known: Mapping[str, Any] = Params.model_fields
    node = raw
    for depth, part in enumerate(path):
        if part not in known:
            choices = ", ".join(sorted(known))
            raise ParamsError(f"override {override!r}: unknown key {part!r}; known: {choices}")
        field = known[part]
        is_leaf = depth == len(path) - 1
        annotation = field.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if is_leaf:
            if nested:
                raise ParamsError(
                    f"override {override!r}: {key} is a section, name one of its keys"
                )
            try:
                node[part] = yaml.safe_load(text)
            except yaml.YAMLError:
                raise ParamsError(f"override {override!r}: value is not valid YAML") from None
            return
        if not nested:
            raise ParamsError(f"override {override!r}: {part} is not a section")
        node = node.setdefault(part, {})
        known = annotation.model_fields
