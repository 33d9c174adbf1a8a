"""What a training run is asked to do: the `train` section of params.yaml, as the domain
sees it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pipelines.errors import BadInput
from pipelines.training.backbones import BACKBONES, CONVNET, Backbone, ConvnetShape

Approach = Literal["fine_tune", "feature_extraction", "convnet"]
Imbalance = Literal["class_weight", "oversample", "none"]
MixedPrecision = Literal["auto", "on", "off"]
Schedule = Literal["constant", "cosine"]
Initialization = Literal["champion", "base"]
TestTimeAugmentation = Literal["none", "dihedral"]

IMAGENET = "imagenet"
NO_WEIGHTS = "none"
ALL_LAYERS = "all"
LAST_BLOCK = "last"
APPROACHES: tuple[Approach, ...] = ("fine_tune", "feature_extraction", "convnet")


class TrainConfigError(BadInput, ValueError):
    """A training setting cannot work; the message names the setting and the way out."""


class TrainingDataError(BadInput, ValueError):
    """The snapshot cannot train a classifier; the message says what is missing."""


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to training images only (never to validation or test)."""

    enabled: bool = True
    zoom: float = 0.1  # largest share of the side cropped away before resizing back
    colour_jitter: float = 0.1  # largest relative change of brightness, contrast, saturation


