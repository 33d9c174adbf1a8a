"""The ResNet50 classifier: it can learn (one-batch memorization), takes raw images of any
size, freezes what the schedule says, and starts from the weights it is given or says
clearly why it cannot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import pytest

from pipelines.dataset.tfdata import (
    DIAGNOSIS_CLASSES,
    DIAGNOSIS_INPUT,
    IMAGE_INPUT,
    evaluation_batches,
    labelled_files,
)
from pipelines.training.config import TrainConfig, TrainConfigError
from pipelines.training.fit import TrainResult, balanced_class_weight, train_classifier
from pipelines.training.model import (
    WeightsUnavailable,
    build_classifier,
    compile_classifier,
    feature_extractor,
    freeze_base,
    phase_learning_rate,
    resolve_weights,
    serving_classifier,
    unfreeze_from,
    with_diagnosis_head,
)
from tests.training_support import sample_manifest, tiny_network
from usecases.params import ParamsError, load_params

SCRATCH = TrainConfig(image_size=32, weights="none", unfreeze_from="all", dropout=0.0)


@pytest.fixture(scope="module")
def scratch_model() -> keras.Model:
    return build_classifier(SCRATCH, weights_file=None)


@pytest.mark.slow
def test_the_model_memorizes_one_batch(tmp_path):
    """FSDL's cheapest proof that training works end to end: loss on one batch of real
    generated images falls far below where it started."""
    manifest = sample_manifest(tmp_path, n=16, image_size=48)
    images = np.stack([
        np.asarray(keras.utils.load_img(tmp_path / path), dtype=np.float32)
        for path in manifest["path"]
    ])  # fmt: skip
    labels = manifest["label"].to_numpy(dtype=np.float32)[:, None]
    assert 0 < labels.sum() < len(labels)
    keras.utils.set_random_seed(0)
    model = build_classifier(SCRATCH, weights_file=None)
    compile_classifier(model, learning_rate=1e-3, threshold=0.5)

    losses = [float(model.train_on_batch(images, labels)[0]) for _ in range(60)]

    assert losses[-1] < 0.25 * losses[0], losses
    assert losses[-1] < 0.1
    # and inference (batch-norm moving statistics, as in validation and serving) agrees once
    # the weights settle, as they do in fine-tuning at a low rate. Right after steps at 1e-3
    # the statistics trail the weights: the gap then depends on the initial weights (from
    # 0.0 to 0.7 of the first loss across seeds and across runs of one seed on CPU).
    model.optimizer.learning_rate.assign(1e-4)
    for _ in range(30):
        model.train_on_batch(images, labels)
    inference_loss = float(model.evaluate(images, labels, verbose=0)[0])
    assert inference_loss < 0.25 * losses[0], (inference_loss, losses[0])


def test_the_model_takes_raw_rgb_images_of_any_size(scratch_model):
    small = np.random.default_rng(0).uniform(0, 255, (2, 20, 28, 3)).astype(np.float32)
    large = np.random.default_rng(1).uniform(0, 255, (3, 70, 50, 3)).astype(np.float32)

    for batch in (small, large):
        probabilities = np.asarray(scratch_model.predict_on_batch(batch))
        assert probabilities.shape == (len(batch), 1)
        assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_warm_up_trains_only_the_head_and_fine_tuning_only_the_last_block():
    pretrained = TrainConfig(image_size=32, weights="placeholder.h5", unfreeze_from="conv5")
    model = build_classifier(pretrained, weights_file=None)
    base = feature_extractor(model)

    freeze_base(model)
    assert [w.path for w in model.trainable_weights] == [
        "melanoma/kernel", "melanoma/bias",
    ]  # fmt: skip

    unfreeze_from(model, pretrained)
    trained = {layer.name.split("_")[0] for layer in base.layers if layer.trainable and
               layer.weights}  # fmt: skip
    assert trained == {"conv5"}

    unfreeze_from(model, replace(pretrained, unfreeze_from="all"))
    assert all(layer.trainable for layer in base.layers)


def test_training_starts_from_a_local_weights_file(tmp_path):
    donor = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights_file = tmp_path / "resnet50_notop.weights.h5"
    donor.save_weights(weights_file)
    config = TrainConfig(image_size=32, weights=str(weights_file))

    model = build_classifier(config, resolve_weights(config))

    for ours, theirs in zip(feature_extractor(model).weights, donor.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_imagenet_weights_that_cannot_be_downloaded_name_the_two_ways_out(tmp_path):
    config = TrainConfig(image_size=32)  # weights: imagenet
    closed_port = f"http://127.0.0.1:9/{config.base.imagenet.name}"

    with pytest.raises(WeightsUnavailable) as raised:
        resolve_weights(config, imagenet_origin=closed_port, cache_dir=str(tmp_path))

    message = str(raised.value)
    assert "could not be downloaded" in message
    assert "train.weights=/path/to/it" in message
    assert "train.weights=none train.unfreeze_from=all" in message


def test_a_missing_weights_file_is_named(tmp_path):
    config = TrainConfig(image_size=32, weights=str(tmp_path / "nowhere.h5"))
    with pytest.raises(WeightsUnavailable, match=r"nowhere\.h5: no such file"):
        resolve_weights(config)


def test_training_from_scratch_requires_every_layer_to_learn(tmp_path):
    with pytest.raises(TrainConfigError, match=r"set train\.unfreeze_from=all"):
        TrainConfig(weights="none", unfreeze_from="conv5")
    params_file = tmp_path / "params.yaml"
    with pytest.raises(ParamsError, match=r"unfreeze_from=all"):
        load_params(params_file, ["train.weights=none"]).train.config()
    with pytest.raises(ParamsError, match=r"train\.imbalance"):
        load_params(params_file, ["train.imbalance=smote"])


def test_class_weights_make_both_classes_count_equally():
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    weights = balanced_class_weight(labels)
    assert weights[1] * 1 == pytest.approx(weights[0] * 7)
    assert weights[0] * 7 + weights[1] * 1 == pytest.approx(len(labels))


def test_a_cosine_schedule_rises_over_the_warm_up_then_anneals_to_zero():
    config = TrainConfig(weights="none", unfreeze_from="all", schedule="cosine", warmup_epochs=1)
    rate = phase_learning_rate(1e-3, epochs=5, steps_per_epoch=10, config=config)

    at = [float(rate(step)) for step in (0, 5, 10, 30, 50)]

    assert at[0] == pytest.approx(0.0)
    assert at[1] == pytest.approx(5e-4)  # halfway up the warm-up
    assert at[2] == pytest.approx(1e-3)  # the peak, once the warm-up is over
    assert at[2] > at[3] > at[4]
    assert at[4] == pytest.approx(0.0, abs=1e-9)  # the phase ends annealed


def test_a_constant_schedule_keeps_the_phase_rate_and_weight_decay_picks_adamw(scratch_model):
    constant = phase_learning_rate(1e-5, epochs=5, steps_per_epoch=10, config=TrainConfig())
    assert constant == 1e-5
    compile_classifier(scratch_model, 1e-3, threshold=0.5, weight_decay=0.05)
    assert isinstance(scratch_model.optimizer, keras.optimizers.AdamW)
    assert scratch_model.optimizer.weight_decay == pytest.approx(0.05)


def test_a_warm_up_without_a_cosine_schedule_is_refused(tmp_path):
    with pytest.raises(ParamsError, match=r"warmup_epochs only applies to train\.schedule=cosine"):
        load_params(tmp_path / "params.yaml", ["train.warmup_epochs=2"]).train.config()
    with pytest.raises(ParamsError, match=r"train\.schedule"):
        load_params(tmp_path / "params.yaml", ["train.schedule=step"])


def _orientations(images: np.ndarray) -> list[np.ndarray]:
    """The 8 flips and quarter turns of a batch of square images, by numpy."""
    turns = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return [np.ascontiguousarray(view) for turn in turns for view in (turn, turn[:, ::-1])]


def test_dihedral_test_time_augmentation_serves_the_mean_over_the_eight_orientations():
    config = tiny_network(test_time_augmentation="dihedral")  # the wrapper is any network's
    keras.utils.set_random_seed(1)
    scratch_model = build_classifier(config, weights_file=None)
    served = serving_classifier(scratch_model, config)
    lesions = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    views = _orientations(lesions)
    plain = [np.asarray(scratch_model.predict_on_batch(view)) for view in views]
    assert max(np.abs(p - plain[0]).max() for p in plain) > 1e-4  # the plain model is not invariant

    answer = np.asarray(served.predict_on_batch(lesions))

    np.testing.assert_allclose(answer, np.mean(plain, axis=0), atol=1e-5)
    for view in views[1:]:  # a turned or mirrored picture of a lesion gets the same answer
        np.testing.assert_allclose(served.predict_on_batch(view), answer, atol=1e-5)
    oblong = np.random.default_rng(3).uniform(0, 255, (2, 40, 57, 3)).astype(np.float32)
    assert np.asarray(served.predict_on_batch(oblong)).shape == (2, 1)


def test_without_test_time_augmentation_the_trained_model_is_served_as_it_is(
    tmp_path, scratch_model
):
    assert serving_classifier(scratch_model, SCRATCH) is scratch_model
    with pytest.raises(ParamsError, match=r"train\.test_time_augmentation"):
        load_params(tmp_path / "params.yaml", ["train.test_time_augmentation=flips"])


def _tiny_run(
    manifest: pd.DataFrame, folder: Path, ema_momentum: float = 0.0, epochs: int = 3, **extra: Any
) -> TrainResult:
    """A few epochs of the small convnet: what these tests check (the weight average, the
    diagnosis head) is the training loop's, the same for every network, and ResNet50 would
    spend a minute building its graph."""
    config = tiny_network(batch_size=8, epochs=epochs, learning_rate=1e-3, patience=3,
                          cache="none", ema_momentum=ema_momentum, **extra)  # fmt: skip
    return train_classifier(manifest, folder, config, work_dir=folder / "work")


def _val_auc_as_served(result: TrainResult, manifest: pd.DataFrame, folder: Path) -> float:
    val = evaluation_batches(
        labelled_files(manifest, folder, "val"),
        image_size=32, batch_size=8, cache="none", name="val",
    )  # fmt: skip
    compile_classifier(result.model, 1e-3, threshold=0.5)
    return float(result.model.evaluate(val.dataset, verbose=0, return_dict=True)["auc"])


@pytest.mark.slow
def test_with_weight_averaging_the_averaged_weights_are_validated_kept_and_served(tmp_path):
    manifest = sample_manifest(tmp_path, n=48, seed=5, image_size=48)
    val = evaluation_batches(
        labelled_files(manifest, tmp_path, "val"),
        image_size=32, batch_size=8, cache="none", name="val",
    )  # fmt: skip
    averaged = _tiny_run(manifest, tmp_path, ema_momentum=0.9)
    plain = _tiny_run(manifest, tmp_path, ema_momentum=0.0)

    # the model returned scores on validation exactly what its best epoch reported
    served_auc = _val_auc_as_served(averaged, manifest, tmp_path)
    assert served_auc == pytest.approx(averaged.best.metrics["val_auc"], abs=1e-6)
    # and it is the average, not the last weights that the same seeded run would give
    images = np.concatenate([batch for batch, _ in val.dataset.as_numpy_iterator()])
    gap = np.abs(averaged.model.predict(images, verbose=0) - plain.model.predict(images, verbose=0))
    assert gap.max() > 1e-3


def test_a_weight_average_momentum_of_one_or_more_is_refused(tmp_path):
    with pytest.raises(TrainConfigError, match=r"train\.ema_momentum=1\.0"):
        TrainConfig(ema_momentum=1.0)
    with pytest.raises(ParamsError, match=r"train\.ema_momentum"):
        load_params(tmp_path / "params.yaml", ["train.ema_momentum=1.5"])


def _drift_after_a_spike(gradient_clip_norm: float) -> float:
    """How far the weights end from where the same AdamW (with a weight average, as the
    bench trains) takes them when one of 40 batches has a gradient 1,000 times the usual:
    Adam's momentum carries a spike on for steps after it."""
    usual = np.random.default_rng(1).normal(0, 0.05, (40, 9))
    spiked = usual.copy()
    spiked[20] *= 1000
    ends = []
    for gradients in (usual, spiked):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")])
        compile_classifier(
            model, 1e-3, threshold=0.5, weight_decay=0.05, ema_momentum=0.99,
            gradient_clip_norm=gradient_clip_norm,
        )  # fmt: skip
        weights = model.trainable_variables
        for row in gradients:
            model.optimizer.apply_gradients(zip([row[:8, None], row[8:]], weights, strict=True))
        ends.append(np.concatenate([np.ravel(w.numpy()) for w in weights]))
    return float(np.linalg.norm(ends[1] - ends[0]))


