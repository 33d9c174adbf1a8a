"""Training the classifier on a snapshot manifest -> TrainResult.

Fine-tuning (`train.approach: fine_tune`) has two phases: `head` warms up the new head with
the pretrained backbone frozen, then `fine-tune` trains the last block(s) at a low learning
rate. From scratch (`weights: none`, and the `convnet` approach) there is nothing to warm up
against, so only the second phase runs, over every layer. Feature extraction trains the
head alone, with the backbone frozen throughout. The best
epoch by validation ROC AUC, across both phases, is the model returned. With
`ensemble_size` > 1 that many models are trained this way, one after another, each from
its own seed, and served as one model answering their mean probability.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from pipelines.dataset.tfdata import (
    IMAGE_INPUT,
    Batches,
    LabelledFiles,
    evaluation_batches,
    labelled_files,
    training_batches,
)
from pipelines.durations import duration
from pipelines.training.config import TrainConfig, TrainingDataError
from pipelines.training.feature_cache import CacheUse, FeatureCache, backbone_identity
from pipelines.training.model import (
    FEATURES_NAME,
    POOLED_NAME,
    LearningRate,
    build_classifier,
    classifier_name,
    compile_classifier,
    dtype_policy,
    ensemble_classifier,
    feature_extractor,
    float32_copy,
    freeze_base,
    member_name,
    phase_learning_rate,
    resolve_weights,
    serving_classifier,
    set_trained_part,
    unfreeze_from,
    with_diagnosis_head,
)
from pipelines.training.warm_start import WarmStart, shrink_and_perturb

BEST_WEIGHTS_FILE = "best.weights.h5"
MONITOR = "val_auc"


SHOWN_METRICS = ("loss", "auc", "val_loss", "val_auc", "val_recall")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # counted across both phases, from 1 (from 1 again for each member)
    phase: str
    metrics: dict[str, float]
    seconds: float
    images: int  # training images seen (oversampled copies included)
    member: int = 1  # which model of an ensemble, from 1
    members: int = 1  # train.ensemble_size
    planned: int = 0  # the member's epochs in all (early stopping may end it sooner)
    seconds_left: float | None = None  # at most, at the member's pace so far

    def line(self, shown: tuple[str, ...] = SHOWN_METRICS) -> str:
        """One line of progress, e.g. for a terminal or a flow run's log."""
        values = "  ".join(f"{key} {self.metrics[key]:.4f}" for key in shown if key in self.metrics)
        member = f"member {self.member}/{self.members} " if self.members > 1 else ""
        of = f"/{self.planned}" if self.planned else ""
        left = (
            f", at most {duration(self.seconds_left)} left" if self.seconds_left is not None else ""
        )
        return (
            f"{member}epoch {self.epoch:>3}{of} {self.phase:<9} {values}  "
            f"({self.seconds:.1f} s{left})"
        )


@dataclass(frozen=True)
class Hardware:
    precision: str  # float32 or mixed_float16
    gpus: int
    replicas: int


@dataclass
class TrainResult:
    model: keras.Model  # float32, best epoch's weights, as served (train.test_time_augmentation)
    config: TrainConfig
    hardware: Hardware
    class_weight: dict[int, float] | None = None
    history: list[EpochRecord] = field(default_factory=list)
    ensemble_val_auc: float | None = None  # the served ensemble's; None for one model
    cache_use: CacheUse | None = None  # feature extraction: features read and computed

    @property
    def best(self) -> EpochRecord:
        """The best epoch (of the best member, in an ensemble)."""
        return _best_of(self.history)

    def member_bests(self) -> list[EpochRecord]:
        """Each member's best epoch, the one it is served with, in member order."""
        members = sorted({record.member for record in self.history})
        return [
            _best_of([record for record in self.history if record.member == member])
            for member in members
        ]

    @property
    def training_images_per_second(self) -> float:
        """Over whole epochs (validation included), as a scheduler sees them."""
        seconds = sum(record.seconds for record in self.history)
        return sum(record.images for record in self.history) / seconds if seconds else 0.0


