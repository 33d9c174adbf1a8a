"""Feature extraction's cache: each image's features are computed once per backbone, a
backbone whose weights changed computes afresh, and a head trained on cached features
serves exactly what the whole classifier answers for the image."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pytest

from pipelines.dataset.tfdata import decode_image
from pipelines.training.config import TrainConfig, TrainConfigError
from pipelines.training.feature_cache import FeatureCache, backbone_identity
from pipelines.training.fit import feature_cache_identity, train_classifier
from pipelines.training.model import feature_extractor
from tests.training_support import sample_manifest

SIZE = 32


class CountingExtractor:
    """Features made from the file names, counting every image it is asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, files: Sequence[str]) -> np.ndarray:
        self.asked += list(files)
        return np.asarray([[len(name), name.count("a")] for name in files], dtype=np.float32)


def test_each_image_is_computed_once_and_kept_across_processes(tmp_path: Path) -> None:
    extract = CountingExtractor()
    cache = FeatureCache(tmp_path, "resnet50-abc")
    first, use = cache.features(["s1", "s2"], ["a.jpg", "bb.jpg"], extract, batch_size=1)
    assert (use.cached, use.computed) == (0, 2)
    again, use = cache.features(["s2", "s3", "s1"], ["bb.jpg", "cca.jpg", "a.jpg"], extract)
    assert (use.cached, use.computed) == (2, 1)
    assert extract.asked == ["a.jpg", "bb.jpg", "cca.jpg"]
    np.testing.assert_array_equal(again[[2, 0]], first)

    reopened = FeatureCache(tmp_path, "resnet50-abc")  # another process, a week later
    _, use = reopened.features(["s1", "s2", "s3"], ["a.jpg", "bb.jpg", "cca.jpg"], extract)
    assert (use.cached, use.computed) == (3, 0)
    assert len(extract.asked) == 3


def test_a_half_written_chunk_is_never_read(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "id")
    (cache.folder / "tmpcrash.npz.tmp").write_bytes(b"\x00half")  # a crash mid-write
    _, use = cache.features(["s1"], ["a.jpg"], CountingExtractor())
    assert use.computed == 1
    assert len(FeatureCache(tmp_path, "id")) == 1


def test_the_identity_changes_with_any_weight_and_old_identities_are_pruned(
    tmp_path: Path,
) -> None:
    weights = [np.ones((3, 3), np.float32), np.zeros(4, np.float32)]
    same = backbone_identity("resnet50", SIZE, [w.copy() for w in weights])
    assert backbone_identity("resnet50", SIZE, weights) == same
    moved = [weights[0], weights[1] + np.float32(1e-6)]
    assert backbone_identity("resnet50", SIZE, moved) != same
    assert backbone_identity("resnet50", 64, weights) != same
    assert backbone_identity("vgg16", SIZE, weights) != same

    for identity in ("one", "two", "three", "four"):
        FeatureCache(tmp_path, identity, keep=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["four", "three"]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ResNet50 notop weights file (random: ImageNet's cannot be had here)."""
    keras.utils.set_random_seed(0)
    donor = keras.applications.ResNet50(include_top=False, weights=None,
                                        input_shape=(SIZE, SIZE, 3))  # fmt: skip
    path = tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5"
    donor.save_weights(path)
    return path


def assert_backbone_unchanged(model: keras.Model, weights_file: Path) -> None:
    """The classifier's backbone holds exactly the weights it started from: it was frozen."""
    donor = keras.applications.ResNet50(include_top=False, weights=None,
                                        input_shape=(SIZE, SIZE, 3))  # fmt: skip
    donor.load_weights(weights_file)
    for ours, theirs in zip(feature_extractor(model).weights, donor.weights, strict=True):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


def extraction(weights_file: Path, **changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "image_size": SIZE, "batch_size": 16, "weights": str(weights_file),
        "approach": "feature_extraction", "head_epochs": 2, "epochs": 1, "patience": 3,
    }  # fmt: skip
    return TrainConfig(**(values | changes))  # type: ignore[arg-type]


@pytest.mark.slow
def test_a_weekly_head_retrain_computes_only_the_new_images_and_serves_what_it_trained(
    weights_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    manifest = sample_manifest(data, n=60, image_size=48)
    cache = tmp_path / "feature-cache"
    fitted = manifest[manifest["split"] != "test"]
    week1 = fitted.iloc[: len(fitted) - 8]
    config = extraction(weights_file)

    first = train_classifier(week1, data, config, work_dir=tmp_path / "w1", feature_cache=cache)
    assert first.cache_use is not None and first.cache_use.cached == 0
    assert first.cache_use.computed == len(week1)
    second = train_classifier(fitted, data, config, work_dir=tmp_path / "w2", feature_cache=cache)
    assert second.cache_use is not None
    assert (second.cache_use.cached, second.cache_use.computed) == (len(week1), 8)

    model = second.model
    assert_backbone_unchanged(model, weights_file)

    # The cached features through the trained head answer what the served classifier
    # answers for the images themselves: the cached and the uncached path agree.
    paths = [data / path for path in fitted["path"].iloc[:6]]
    identity = feature_cache_identity(model, SIZE, "float32")
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]
    cached, use = FeatureCache(cache, identity).features(digests, [str(p) for p in paths],
                                                         CountingExtractor())  # fmt: skip
    assert use.computed == 0
    from_cache = np.asarray(model.get_layer("melanoma")(cached)).ravel()  # dropout: inference
    images = np.stack([np.asarray(decode_image(p.read_bytes(), SIZE)) for p in paths])
    served = np.asarray(model.predict_on_batch(images.astype("float32"))).ravel()
    np.testing.assert_allclose(served, from_cache, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_without_the_cache_the_head_learns_from_augmented_images_on_a_frozen_backbone(
    weights_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    manifest = sample_manifest(data, n=40, image_size=48)
    config = extraction(weights_file, feature_cache=False, head_epochs=1, epochs=0)
    result = train_classifier(manifest, data, config, work_dir=tmp_path / "work")
    assert result.cache_use is None
    assert result.history[-1].phase == "head"
    assert_backbone_unchanged(result.model, weights_file)


def test_cached_features_cannot_be_oversampled_or_feed_the_diagnosis_head() -> None:
    for changes in ({"imbalance": "oversample"}, {"diagnosis_weight": 0.5}):
        with pytest.raises(TrainConfigError, match=r"train\.feature_cache=false"):
            extraction(Path("w.h5"), **changes)
    assert not extraction(Path("w.h5"), feature_cache=False, imbalance="oversample").caches_features
