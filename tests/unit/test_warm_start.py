"""Continued education: the challenger starts from exactly the champion's weights, shrunk and
perturbed as asked, and refuses a champion it cannot take weights from, saying why."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipelines.training.config import TrainConfig, TrainConfigError
from pipelines.training.model import (
    build_classifier,
    feature_extractor,
    serving_classifier,
    set_trained_part,
)
from pipelines.training.warm_start import (
    champion_classifier,
    shrink_and_perturb,
    why_not_warm,
)

SIZE = 32


def config(**changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "image_size": SIZE,
        "weights": "none",
        "unfreeze_from": "all",
        "dropout": 0.0,
    }
    return TrainConfig(**(values | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def champion() -> keras.Model:
    keras.utils.set_random_seed(1)
    model = build_classifier(config(), None)
    # Batch statistics as a trained model has them, not the fresh 0 and 1.
    for weight in model.non_trainable_weights:
        weight.assign(np.random.default_rng(2).uniform(0.5, 2.0, weight.shape).astype("float32"))
    return model


def fresh(seed: int = 7) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_classifier(config(), None)


def test_without_shrink_or_perturbation_the_challenger_is_the_champion(champion):
    challenger = fresh()
    shrink_and_perturb(challenger, champion, shrink=1.0, perturb=0.0)
    for ours, theirs in zip(challenger.weights, champion.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    images = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(challenger(images), champion(images), rtol=1e-6)


def test_learnt_weights_are_shrunk_and_perturbed_and_batch_statistics_kept(champion):
    challenger = fresh()
    before = [weight.numpy().copy() for weight in challenger.weights]
    shrink_and_perturb(challenger, champion, shrink=0.4, perturb=0.1)
    trainable = {id(weight) for weight in challenger.trainable_weights}
    moving = 0
    for weight, initial, learnt in zip(challenger.weights, before, champion.weights, strict=True):
        if id(weight) in trainable:
            expected = 0.4 * learnt.numpy() + 0.1 * initial
        else:
            expected = learnt.numpy()
            moving += 1
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert moving > 100  # every batch normalisation's moving mean and variance


def test_the_classifier_inside_a_served_model_is_found(champion):
    dihedral = serving_classifier(champion, config(test_time_augmentation="dihedral"))
    assert champion_classifier(dihedral) is not None
    assert champion_classifier(champion) is champion
    lone = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Dense(1)], name="other")
    assert champion_classifier(lone) is None


def test_a_champion_of_another_architecture_is_refused_with_the_reason(champion):
    assert why_not_warm(champion, config()) is None
    assert why_not_warm(champion, config(image_size=48)) == (
        "the champion reads 32 px images, this run 48 px"
    )
    assert "ensemble" in str(why_not_warm(None, config()))
    assert "own seed" in str(why_not_warm(champion, config(ensemble_size=2)))


def test_a_champion_of_another_backbone_or_approach_is_refused_with_the_reason(champion):
    assert why_not_warm(champion, config(backbone="vgg16")) == (
        "the champion is a resnet50, this run's backbone is vgg16"
    )
    assert why_not_warm(champion, config(approach="convnet", unfreeze_from="last")) == (
        "the champion is a resnet50, this run's backbone is convnet"
    )
    extracted = config(weights="imagenet", unfreeze_from="last", approach="feature_extraction")
    assert why_not_warm(champion, extracted, champion_approach="fine_tune") == (
        "the champion was trained by fine_tune, this run by feature_extraction"
    )
    convnet = config(approach="convnet")
    keras.utils.set_random_seed(2)
    assert why_not_warm(build_classifier(convnet, None), convnet, "convnet") is None


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"shrink": 0.0}, "train.shrink"), ({"perturb": -1.0}, "train.perturb"),
     ({"warm_epochs": 0}, "train.warm_epochs")],
)  # fmt: skip
def test_impossible_warm_start_settings_are_refused(changes, named):
    with pytest.raises(TrainConfigError, match=named):
        config(**changes)


def test_only_what_the_run_trains_is_shrunk_a_frozen_backbone_stays_the_champions(champion):
    extraction = config(weights="backbone.weights.h5", unfreeze_from="last",
                        approach="feature_extraction")  # fmt: skip
    challenger = fresh()
    set_trained_part(challenger, extraction)
    shrink_and_perturb(challenger, champion, shrink=0.5, perturb=0.0)

    for ours, theirs in zip(feature_extractor(challenger).weights,
                            feature_extractor(champion).weights, strict=True):  # fmt: skip
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    head = challenger.get_layer("melanoma").kernel.numpy()
    np.testing.assert_allclose(head, 0.5 * champion.get_layer("melanoma").kernel.numpy())
