"""The tf.data pipeline: images decoded and resized as the model expects, augmentation on
training images only and reproducible, melanoma oversampled on request."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipelines.dataset.tfdata import (
    DIAGNOSIS_CLASSES,
    DIAGNOSIS_INPUT,
    IMAGE_INPUT,
    Batches,
    LabelledFiles,
    decode_image,
    evaluation_batches,
    labelled_files,
    melanoma_repeats,
    resize_image,
    training_batches,
)
from pipelines.training.config import Augmentation, TrainingDataError
from registry.labels.domain import DIAGNOSES
from tests.training_support import sample_manifest

SIZE = 32


@pytest.fixture(scope="module")
def training_split(tmp_path_factory: pytest.TempPathFactory) -> LabelledFiles:
    folder = tmp_path_factory.mktemp("set")
    manifest = sample_manifest(folder, n=40)
    return labelled_files(manifest, folder, "train")


def images_of(dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([images.numpy() for images, _ in dataset])


def labels_of(dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([labels.numpy() for _, labels in dataset])


def batches(
    split: LabelledFiles,
    augmentation: Augmentation,
    seed: int = 1,
    oversample: bool = False,
    diagnosis: bool = False,
) -> Batches:
    return training_batches(
        split, image_size=SIZE, batch_size=8, augmentation=augmentation, seed=seed,
        cache="memory", oversample=oversample, diagnosis=diagnosis,
    )  # fmt: skip


def test_evaluation_images_are_the_decoded_files_unchanged(training_split):
    evaluation = evaluation_batches(
        training_split, image_size=SIZE, batch_size=8, cache="none", name="val"
    )
    expected = np.stack(
        [decode_image(Path(f).read_bytes(), SIZE).numpy() for f in training_split.files]
    )

    assert evaluation.steps == -(-len(training_split) // 8)
    np.testing.assert_array_equal(images_of(evaluation.dataset), expected.astype(np.float32))
    np.testing.assert_array_equal(labels_of(evaluation.dataset), training_split.labels)


def test_training_images_are_augmented_reproducibly_and_stay_in_range(training_split):
    plain = images_of(batches(training_split, Augmentation(enabled=False)).dataset)
    first = images_of(batches(training_split, Augmentation()).dataset)
    again = images_of(batches(training_split, Augmentation()).dataset)
    other_seed = images_of(batches(training_split, Augmentation(), seed=2).dataset)

    assert first.shape == plain.shape == (len(training_split), SIZE, SIZE, 3)
    assert first.dtype == np.float32 and first.min() >= 0 and first.max() <= 255
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other_seed)
    # augmentation changes pixels but not the multiset of images' overall brightness much
    assert not np.allclose(np.sort(first.mean(axis=(1, 2, 3))), np.sort(plain.mean(axis=(1, 2, 3))))
    assert abs(first.mean() - plain.mean()) < 0.15 * plain.mean()


def test_each_epoch_draws_new_augmentations(training_split):
    dataset = batches(training_split, Augmentation()).dataset
    assert not np.array_equal(images_of(dataset), images_of(dataset))


def test_oversampling_balances_melanoma_in_each_epoch(training_split):
    repeats = melanoma_repeats(training_split.labels)
    balanced = batches(training_split, Augmentation(), oversample=True)
    labels = labels_of(balanced.dataset)

    expected_size = len(training_split) + (repeats - 1) * training_split.melanoma
    assert balanced.images == len(labels) == expected_size
    assert labels.sum() == repeats * training_split.melanoma
    assert 0.35 < labels.mean() < 0.65


def test_melanoma_repeats_match_the_other_class():
    assert melanoma_repeats(np.array([1, 0, 0, 0, 0, 0, 0])) == 6
    assert melanoma_repeats(np.array([1, 1, 0])) == 1
    assert melanoma_repeats(np.array([0, 0])) == 1


@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_decode_image_reads_jpeg_and_png_and_greyscale_as_rgb(image_format):
    buffer = io.BytesIO()
    Image.new("L", (50, 40), color=120).save(buffer, format=image_format)

    decoded = decode_image(buffer.getvalue(), SIZE).numpy()

    assert decoded.shape == (SIZE, SIZE, 3) and decoded.dtype == np.uint8
    assert np.all(np.abs(decoded.astype(int) - 120) <= 2)


def test_a_jpeg_decodes_to_the_pixels_pil_reads(training_split):
    """A clinical system that decodes with PIL and sends pixels gets the answer it would get
    sending the file: both paths see the same image."""
    default_differs = []
    for file in training_split.files[:10]:
        as_pil = np.asarray(Image.open(file).convert("RGB"))
        side = as_pil.shape[0]
        default = tf.io.decode_jpeg(Path(file).read_bytes(), channels=3).numpy()
        default_differs.append(bool(np.any(default != as_pil)))
        ours = decode_image(Path(file).read_bytes(), side).numpy()
        np.testing.assert_array_equal(ours, resize_image(as_pil, side).numpy())
    assert any(default_differs)  # TensorFlow's default decoding would not match


def test_each_image_keeps_its_diagnosis_through_oversampling_and_shuffling(training_split):
    mel = DIAGNOSIS_CLASSES.index("mel")
    assert len(set(training_split.diagnoses.tolist())) > 2  # nevi, keratoses, ... and mel
    balanced = batches(training_split, Augmentation(), oversample=True, diagnosis=True)
    inputs = [(batch, labels.numpy()) for batch, labels in balanced.dataset]
    diagnoses = np.concatenate([batch[DIAGNOSIS_INPUT].numpy() for batch, _ in inputs])
    labels = np.concatenate([labels for _, labels in inputs])

    assert all(batch[IMAGE_INPUT].shape[1:] == (SIZE, SIZE, 3) for batch, _ in inputs)
    np.testing.assert_array_equal(labels == 1, diagnoses == mel)
    repeats = melanoma_repeats(training_split.labels)
    expected = np.concatenate(
        [training_split.diagnoses, np.repeat(training_split.diagnoses[training_split.labels == 1],
                                             repeats - 1)]
    )  # fmt: skip
    assert sorted(diagnoses.tolist()) == sorted(expected.tolist())


def test_evaluation_batches_carry_the_diagnoses_in_manifest_order(training_split):
    evaluation = evaluation_batches(
        training_split, image_size=SIZE, batch_size=8, cache="none", name="val", diagnosis=True
    )
    diagnoses = np.concatenate([batch[DIAGNOSIS_INPUT].numpy() for batch, _ in evaluation.dataset])
    np.testing.assert_array_equal(diagnoses, training_split.diagnoses)


def test_a_diagnosis_outside_the_seven_is_refused_naming_the_image(tmp_path):
    assert set(DIAGNOSIS_CLASSES) == DIAGNOSES  # the registry's, in one fixed order
    manifest = sample_manifest(tmp_path, n=12)
    manifest.loc[3, "dx"] = "melanoma"
    with pytest.raises(
        TrainingDataError, match=rf"image {manifest.loc[3, 'image_id']}.*'melanoma'"
    ):
        labelled_files(manifest, tmp_path, manifest.loc[3, "split"])
