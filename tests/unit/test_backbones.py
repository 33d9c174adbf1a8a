"""The article's eight backbones and three approaches: each builds at its smallest size,
learns a step and is served as a pyfunc answering probabilities; what an approach freezes
does not change in training; impossible choices are refused with the way out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.dataset.tfdata import decode_image
from pipelines.training.backbones import BACKBONES, ConvnetShape
from pipelines.training.config import TrainConfig, TrainConfigError
from pipelines.training.model import (
    build_classifier,
    compile_classifier,
    feature_extractor,
    freeze_base,
    trained_parameters,
    unfreeze_from,
)
from pipelines.training.pyfunc import IMAGE_COLUMN
from pipelines.training.tracking import log_classifier
from tests.training_support import sample_manifest

CONVNET = TrainConfig(image_size=32, approach="convnet", weights="none",
                      dropout=0.0)  # fmt: skip


def smallest(backbone: str, **changes: object) -> TrainConfig:
    """The backbone from scratch at its smallest input (no weights file needed)."""
    size = BACKBONES[backbone].min_size
    values: dict[str, object] = {"image_size": size, "backbone": backbone, "weights": "none",
                                 "unfreeze_from": "all", "dropout": 0.0}  # fmt: skip
    return TrainConfig(**(values | changes))  # type: ignore[arg-type]


def pretrained(backbone: str = "resnet50", **changes: object) -> TrainConfig:
    """As if from a weights file (the tests build with none: the file is not read)."""
    size = BACKBONES[backbone].min_size
    values: dict[str, object] = {"image_size": size, "backbone": backbone,
                                 "weights": "backbone.weights.h5", "dropout": 0.0}  # fmt: skip
    return TrainConfig(**(values | changes))  # type: ignore[arg-type]


def batch(size: int, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")
    return images, np.array([[0.0], [1.0]] * (n // 2), dtype="float32")


@pytest.fixture(scope="module")
def example_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("images")
    manifest = sample_manifest(folder, n=2, image_size=80)
    return (folder / manifest["path"].iloc[0]).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("config", [*(smallest(name) for name in BACKBONES), CONVNET],
                         ids=[*BACKBONES, "convnet"])  # fmt: skip
def test_each_architecture_learns_a_step_and_serves_probabilities(
    config: TrainConfig, example_image: bytes, tmp_path: Path
) -> None:
    keras.utils.set_random_seed(3)
    model = build_classifier(config, weights_file=None)
    assert model.name == f"melanoma_{config.architecture}"
    compile_classifier(model, learning_rate=1e-3, threshold=0.5)
    model.run_eagerly = True  # one step: tracing NASNetLarge's 1,000 layers takes 100 s
    images, labels = batch(config.image_size)
    before = [weight.numpy().copy() for weight in model.trainable_weights]
    loss = float(model.train_on_batch(images, labels)[0])
    assert np.isfinite(loss)
    assert any(not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before,
                                                                 strict=True))  # fmt: skip

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("backbones", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        uri = log_classifier(model, config.image_size, 0.5, example_image)
    answers = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({IMAGE_COLUMN: [example_image]}))
    probability = float(answers["probability"].iloc[0])
    assert 0.0 <= probability <= 1.0
    pixels = np.asarray(decode_image(example_image, config.image_size), dtype="float32")
    expected = float(np.asarray(model.predict_on_batch(pixels[None]))[0, 0])
    assert probability == pytest.approx(expected, abs=1e-5)  # the model it was given


def test_feature_extraction_changes_the_head_and_nothing_of_the_backbone() -> None:
    config = pretrained(approach="feature_extraction")
    keras.utils.set_random_seed(4)
    model = build_classifier(config, weights_file=None)
    freeze_base(model)
    compile_classifier(model, learning_rate=1e-2, threshold=0.5)
    backbone = feature_extractor(model)
    frozen = [weight.numpy().copy() for weight in backbone.weights]  # batch statistics too
    head = model.get_layer("melanoma").kernel.numpy().copy()

    images, labels = batch(config.image_size)
    for _ in range(3):
        model.train_on_batch(images, labels)

    for weight, before in zip(backbone.weights, frozen, strict=True):
        np.testing.assert_array_equal(weight.numpy(), before, err_msg=weight.path)
    assert not np.array_equal(model.get_layer("melanoma").kernel.numpy(), head)
    assert trained_parameters(config) == 2049  # 2048 pooled features and a bias


@pytest.mark.parametrize(("backbone", "block", "first_trained"), [
    ("resnet50", "conv5", "conv5_block1_1_conv"),
    ("vgg16", "block5", "block5_conv1"),
    ("xception", "block14", "block14_sepconv1"),
    ("densenet201", "conv5", "conv5_block1_0_bn"),
    ("inception_v3", "mixed10", None),  # the first layer after mixed9
])  # fmt: skip
def test_fine_tuning_trains_from_the_named_block_and_leaves_the_layers_before_frozen(
    backbone: str, block: str, first_trained: str | None
) -> None:
    size = max(BACKBONES[backbone].min_size, 75)
    config = pretrained(backbone, image_size=size, unfreeze_from=block)
    model = build_classifier(config, weights_file=None)
    unfreeze_from(model, config)
    layers = feature_extractor(model).layers
    names = [layer.name for layer in layers]
    first = next(i for i, layer in enumerate(layers) if layer.trainable)
    if first_trained is None:
        assert names[first - 1] == "mixed9"
    else:
        assert names[first] == first_trained
    assert all(layer.trainable for layer in layers[first:])
    assert config.first_trained_block == block
    assert replace(config, unfreeze_from="last").first_trained_block == block  # the default


def test_the_frozen_layers_before_the_block_do_not_change_in_fine_tuning() -> None:
    config = pretrained(unfreeze_from="conv5")
    keras.utils.set_random_seed(5)
    model = build_classifier(config, weights_file=None)
    unfreeze_from(model, config)
    compile_classifier(model, learning_rate=1e-2, threshold=0.5)
    layers = feature_extractor(model).layers
    frozen = {layer.name: [w.numpy().copy() for w in layer.weights] for layer in layers
              if not layer.trainable and layer.weights}  # fmt: skip
    tuned = model.get_layer("resnet50").get_layer("conv5_block3_3_conv").kernel.numpy().copy()
    images, labels = batch(config.image_size)
    model.train_on_batch(images, labels)
    backbone = feature_extractor(model)
    for name, weights in frozen.items():
        for weight, before in zip(backbone.get_layer(name).weights, weights, strict=True):
            np.testing.assert_array_equal(weight.numpy(), before, err_msg=weight.path)
    assert len(frozen) > 80  # conv1 to conv4: every convolution and batch normalisation
    after = model.get_layer("resnet50").get_layer("conv5_block3_3_conv").kernel.numpy()
    assert not np.array_equal(after, tuned)


@pytest.mark.parametrize(("changes", "says"), [
    ({"backbone": "resnet18"}, "train.backbone='resnet18': expected one of resnet50, vgg16"),
    ({"backbone": "xception", "image_size": 64}, "xception needs images of at least 71 px"),
    ({"backbone": "nasnet_large", "image_size": 64, "weights": "imagenet"},
     "set train.image_size=331, or train.weights=none"),
    ({"backbone": "vgg16", "unfreeze_from": "conv5"}, "vgg16's blocks are block1, block2"),
    ({"approach": "convnet"}, "train.approach=convnet learns from scratch"),
    ({"approach": "feature_extraction", "weights": "none", "unfreeze_from": "all"},
     "set train.weights=imagenet or a weights file"),
    ({"approach": "transfer"}, "train.approach='transfer': expected one of fine_tune"),
    ({"approach": "convnet", "weights": "none", "convnet": ConvnetShape(filters=(32, 0))},
     "train.convnet_filters=[32, 0]: expected one width of 1 or more"),
    ({"approach": "convnet", "weights": "none", "head_epochs": 2, "epochs": 0},
     "train.epochs=0: from scratch there is no head phase"),
])  # fmt: skip
def test_an_impossible_architecture_is_refused_with_the_way_out(
    changes: dict[str, object], says: str
) -> None:
    with pytest.raises(TrainConfigError) as refused:
        TrainConfig(**changes)  # type: ignore[arg-type]
    assert says in str(refused.value)


def test_nasnet_large_with_its_imagenet_size_and_every_backbone_from_scratch_are_accepted() -> None:
    assert TrainConfig(backbone="nasnet_large", image_size=331).base.name == "nasnet_large"
    for name, backbone in BACKBONES.items():
        assert smallest(name).image_size == backbone.min_size
