"""The melanoma classifier: raw RGB images in, the probability of melanoma out.

Resizing and ResNet50's own `preprocess_input` live inside the model, so a clinical system
sends images as they are. The pretrained base is called with `training=False`: its batch
normalisation keeps ImageNet's statistics while the last block is fine-tuned (the keras-io
transfer-learning guide).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import keras

from pipelines.dataset.tfdata import DIAGNOSIS_CLASSES, DIAGNOSIS_INPUT, IMAGE_INPUT
from pipelines.training.config import (
    ALL_LAYERS,
    IMAGENET,
    NO_WEIGHTS,
    TrainConfig,
    TrainConfigError,
)

IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{IMAGENET_NOTOP_FILE}"
)
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
BASE_NAME = "resnet50"
CLASSIFIER_NAME = "melanoma_resnet50"
FEATURES_NAME = "dropout"  # the pooled features (after dropout) that the heads read
SCRATCH_BATCH_NORM_MOMENTUM = 0.9
DIHEDRAL_VIEWS = 8  # the flips and quarter turns that leave a square image square


class WeightsUnavailable(TrainConfigError):
    """The ResNet50 weights asked for cannot be had here; the message names the ways out."""


@keras.saving.register_keras_serializable(package="cme")
class ResNet50Preprocessing(keras.layers.Layer):
    """`keras.applications.resnet50.preprocess_input` as a layer: RGB 0..255 to BGR with
    ImageNet's channel means removed."""

    def call(self, inputs: Any) -> Any:
        return keras.applications.resnet50.preprocess_input(inputs)


def resolve_weights(
    config: TrainConfig, imagenet_origin: str = IMAGENET_NOTOP_URL, cache_dir: str | None = None
) -> str | None:
    """The weights file to start ResNet50 from (downloaded once into Keras' cache,
    `~/.keras/models`, for `imagenet`), or None to start from scratch."""
    if config.weights == NO_WEIGHTS:
        return None
    if config.weights == IMAGENET:
        try:
            return str(
                keras.utils.get_file(
                    IMAGENET_NOTOP_FILE,
                    imagenet_origin,
                    cache_subdir="models",
                    file_hash=IMAGENET_NOTOP_MD5,
                    cache_dir=cache_dir,
                )
            )
        except Exception as error:  # Keras wraps every network failure in a bare Exception
            raise WeightsUnavailable(
                f"ImageNet weights for ResNet50 could not be downloaded from {imagenet_origin} "
                f"({error}). Either copy {IMAGENET_NOTOP_FILE} to this machine and set "
                "train.weights=/path/to/it, or train from scratch with train.weights=none "
                "train.unfreeze_from=all"
            ) from None
    weights_file = config.weights_file
    if weights_file is None or not weights_file.is_file():
        raise WeightsUnavailable(
            f"train.weights={config.weights}: no such file. Give a ResNet50 notop weights "
            "file (.h5 or .weights.h5), imagenet, or none"
        )
    return str(weights_file)


def build_classifier(
    config: TrainConfig, weights_file: str | None, name: str = CLASSIFIER_NAME
) -> keras.Model:
    """ResNet50 base, global pooling, dropout and one sigmoid unit, all under the current
    dtype policy except the input steps and the output, which stay float32."""
    size = config.image_size
    images = keras.Input(shape=(None, None, 3), dtype="float32", name=IMAGE_INPUT)
    resized = _resize_to(size)(images)
    preprocessed = ResNet50Preprocessing(dtype="float32", name="preprocess")(resized)
    base = _resnet50(size, weights_file)
    if not config.pretrained:
        _follow_batch_statistics_faster(base)
    # From scratch there are no statistics to keep: batch normalisation must learn them.
    features = base(preprocessed, training=False if config.pretrained else None)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    dropped = keras.layers.Dropout(config.dropout, seed=config.seed, name=FEATURES_NAME)(pooled)
    probability = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="melanoma")(
        dropped
    )
    return keras.Model(images, probability, name=name)