def test_gradient_clipping_keeps_one_spiking_batch_from_throwing_the_weights(tmp_path):
    unclipped, clipped = _drift_after_a_spike(0.0), _drift_after_a_spike(0.5)

    assert clipped < unclipped / 3, (clipped, unclipped)
    assert load_params(tmp_path / "params.yaml", ["train.gradient_clip_norm=1.0"]).train.config(
    ).gradient_clip_norm == pytest.approx(1.0)  # fmt: skip
    with pytest.raises(TrainConfigError, match=r"train\.gradient_clip_norm=-1"):
        TrainConfig(gradient_clip_norm=-1.0)


def test_an_ensemble_needs_at_least_one_member_and_each_member_has_its_own_seed(tmp_path):
    with pytest.raises(TrainConfigError, match=r"train\.ensemble_size=0"):
        TrainConfig(ensemble_size=0)
    with pytest.raises(ParamsError, match=r"train\.ensemble_size"):
        load_params(tmp_path / "params.yaml", ["train.ensemble_size=0"])
    config = load_params(tmp_path / "params.yaml", ["train.ensemble_size=3"]).train.config()
    members = [config.member(index) for index in range(config.ensemble_size)]
    assert [member.seed for member in members] == [42, 43, 44]
    assert {member.ensemble_size for member in members} == {1}
    assert {member.learning_rate for member in members} == {config.learning_rate}