def _best_of(history: Sequence[EpochRecord]) -> EpochRecord:
    return max(history, key=lambda record: record.metrics.get(MONITOR, float("-inf")))


OnEpoch = Callable[[EpochRecord], None]


@dataclass(frozen=True)
class _Data:
    """What every member of a run trains and is validated on."""

    train: LabelledFiles
    val: Batches
    class_weight: dict[int, float] | None
    val_files: LabelledFiles | None = None
    sha256: Mapping[str, str] = field(default_factory=dict)  # image file -> its digest
    feature_cache: Path | None = None  # feature extraction's cache folder


def train_classifier(
    manifest: pd.DataFrame,
    data_dir: Path,
    config: TrainConfig,
    *,
    work_dir: Path,
    on_epoch: OnEpoch | None = None,
    warm_start: WarmStart | None = None,
    feature_cache: Path | None = None,
) -> TrainResult:
    """Train the classifier on the train split, choosing the best epoch on val; with
    `train.ensemble_size` > 1, that many, each from its own seed, served as one. With
    `warm_start`, the classifier starts from the champion's weights, shrunk and perturbed,
    and trains for `train.warm_epochs` (its head needs no warm-up). Feature extraction
    keeps the backbone's features in `feature_cache` (default: under `work_dir`)."""
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    train_files = labelled_files(manifest, data_dir, "train")
    val_files = labelled_files(manifest, data_dir, "val")
    _check_trainable(train_files, val_files)
    hardware = _hardware(config)
    data = _Data(
        train=train_files,
        val=evaluation_batches(
            val_files,
            image_size=config.image_size,
            batch_size=_global_batch(config, hardware),
            cache=config.cache,
            name="val",
            diagnosis=config.learns_diagnosis,
        ),
        class_weight=_class_weight(config, train_files),
        val_files=val_files,
        sha256=_image_digests(manifest, data_dir) if config.caches_features else {},
        feature_cache=feature_cache or work_dir / "feature-cache",
    )
    history: list[EpochRecord] = []
    uses: list[CacheUse] = []
    members = [
        _train_member(index, config, hardware, data, history, work_dir, on_epoch, warm_start, uses)
        for index in range(config.ensemble_size)
    ]
    cache_use = (
        CacheUse(sum(u.cached for u in uses), sum(u.computed for u in uses)) if uses else None
    )
    served = serving_classifier(ensemble_classifier(members), config)
    result = TrainResult(served, config, hardware, data.class_weight, history, cache_use=cache_use)
    if len(members) > 1:
        result.ensemble_val_auc = _roc_auc(served, data.val)
    return result