@keras.saving.register_keras_serializable(package="cme")
class DiagnosisLoss(keras.layers.Layer):
    """Adds the diagnosis head's cross-entropy, times `weight`, to the training loss, and
    passes the melanoma probability through unchanged: the head is trained with the model
    but takes no part in its answer."""

    def __init__(self, weight: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weight = weight

    def call(self, inputs: Sequence[Any]) -> Any:
        melanoma, diagnosis_probabilities, diagnosis = inputs
        cross_entropy = keras.losses.sparse_categorical_crossentropy(
            diagnosis, diagnosis_probabilities
        )
        self.add_loss(self.weight * keras.ops.mean(cross_entropy))
        return melanoma

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weight": self.weight}


def with_diagnosis_head(classifier: keras.Model, config: TrainConfig) -> keras.Model:
    """The model trained when `train.diagnosis_weight` > 0: the classifier plus a softmax
    head over the seven diagnoses (nevus, keratosis, carcinoma, ...) on the same pooled
    features. From scratch, one melanoma bit per image is a thin signal; which of seven
    lesions an image shows gives the features more to learn from. It shares the
    classifier's layers, so training it trains the classifier, which is served alone."""
    features = classifier.get_layer(FEATURES_NAME).output
    probabilities = keras.layers.Dense(
        len(DIAGNOSIS_CLASSES), activation="softmax", dtype="float32", name="diagnosis_head"
    )(features)
    diagnosis = keras.Input(shape=(), dtype="int32", name=DIAGNOSIS_INPUT)
    melanoma = DiagnosisLoss(config.diagnosis_weight, dtype="float32", name="diagnosis_loss")(
        [classifier.output, probabilities, diagnosis]
    )
    return keras.Model(
        {IMAGE_INPUT: classifier.input, DIAGNOSIS_INPUT: diagnosis},
        melanoma,
        name=f"{classifier.name}_with_diagnosis",
    )


def member_name(index: int) -> str:
    """The name of the ensemble's member `index` (from 0): unique within the ensemble."""
    return f"{CLASSIFIER_NAME}_member_{index + 1}"


def ensemble_classifier(members: Sequence[keras.Model]) -> keras.Model:
    """One model whose answer is the mean of its members' probabilities (each member takes
    raw images and resizes them itself). Members trained from different seeds make
    different mistakes, so their mean ranks lesions better than any one of them."""
    if len(members) == 1:
        return members[0]
    images = keras.Input(shape=(None, None, 3), dtype="float32", name=IMAGE_INPUT)
    probabilities = [member(images) for member in members]
    mean = keras.layers.Average(dtype="float32", name="mean_over_members")(probabilities)
    return keras.Model(images, mean, name=f"{CLASSIFIER_NAME}_ensemble")


@keras.saving.register_keras_serializable(package="cme")
class DihedralView(keras.layers.Layer):
    """One of the 8 orientations of a square image: `view` 0..7 picks a transpose (bit 0),
    an upside-down flip (bit 1) and a left-right flip (bit 2); together they are every
    flip and quarter turn."""

    def __init__(self, view: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= view < DIHEDRAL_VIEWS:
            raise ValueError(f"view must be 0..{DIHEDRAL_VIEWS - 1}, got {view}")
        self.view = view

    def call(self, images: Any) -> Any:
        if self.view & 1:
            images = keras.ops.transpose(images, (0, 2, 1, 3))
        if self.view & 2:
            images = keras.ops.flip(images, axis=1)
        if self.view & 4:
            images = keras.ops.flip(images, axis=2)
        return images

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "view": self.view}


def serving_classifier(classifier: keras.Model, config: TrainConfig) -> keras.Model:
    """The model that is logged and served. With `test_time_augmentation: dihedral` it is
    the mean probability over the 8 orientations of the image (a lesion has no up or down,
    and averaging steadies the answer), at 8 times the inference cost."""
    if config.test_time_augmentation == "none":
        return classifier
    images = keras.Input(shape=(None, None, 3), dtype="float32", name=IMAGE_INPUT)
    # Resized once here, so that a large photograph is not resized again for each view.
    square = _resize_to(config.image_size)(images)
    probabilities = [
        classifier(DihedralView(view, dtype="float32", name=f"view_{view}")(square))
        for view in range(DIHEDRAL_VIEWS)
    ]
    mean = keras.layers.Average(dtype="float32", name="mean_over_views")(probabilities)
    return keras.Model(images, mean, name=f"{classifier.name}_dihedral")


def _resize_to(size: int) -> keras.layers.Layer:
    return keras.layers.Resizing(size, size, antialias=True, dtype="float32", name="resize")


def _resnet50(size: int, weights_file: str | None) -> keras.Model:
    try:
        return keras.applications.ResNet50(
            include_top=False, weights=weights_file, input_shape=(size, size, 3), name=BASE_NAME
        )
    except ValueError as error:
        raise WeightsUnavailable(
            f"train.weights={weights_file}: not ResNet50 notop weights ({error})"
        ) from None


def _follow_batch_statistics_faster(base: keras.Model) -> None:
    """From scratch, the weights move fast and a weekly set is small: with Keras' momentum
    of 0.99 the moving statistics that inference uses lag hundreds of steps behind the
    batches, and validation sees a different network from the one trained."""
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BATCH_NORM_MOMENTUM


def resnet_base(model: keras.Model) -> keras.Model:
    base = model.get_layer(BASE_NAME)
    assert isinstance(base, keras.Model)
    return base


def freeze_base(model: keras.Model) -> None:
    """Warm-up: only the head learns."""
    resnet_base(model).trainable = False


def unfreeze_from(model: keras.Model, block: str) -> None:
    """Fine-tuning: `block` (conv1..conv5) and every layer after it learn; `all` trains
    the whole base."""
    base = resnet_base(model)
    base.trainable = True
    first = 0
    if block != ALL_LAYERS:
        prefix = f"{block}_"
        first = next(i for i, layer in enumerate(base.layers) if layer.name.startswith(prefix))
    # Each layer is set, since Keras does not undo an earlier freeze of a sublayer.
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= first


LearningRate: TypeAlias = float | keras.optimizers.schedules.LearningRateSchedule


def phase_learning_rate(
    peak: float, epochs: int, steps_per_epoch: int, config: TrainConfig
) -> LearningRate:
    """The learning rate over one phase: constant, or a cosine decay from `peak` to 0
    after `warmup_epochs` of linear rise (from scratch, a high constant rate keeps
    validation swinging from epoch to epoch; annealing lets the weights settle)."""
    if config.schedule == "constant":
        return peak
    warmup_steps = min(config.warmup_epochs, epochs - 1) * steps_per_epoch
    decay_steps = max(1, epochs * steps_per_epoch - warmup_steps)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(peak, decay_steps)
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps, warmup_target=peak, warmup_steps=warmup_steps
    )


