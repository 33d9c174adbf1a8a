"""Continued education: a challenger that starts from the champion's weights.

A network trained further from its earlier weights is known to generalise worse than one
trained afresh on the same data, unless the weights are first shrunk toward zero and lightly
perturbed (Ash and Adams, "On Warm-Starting Neural Network Training", NeurIPS 2020):
each trainable weight becomes `shrink * champion + perturb * fresh`, where `fresh` is a newly
initialised network of the same architecture. Batch normalisation's moving statistics are
measurements of the data, not learnt weights: they are kept as the champion had them.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from pipelines.training.config import TrainConfig
from pipelines.training.model import CLASSIFIER_NAMES, build_classifier, classifier_name


@dataclass(frozen=True)
class WarmStart:
    """The champion a challenger starts from, and what the run records about it."""

    source: str  # e.g. "melanoma-resnet50 version 3"
    classifier: keras.Model  # the champion's classifier (one image in, one probability out)


def champion_classifier(served: keras.Model) -> keras.Model | None:
    """The classifier inside a served model: the model itself, or the one a test-time
    augmentation wraps; None for an ensemble, whose members have no one set of weights."""
    if served.name in CLASSIFIER_NAMES:
        return served
    inner = [layer for layer in served.layers if layer.name in CLASSIFIER_NAMES]
    return inner[0] if len(inner) == 1 and isinstance(inner[0], keras.Model) else None


def why_not_warm(
    champion: keras.Model | None, config: TrainConfig, champion_approach: str = "fine_tune"
) -> str | None:
    """Why the challenger of `config` cannot start from `champion` (trained by
    `champion_approach`), or None when it can."""
    if champion is None:
        return "the champion is an ensemble: it has no one set of weights to start from"
    if config.ensemble_size > 1:
        return f"train.ensemble_size={config.ensemble_size} trains each member from its own seed"
    if champion.name != classifier_name(config.architecture):
        theirs = champion.name.removeprefix(classifier_name(""))
        return f"the champion is a {theirs}, this run's backbone is {config.architecture}"
    if champion_approach != config.approach:
        return f"the champion was trained by {champion_approach}, this run by {config.approach}"
    size = classifier_image_size(champion)
    if size != config.image_size:
        return f"the champion reads {size} px images, this run {config.image_size} px"
    theirs = [tuple(w.shape) for w in champion.weights]
    ours = [tuple(w.shape) for w in build_classifier(config, None).weights]
    if theirs != ours:
        return (
            f"the champion's architecture differs ({len(theirs)} weight tensors against "
            f"{len(ours)}, or of other shapes): another head or backbone"
        )
    return None


def classifier_image_size(classifier: keras.Model) -> int:
    return int(classifier.get_layer("resize").height)


def shrink_and_perturb(
    model: keras.Model, champion: keras.Model, *, shrink: float, perturb: float
) -> None:
    """Give `model`, freshly initialised, the champion's weights shrunk by `shrink` plus its
    own fresh weights times `perturb` (every trainable weight), and the champion's batch
    statistics as they are."""
    trainable = {id(weight) for weight in model.trainable_weights}
    for weight, learnt in zip(model.weights, champion.weights, strict=True):
        value = np.asarray(learnt.numpy())
        if id(weight) in trainable:
            value = shrink * value + perturb * np.asarray(weight.numpy())
        weight.assign(value.astype(weight.dtype))
