"""The melanoma classifier: raw RGB images in, the probability of melanoma out.

Resizing and the backbone's own `preprocess_input` live inside the model, so a clinical
system sends images as they are. A pretrained backbone is called with `training=False`: its
batch normalisation keeps ImageNet's statistics while its last block is fine-tuned (the
keras-io transfer-learning guide).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

import keras

from pipelines.dataset.tfdata import DIAGNOSIS_CLASSES, DIAGNOSIS_INPUT, IMAGE_INPUT
from pipelines.training.backbones import BACKBONES, CONVNET, Preprocessing, convnet
from pipelines.training.config import (
    ALL_LAYERS,
    IMAGENET,
    NO_WEIGHTS,
    TrainConfig,
    TrainConfigError,
)

FEATURES_NAME = "dropout"  # the pooled features (after dropout) that the heads read
POOLED_NAME = "pool"  # the backbone's pooled output: what feature extraction caches
CONVNET_DENSE_NAME = "convnet_dense"
SCRATCH_BATCH_NORM_MOMENTUM = 0.9
DIHEDRAL_VIEWS = 8  # the flips and quarter turns that leave a square image square


class WeightsUnavailable(TrainConfigError):
    """The backbone weights asked for cannot be had here; the message names the ways out."""


def classifier_name(architecture: str) -> str:
    """The classifier's Keras name: `melanoma_resnet50`, `melanoma_convnet`, ..."""
    return f"melanoma_{architecture}"


CLASSIFIER_NAMES = frozenset(classifier_name(name) for name in (*BACKBONES, CONVNET))


@keras.saving.register_keras_serializable(package="cme")
class BackbonePreprocessing(keras.layers.Layer):
    """A backbone's `preprocess_input` as a layer, from RGB 0..255: `caffe` (BGR with
    ImageNet's channel means removed), `tf` (scaled to -1..1) or `torch` (ImageNet's means
    and deviations)."""

    def __init__(self, mode: Preprocessing = "caffe", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        from keras.src.applications.imagenet_utils import preprocess_input

        return preprocess_input(inputs, mode=self.mode)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="cme")
class ResNet50Preprocessing(BackbonePreprocessing):
    """What classifiers logged before there were other backbones carry (caffe mode)."""


def resolve_weights(
    config: TrainConfig, imagenet_origin: str | None = None, cache_dir: str | None = None
) -> str | None:
    """The weights file to start the backbone from (downloaded once into Keras' cache,
    `~/.keras/models`, for `imagenet`), or None to start from scratch."""
    if config.weights == NO_WEIGHTS:
        return None
    backbone = config.base
    if config.weights == IMAGENET:
        imagenet = backbone.imagenet
        origin = imagenet_origin or imagenet.url
        try:
            return str(
                keras.utils.get_file(
                    imagenet.name,
                    origin,
                    cache_subdir="models",
                    file_hash=imagenet.md5,
                    cache_dir=cache_dir,
                )
            )
        except Exception as error:  # Keras wraps every network failure in a bare Exception
            scratch = (
                "" if config.approach == "feature_extraction"  # a frozen random backbone
                else ", or train from scratch with train.weights=none train.unfreeze_from=all"
            )  # fmt: skip
            raise WeightsUnavailable(
                f"ImageNet weights for {backbone.name} could not be downloaded from {origin} "
                f"({error}). Copy {imagenet.name} to this machine and set "
                f"train.weights=/path/to/it{scratch}"
            ) from None
    weights_file = config.weights_file
    if weights_file is None or not weights_file.is_file():
        raise WeightsUnavailable(
            f"train.weights={config.weights}: no such file. Give a {backbone.name} notop "
            "weights file (.h5 or .weights.h5), imagenet, or none"
        )
    return str(weights_file)