def compile_classifier(
    model: keras.Model,
    learning_rate: LearningRate,
    threshold: float,
    jit_compile: bool | str = False,
    weight_decay: float = 0.0,
    ema_momentum: float = 0.0,
    gradient_clip_norm: float = 0.0,
) -> None:
    """`ema_momentum` > 0 makes the optimizer keep an exponential moving average of the
    weights (swapped in for validation by `keras.callbacks.SwapEMAWeights`).
    `gradient_clip_norm` > 0 rescales a step's gradients whose global norm exceeds it, so
    one unusual batch cannot throw the weights far (Adam alone scales a spike down only by
    the gradients' running size)."""
    options: dict[str, Any] = {}
    if ema_momentum > 0:
        options |= {"use_ema": True, "ema_momentum": ema_momentum}
    if gradient_clip_norm > 0:
        options["global_clipnorm"] = gradient_clip_norm
    optimizer = (
        keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **options)
        if weight_decay > 0
        else keras.optimizers.Adam(learning_rate, **options)
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.BinaryCrossentropy(),
        metrics=[
            keras.metrics.AUC(name="auc"),
            keras.metrics.AUC(curve="PR", name="pr_auc"),
            keras.metrics.BinaryAccuracy(threshold=threshold, name="accuracy"),
            keras.metrics.Precision(thresholds=threshold, name="precision"),
            keras.metrics.Recall(thresholds=threshold, name="recall"),
        ],
        jit_compile=jit_compile,
    )


def float32_copy(model: keras.Model, config: TrainConfig) -> keras.Model:
    """The same classifier with every layer in float32, for CPU serving after a
    mixed-precision run (whose variables are float32 already)."""
    with dtype_policy("float32"):
        twin = build_classifier(config, weights_file=None, name=model.name)
    twin.set_weights(model.get_weights())
    return twin


@contextmanager
def dtype_policy(name: str) -> Iterator[str]:
    """Set Keras' global dtype policy for the duration of a block."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)


def trainable_weights(model: keras.Model) -> int:
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)