@dataclass(frozen=True)
class TrainConfig:
    image_size: int = 224
    batch_size: int = 32
    backbone: str = "resnet50"  # one of BACKBONES (not read by the convnet approach)
    approach: Approach = "fine_tune"
    convnet: ConvnetShape = field(default_factory=ConvnetShape)  # the convnet approach's size
    feature_cache: bool = True  # feature extraction: the backbone's features kept per image
    weights: str = IMAGENET  # imagenet | none | path to the backbone's notop weights file
    unfreeze_from: str = LAST_BLOCK  # first block trained when fine-tuning, `last` or `all`
    dropout: float = 0.3
    head_epochs: int = 2
    head_learning_rate: float = 1e-3
    epochs: int = 10
    learning_rate: float = 1e-5
    schedule: Schedule = "constant"  # learning rate over each phase
    warmup_epochs: int = 0  # cosine only: linear rise from 0 to the phase's rate first
    weight_decay: float = 0.0  # > 0: AdamW's decoupled weight decay
    ema_momentum: float = 0.0  # > 0: validate, keep and serve an average of the weights
    gradient_clip_norm: float = 0.0  # > 0: clip each step's gradients to this global norm
    diagnosis_weight: float = 0.0  # > 0: a second head also learns the seven-way diagnosis
    patience: int = 3
    imbalance: Imbalance = "class_weight"
    augmentation: Augmentation = Augmentation()
    cache: str = "memory"  # memory | none | a folder for tf.data's file cache
    seed: int = 42
    mixed_precision: MixedPrecision = "auto"
    deterministic: bool = False
    threshold: float = 0.5
    test_time_augmentation: TestTimeAugmentation = "none"  # dihedral: mean over 8 orientations
    ensemble_size: int = 1  # > 1: that many models (seeds seed, seed+1, ...), served as one
    init: Initialization = "champion"  # start from the serving champion, or from `weights`
    shrink: float = 1.0  # warm start: the champion's weights times this...
    perturb: float = 0.0  # ...plus a fresh initialisation times this (Ash and Adams, 2020)
    warm_epochs: int = 3  # warm start: fine-tuning epochs at most (no head phase)

    def __post_init__(self) -> None:
        self._check_architecture()
        if self.warmup_epochs and self.schedule != "cosine":
            raise TrainConfigError(
                "train.warmup_epochs only applies to train.schedule=cosine: set both, or "
                "train.warmup_epochs=0"
            )
        if not 0.0 <= self.ema_momentum < 1.0:
            raise TrainConfigError(
                f"train.ema_momentum={self.ema_momentum}: expected 0 (off) or a momentum "
                "below 1, e.g. 0.999"
            )
        if self.gradient_clip_norm < 0:
            raise TrainConfigError(
                f"train.gradient_clip_norm={self.gradient_clip_norm}: expected 0 (off) or a "
                "positive global norm, e.g. 1.0"
            )
        if self.diagnosis_weight < 0:
            raise TrainConfigError(
                f"train.diagnosis_weight={self.diagnosis_weight}: expected 0 (off) or a "
                "positive weight of the diagnosis loss, e.g. 0.5"
            )
        if self.ensemble_size < 1:
            raise TrainConfigError(
                f"train.ensemble_size={self.ensemble_size}: expected 1 (one model) or more"
            )
        if not 0.0 < self.shrink <= 1.0 or self.perturb < 0:
            raise TrainConfigError(
                f"train.shrink={self.shrink}, train.perturb={self.perturb}: expected a shrink "
                "in (0, 1] and a perturbation of 0 or more, e.g. 0.5 and 0.05"
            )
        if self.warm_epochs < 1:
            raise TrainConfigError(f"train.warm_epochs={self.warm_epochs}: expected 1 or more")
        if self.head_epochs + self.epochs < 1:
            raise TrainConfigError("train.head_epochs + train.epochs must be at least 1")
        if self.epochs < 1 and not self.pretrained:
            raise TrainConfigError(
                "train.epochs=0: from scratch there is no head phase to train instead; set "
                "train.epochs to 1 or more"
            )

    def _check_architecture(self) -> None:
        if self.approach not in APPROACHES:
            raise TrainConfigError(
                f"train.approach={self.approach!r}: expected one of {', '.join(APPROACHES)}"
            )
        if self.approach == CONVNET:
            if not self.convnet.filters or min(self.convnet.filters) < 1:
                raise TrainConfigError(
                    f"train.convnet_filters={list(self.convnet.filters)}: expected one width "
                    "of 1 or more per block, e.g. [32, 64, 128, 256, 512]"
                )
            if self.weights != NO_WEIGHTS:
                raise TrainConfigError(
                    "train.approach=convnet learns from scratch, there are no weights to start "
                    "from: set train.weights=none"
                )
            return
        if self.backbone not in BACKBONES:
            raise TrainConfigError(
                f"train.backbone={self.backbone!r}: expected one of {', '.join(BACKBONES)}"
            )
        backbone = self.base
        if self.image_size < backbone.min_size:
            raise TrainConfigError(
                f"train.image_size={self.image_size}: {backbone.name} needs images of at least "
                f"{backbone.min_size} px"
            )
        if self.pretrained and backbone.imagenet_size not in (None, self.image_size):
            raise TrainConfigError(
                f"train.image_size={self.image_size}: {backbone.name}'s pretrained weights fit "
                f"{backbone.imagenet_size} px images only: set train.image_size="
                f"{backbone.imagenet_size}, or train.weights=none"
            )
        blocks = (*backbone.block_names, LAST_BLOCK, ALL_LAYERS)
        if self.unfreeze_from not in blocks:
            raise TrainConfigError(
                f"train.unfreeze_from={self.unfreeze_from!r}: {backbone.name}'s blocks are "
                f"{', '.join(blocks)}"
            )
        if self.approach == "feature_extraction" and not self.pretrained:
            raise TrainConfigError(
                "train.approach=feature_extraction freezes the backbone, so it needs learnt "
                "weights: set train.weights=imagenet or a weights file"
            )
        if self.caches_features and (self.imbalance == "oversample" or self.learns_diagnosis):
            raise TrainConfigError(
                "train.approach=feature_extraction trains the head on cached features, which "
                "cannot be oversampled with augmentation nor feed the diagnosis head: set "
                "train.imbalance=class_weight and train.diagnosis_weight=0, or "
                "train.feature_cache=false"
            )
        if not self.pretrained and self.unfreeze_from != ALL_LAYERS:
            raise TrainConfigError(
                f"train.weights=none trains {backbone.name} from scratch, so every layer must "
                "learn: set train.unfreeze_from=all"
            )

    @property
    def caches_features(self) -> bool:
        """Feature extraction on the cached features of a frozen backbone (no augmentation
        of the training images: fixed features cannot be flipped or zoomed)."""
        return self.approach == "feature_extraction" and self.feature_cache

    @property
    def base(self) -> Backbone:
        """The pretrained backbone (not the convnet approach's)."""
        return BACKBONES[self.backbone]

    @property
    def architecture(self) -> str:
        """The base the classifier is built on: a backbone's name, or `convnet`."""
        return CONVNET if self.approach == CONVNET else self.backbone

    @property
    def first_trained_block(self) -> str:
        """The block fine-tuning trains from (`all`: every layer of the backbone)."""
        if self.unfreeze_from == LAST_BLOCK:
            return self.base.block_names[-1]
        return self.unfreeze_from

    @property
    def pretrained(self) -> bool:
        return self.weights != NO_WEIGHTS

    @property
    def averages_weights(self) -> bool:
        return self.ema_momentum > 0

    @property
    def learns_diagnosis(self) -> bool:
        return self.diagnosis_weight > 0

    def member(self, index: int) -> TrainConfig:
        """The settings of the ensemble's member `index` (from 0): the same recipe with its
        own seed, so the members start, shuffle and augment differently."""
        return replace(self, seed=self.seed + index, ensemble_size=1)

    @property
    def weights_file(self) -> Path | None:
        if self.weights in (IMAGENET, NO_WEIGHTS):
            return None
        return Path(self.weights)

    def as_params(self) -> dict[str, Any]:
        """Flat `train.*` keys, as logged with the run."""
        flat: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{key}.{inner}": v for inner, v in value.items()})
            else:
                flat[key] = value
        return flat