def build_classifier(
    config: TrainConfig, weights_file: str | None, name: str | None = None
) -> keras.Model:
    """The backbone (or the convnet), global pooling, dropout and one sigmoid unit, all
    under the current dtype policy except the input steps and the output, which stay
    float32."""
    size = config.image_size
    images = keras.Input(shape=(None, None, 3), dtype="float32", name=IMAGE_INPUT)
    resized = _resize_to(size)(images)
    if config.approach == CONVNET:
        base, inputs = convnet(size, config.convnet, config.seed), resized
    else:
        base, inputs = _backbone(config, weights_file), _preprocessing(config)(resized)
    if not config.pretrained:
        _follow_batch_statistics_faster(base)
    # From scratch there are no statistics to keep: batch normalisation must learn them.
    features = base(inputs, training=False if config.pretrained else None)
    pooled = keras.layers.GlobalAveragePooling2D(name=POOLED_NAME)(features)
    if config.approach == CONVNET:  # the article's dense layer before the output
        shape = config.convnet
        regulariser = keras.regularizers.L2(shape.l2) if shape.l2 > 0 else None
        pooled = keras.layers.Dense(shape.dense_units, activation="relu", name=CONVNET_DENSE_NAME,
                                    kernel_regularizer=regulariser)(pooled)  # fmt: skip
    dropped = keras.layers.Dropout(config.dropout, seed=config.seed, name=FEATURES_NAME)(pooled)
    probability = keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="melanoma")(
        dropped
    )
    return keras.Model(images, probability, name=name or classifier_name(config.architecture))


def _preprocessing(config: TrainConfig) -> keras.layers.Layer:
    mode = config.base.preprocessing
    kind = ResNet50Preprocessing if config.backbone == "resnet50" else BackbonePreprocessing
    return kind(mode, dtype="float32", name="preprocess")


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


def member_name(index: int, architecture: str = "resnet50") -> str:
    """The name of the ensemble's member `index` (from 0): unique within the ensemble."""
    return f"{classifier_name(architecture)}_member_{index + 1}"


def ensemble_classifier(members: Sequence[keras.Model]) -> keras.Model:
    """One model whose answer is the mean of its members' probabilities (each member takes
    raw images and resizes them itself). Members trained from different seeds make
    different mistakes, so their mean ranks lesions better than any one of them."""
    if len(members) == 1:
        return members[0]
    images = keras.Input(shape=(None, None, 3), dtype="float32", name=IMAGE_INPUT)
    probabilities = [member(images) for member in members]
    mean = keras.layers.Average(dtype="float32", name="mean_over_members")(probabilities)
    architecture = members[0].name.removeprefix(classifier_name("")).rsplit("_member_", 1)[0]
    return keras.Model(images, mean, name=f"{classifier_name(architecture)}_ensemble")


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


def _backbone(config: TrainConfig, weights_file: str | None) -> keras.Model:
    backbone = config.base
    size = config.image_size
    try:
        return backbone.build(size, weights_file)
    except ValueError as error:
        if weights_file is None:
            raise
        raise WeightsUnavailable(
            f"train.weights={weights_file}: not {backbone.name} notop weights ({error})"
        ) from None


def _follow_batch_statistics_faster(base: keras.Model) -> None:
    """From scratch, the weights move fast and a weekly set is small: with Keras' momentum
    of 0.99 the moving statistics that inference uses lag hundreds of steps behind the
    batches, and validation sees a different network from the one trained."""
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_BATCH_NORM_MOMENTUM


def feature_extractor(model: keras.Model) -> keras.Model:
    """The classifier's backbone (or convnet): the one model among its layers."""
    (base,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    return base


def freeze_base(model: keras.Model) -> None:
    """Warm-up, and feature extraction: only the head learns."""
    feature_extractor(model).trainable = False


def unfreeze_from(model: keras.Model, config: TrainConfig) -> None:
    """Fine-tuning: the block `train.unfreeze_from` names and every layer after it learn;
    `all`, and the convnet, train the whole base."""
    base = feature_extractor(model)
    base.trainable = True
    first = 0
    if config.approach != CONVNET and config.first_trained_block != ALL_LAYERS:
        names = [layer.name for layer in base.layers]
        first = config.base.first_layer_of(config.first_trained_block, names)
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


def trained_parameters(config: TrainConfig) -> int:
    """The parameters one classifier of `config` learns in its last phase: the head alone
    in feature extraction, the blocks from `train.unfreeze_from` on and the head in
    fine-tuning, everything in the convnet."""
    with dtype_policy("float32"):
        model = build_classifier(config, weights_file=None)
    set_trained_part(model, config)
    return trainable_weights(model)


def trains_head_only(config: TrainConfig) -> bool:
    """Feature extraction, and fine-tuning whose fine-tuning phase has no epochs."""
    fine_tunes = config.approach != "feature_extraction" and (
        config.epochs > 0 or not config.pretrained
    )
    return not fine_tunes


def set_trained_part(model: keras.Model, config: TrainConfig) -> None:
    """Make trainable what the run's last phase trains, and only that."""
    if trains_head_only(config):
        freeze_base(model)
    else:
        unfreeze_from(model, config)