def test_the_diagnosis_head_adds_its_weighted_cross_entropy_to_the_loss(scratch_model):
    trained = with_diagnosis_head(scratch_model, replace(SCRATCH, diagnosis_weight=0.5))
    images = np.random.default_rng(3).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    melanoma = np.array([1, 0, 0, 1, 0, 0], dtype="float32")
    diagnoses = np.array([DIAGNOSIS_CLASSES.index(dx) for dx in
                          ("mel", "nv", "bkl", "mel", "bcc", "nv")], dtype="int32")  # fmt: skip
    compile_classifier(trained, 1e-3, threshold=0.5)
    compile_classifier(scratch_model, 1e-3, threshold=0.5)

    inputs = {IMAGE_INPUT: images, DIAGNOSIS_INPUT: diagnoses}
    total = trained.evaluate(inputs, melanoma, verbose=0, return_dict=True)["loss"]
    melanoma_loss = scratch_model.evaluate(images, melanoma, verbose=0, return_dict=True)["loss"]
    head = keras.Model(scratch_model.input, trained.get_layer("diagnosis_head").output)
    probabilities = head.predict(images, verbose=0)
    cross_entropy = -np.mean(np.log(probabilities[np.arange(6), diagnoses]))
    assert total == pytest.approx(melanoma_loss + 0.5 * cross_entropy, rel=1e-4)
    # the melanoma probability is the classifier's own, untouched by the head
    np.testing.assert_allclose(
        trained.predict(inputs, verbose=0), scratch_model.predict(images, verbose=0), atol=1e-6
    )