def _train_member(
    index: int,
    config: TrainConfig,
    hardware: Hardware,
    data: _Data,
    history: list[EpochRecord],
    work_dir: Path,
    on_epoch: OnEpoch | None,
    warm_start: WarmStart | None = None,
    cache_uses: list[CacheUse] | None = None,
) -> keras.Model:
    """Train one model (member `index` of an ensemble) through its phases; return it, in
    float32, with its best epoch's weights."""
    member = config.member(index)
    # A long-lived process (a worker, the demo) trains week after week: without this, each
    # new model is built and traced beside every earlier one, and training slows down.
    keras.backend.clear_session()
    keras.utils.set_random_seed(member.seed)
    strategy = _strategy(hardware)
    architecture = config.architecture
    name = (
        classifier_name(architecture)
        if config.ensemble_size == 1
        else member_name(index, architecture)
    )
    with dtype_policy(hardware.precision), strategy.scope():
        model = _initialised(member, name, warm_start)
        # What is trained: the classifier itself, or it with the diagnosis head beside.
        trained = with_diagnosis_head(model, member) if member.learns_diagnosis else model
    if member.caches_features:
        with dtype_policy(hardware.precision), strategy.scope():
            trained, train_batches, data, use = _on_cached_features(model, member, data,
                                                                    hardware)  # fmt: skip
        if cache_uses is not None:
            cache_uses.append(use)
    else:
        train_batches = _training_batches(data.train, member, hardware)
    if config.ensemble_size > 1:
        work_dir = work_dir / f"member-{index + 1}"
    best_file = work_dir / BEST_WEIGHTS_FILE
    work_dir.mkdir(parents=True, exist_ok=True)
    best_file.unlink(missing_ok=True)
    recorder = _EpochRecorder(
        history, train_batches.images, on_epoch, member=index + 1, members=config.ensemble_size
    )
    recorder.planned = sum(epochs for _, epochs, _ in _phases(member, warm=warm_start is not None))
    best: float | None = None
    for phase, epochs, learning_rate in _phases(member, warm=warm_start is not None):
        with strategy.scope():
            rate = phase_learning_rate(learning_rate, epochs, train_batches.steps, member)
            _prepare_phase(trained, phase, rate, member)
        recorder.phase = phase
        best = _fit_phase(
            trained,
            _Phase(member, epochs, recorder.epochs_done, best_file, best),
            train_batches,
            data,
            [recorder],
        )
    if best_file.exists():
        trained.load_weights(best_file)
    return float32_copy(model, member) if hardware.precision != "float32" else model


def _initialised(config: TrainConfig, name: str, warm_start: WarmStart | None) -> keras.Model:
    """The classifier before training: from the base weights, or from the champion's."""
    if warm_start is None:
        return build_classifier(config, resolve_weights(config), name=name)
    model = build_classifier(config, None, name=name)  # fresh: the perturbation's source
    # Only what the run trains is shrunk and perturbed: a frozen part stays the champion's
    # (for feature extraction, the backbone its cached features belong to).
    set_trained_part(model, config)
    shrink_and_perturb(model, warm_start.classifier, shrink=config.shrink, perturb=config.perturb)
    return model


def _roc_auc(model: keras.Model, batches: Batches) -> float:
    from sklearn.metrics import roc_auc_score

    labels = np.concatenate([np.asarray(y) for _, y in batches.dataset.as_numpy_iterator()])
    images = batches.dataset.map(
        lambda inputs, _: inputs[IMAGE_INPUT] if isinstance(inputs, dict) else inputs
    )
    probabilities = model.predict(images, verbose=0)
    return float(roc_auc_score(labels.ravel(), np.asarray(probabilities).ravel()))


def _image_digests(manifest: pd.DataFrame, data_dir: Path) -> dict[str, str]:
    """Each image file's sha256: the manifest's (a snapshot records them), or read."""
    files = [str(data_dir / path) for path in manifest["path"]]
    if "sha256" in manifest:
        return dict(zip(files, manifest["sha256"].astype(str), strict=True))
    return {file: hashlib.sha256(Path(file).read_bytes()).hexdigest() for file in files}


def feature_cache_identity(model: keras.Model, image_size: int, precision: str) -> str:
    """The identity a classifier's backbone keeps its features under, computed at
    `precision` (mixed precision gives other features than float32)."""
    base = feature_extractor(model)
    weights = [weight.numpy() for weight in base.weights]
    return backbone_identity(f"{base.name}@{precision}", image_size, weights)


