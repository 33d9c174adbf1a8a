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

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
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
from pipelines.training.model import (
    LearningRate,
    build_classifier,
    classifier_name,
    compile_classifier,
    dtype_policy,
    ensemble_classifier,
    float32_copy,
    freeze_base,
    member_name,
    phase_learning_rate,
    resolve_weights,
    serving_classifier,
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


def train_classifier(
    manifest: pd.DataFrame,
    data_dir: Path,
    config: TrainConfig,
    *,
    work_dir: Path,
    on_epoch: OnEpoch | None = None,
    warm_start: WarmStart | None = None,
) -> TrainResult:
    """Fine-tune a ResNet50 classifier on the train split, choosing the best epoch on val;
    with `train.ensemble_size` > 1, that many, each from its own seed, served as one. With
    `warm_start`, the classifier starts from the champion's weights, shrunk and perturbed,
    and trains for `train.warm_epochs` (its head needs no warm-up)."""
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
    )
    history: list[EpochRecord] = []
    members = [
        _train_member(index, config, hardware, data, history, work_dir, on_epoch, warm_start)
        for index in range(config.ensemble_size)
    ]
    served = serving_classifier(ensemble_classifier(members), config)
    result = TrainResult(served, config, hardware, data.class_weight, history)
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


def _prepare_phase(
    model: keras.Model, phase: str, learning_rate: LearningRate, config: TrainConfig
) -> None:
    if phase == "head":
        freeze_base(model)
    else:
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
        yield (
            "head",
            config.warm_epochs if warm else config.head_epochs + config.epochs,
            (config.head_learning_rate),
        )
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