@pytest.mark.slow
def test_training_with_the_diagnosis_head_serves_the_melanoma_classifier_alone(tmp_path):
    manifest = sample_manifest(tmp_path, n=32, seed=5, image_size=48)
    result = _tiny_run(manifest, tmp_path, epochs=2, diagnosis_weight=1.0)

    served = result.model
    assert [layer.name for layer in served.layers if "diagnosis" in layer.name] == []
    assert len(served.inputs) == 1
    images = np.random.default_rng(0).uniform(0, 255, (3, 40, 40, 3)).astype("float32")
    assert served.predict(images, verbose=0).shape == (3, 1)
    # the weights served are the best epoch's, trained with the head beside them
    served_auc = _val_auc_as_served(result, manifest, tmp_path)
    assert served_auc == pytest.approx(result.best.metrics["val_auc"], abs=1e-6)


def test_a_negative_diagnosis_weight_is_refused(tmp_path):
    with pytest.raises(TrainConfigError, match=r"train\.diagnosis_weight=-0.5"):
        TrainConfig(diagnosis_weight=-0.5)
    with pytest.raises(ParamsError, match=r"train\.diagnosis_weight"):
        load_params(tmp_path / "params.yaml", ["train.diagnosis_weight=-1"])
    config = load_params(tmp_path / "params.yaml", ["train.diagnosis_weight=0.5"]).train.config()
    assert config.learns_diagnosis and config.diagnosis_weight == pytest.approx(0.5)