def _on_cached_features(
    model: keras.Model, config: TrainConfig, data: _Data, hardware: Hardware
) -> tuple[keras.Model, Batches, _Data, CacheUse]:
    """Feature extraction on cached features: the model trained is the classifier's head
    alone (its own layers, so training it trains the classifier), fed the frozen
    backbone's features of each image, computed only for images the cache lacks."""
    assert data.feature_cache is not None and data.val_files is not None
    freeze_base(model)
    pooled = model.get_layer(POOLED_NAME).output
    extractor = keras.Model(model.input, pooled, name="features")
    features = keras.Input(shape=(int(pooled.shape[-1]),), name="pooled_features")
    dropped = model.get_layer(FEATURES_NAME)(features)
    head = keras.Model(features, model.get_layer("melanoma")(dropped), name=f"{model.name}_head")
    identity = feature_cache_identity(model, config.image_size, hardware.precision)
    cache = FeatureCache(data.feature_cache, identity)
    batch = _global_batch(config, hardware)

    def extract(files: Sequence[str]) -> np.ndarray:
        unlabelled = LabelledFiles(tuple(files), np.zeros(len(files), np.float32),
                                   np.zeros(len(files), np.int64))  # fmt: skip
        batches = evaluation_batches(unlabelled, image_size=config.image_size,
                                     batch_size=batch, cache="none", name="features")  # fmt: skip
        return np.asarray(extractor.predict(batches.dataset.map(lambda x, _: x), verbose=0))

    train_x, train_use = cache.features([data.sha256[f] for f in data.train.files],
                                        data.train.files, extract)  # fmt: skip
    val_x, val_use = cache.features([data.sha256[f] for f in data.val_files.files],
                                    data.val_files.files, extract)  # fmt: skip
    train = tf.data.Dataset.from_tensor_slices((train_x, data.train.labels[:, None]))
    train = train.shuffle(len(train_x), seed=config.seed, reshuffle_each_iteration=True)
    val = tf.data.Dataset.from_tensor_slices((val_x, data.val_files.labels[:, None]))
    use = CacheUse(train_use.cached + val_use.cached, train_use.computed + val_use.computed)
    return (
        head,
        Batches(train.batch(batch).prefetch(2), len(train_x), -(-len(train_x) // batch)),
        replace(data, val=Batches(val.batch(batch), len(val_x), -(-len(val_x) // batch))),
        use,
    )


def _prepare_phase(
    model: keras.Model, phase: str, learning_rate: LearningRate, config: TrainConfig
) -> None:
    # On cached features the head alone is trained: the backbone it was cut from is frozen.
    if phase == "head" and not config.caches_features:
        freeze_base(model)
    elif phase != "head":
        unfreeze_from(model, config)
    compile_classifier(
        model,
        learning_rate,
        config.threshold,
        weight_decay=config.weight_decay,
        ema_momentum=config.ema_momentum,
        gradient_clip_norm=config.gradient_clip_norm,
    )


def _class_weight(config: TrainConfig, train: LabelledFiles) -> dict[int, float] | None:
    return balanced_class_weight(train.labels) if config.imbalance == "class_weight" else None


def _check_trainable(train: LabelledFiles, val: LabelledFiles) -> None:
    if len(val) == 0:
        raise TrainingDataError(
            "the snapshot has no validation images: the best epoch cannot be chosen; "
            "register more lesions"
        )
    for name, files in (("train", train), ("val", val)):
        if files.melanoma == 0 or files.melanoma == len(files):
            raise TrainingDataError(
                f"the {name} split has {files.melanoma} melanoma among {len(files)} images: "
                "both classes are needed to learn and to measure ROC AUC"
            )


def balanced_class_weight(labels: np.ndarray) -> dict[int, float]:
    """Weights that make both classes count equally in the loss: n / (2 * n_class)."""
    total = len(labels)
    melanoma = float(np.sum(labels))
    return {0: total / (2 * (total - melanoma)), 1: total / (2 * melanoma)}


def _phases(config: TrainConfig, *, warm: bool = False) -> Iterator[tuple[str, int, float]]:
    """(phase, epochs, learning rate): the head alone with the backbone frozen (all of
    feature extraction), then fine-tuning; a warm start continues the champion's last."""
    if config.approach == "feature_extraction":
        epochs = config.warm_epochs if warm else config.head_epochs + config.epochs
        yield "head", epochs, config.head_learning_rate
        return
    if warm:
        yield "fine-tune", config.warm_epochs, config.learning_rate
        return
    if config.pretrained and config.head_epochs > 0:
        yield "head", config.head_epochs, config.head_learning_rate
    if config.epochs > 0:
        yield "fine-tune", config.epochs, config.learning_rate


@dataclass(frozen=True)
class _Phase:
    config: TrainConfig  # the member's
    epochs: int
    done: int  # the member's epochs before this phase
    best_file: Path
    best: float | None  # the member's best val ROC AUC before this phase


def _fit_phase(
    model: keras.Model,
    phase: _Phase,
    train: Batches,
    data: _Data,
    callbacks: list[keras.callbacks.Callback],
) -> float | None:
    """Run one phase; return the best val ROC AUC so far (carried into the next phase so
    that the checkpoint only ever moves to a better epoch)."""
    config = phase.config
    checkpoint = keras.callbacks.ModelCheckpoint(
        phase.best_file,
        monitor=MONITOR,
        mode="max",
        save_best_only=True,
        save_weights_only=True,
        initial_value_threshold=phase.best,
    )
    stop = keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience)
    # The average is put in place before validation and before the checkpoint (hence
    # first), so the epoch is judged, kept and served as averaged weights.
    averaging = (
        [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.averages_weights else []
    )
    model.fit(
        train.dataset,
        validation_data=data.val.dataset,
        initial_epoch=phase.done,
        epochs=phase.done + phase.epochs,
        class_weight=data.class_weight,
        callbacks=[*averaging, checkpoint, stop, *callbacks],
        shuffle=False,  # the tf.data pipeline shuffles, reproducibly
        verbose=0,
    )
    return checkpoint.best if np.isfinite(checkpoint.best) else phase.best


class _EpochRecorder(keras.callbacks.Callback):
    """Keeps each epoch's metrics, time and images seen, and tells `on_epoch`."""

    def __init__(
        self,
        history: list[EpochRecord],
        images: int,
        on_epoch: OnEpoch | None,
        member: int = 1,
        members: int = 1,
    ) -> None:
        super().__init__()
        self.history = history
        self.images = images
        self.on_epoch = on_epoch
        self.member = member
        self.members = members
        self.phase = ""
        self.epochs_done = 0
        self.planned = 0
        self._started = 0.0
        self._seconds = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self._started
        self._seconds += seconds
        left = max(self.planned - (epoch + 1), 0) if self.planned else None
        record = EpochRecord(
            epoch=epoch + 1,
            phase=self.phase,
            metrics={key: float(value) for key, value in (logs or {}).items()},
            seconds=seconds,
            images=self.images,
            member=self.member,
            members=self.members,
            planned=self.planned,
            seconds_left=None if left is None else left * self._seconds / (epoch + 1),
        )
        self.history.append(record)
        self.epochs_done = record.epoch
        if self.on_epoch is not None:
            self.on_epoch(record)


def _hardware(config: TrainConfig) -> Hardware:
    gpus = len(tf.config.list_physical_devices("GPU"))
    mixed = config.mixed_precision == "on" or (config.mixed_precision == "auto" and gpus > 0)
    return Hardware(
        precision="mixed_float16" if mixed else "float32", gpus=gpus, replicas=max(1, gpus)
    )


def _strategy(hardware: Hardware) -> tf.distribute.Strategy:
    """One replica per GPU when there are several; the default strategy otherwise."""
    if hardware.gpus > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _global_batch(config: TrainConfig, hardware: Hardware) -> int:
    """`train.batch_size` is per replica, so each GPU sees the batch it was tuned for."""
    return config.batch_size * hardware.replicas


def _training_batches(files: LabelledFiles, config: TrainConfig, hardware: Hardware) -> Batches:
    return training_batches(
        files,
        image_size=config.image_size,
        batch_size=_global_batch(config, hardware),
        augmentation=config.augmentation,
        seed=config.seed,
        cache=config.cache,
        oversample=config.imbalance == "oversample",
        diagnosis=config.learns_diagnosis,
    )
