"""tf.data input pipelines from a snapshot manifest: parallel decode, resize, cache,
augmentation of training images only, prefetch.

Images leave the pipeline as float32 RGB in 0..255 at `image_size` pixels: the model does
its own `preprocess_input`, so what it is fed here is what a clinical system would send.
Batches are (images, melanoma labels); with `diagnosis`, the inputs are a dict that also
holds each image's diagnosis (an index into `DIAGNOSIS_CLASSES`), for a model that learns
the diagnosis beside melanoma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from pipelines.dataset.split import Split
from pipelines.training.config import Augmentation, TrainingDataError

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER_LIMIT = 8192
# The label registry's DIAGNOSES in a fixed order. Spelled out rather than imported: the
# code logged with a model is pipelines/ alone, and a model must load where it is served.
DIAGNOSIS_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
IMAGE_INPUT = "image"
DIAGNOSIS_INPUT = "diagnosis"


@dataclass(frozen=True)
class LabelledFiles:
    """The image files of one split with their labels (1 = melanoma) and diagnoses (an
    index into `DIAGNOSIS_CLASSES`)."""

    files: tuple[str, ...]
    labels: np.ndarray
    diagnoses: np.ndarray

    def __len__(self) -> int:
        return len(self.files)

    @property
    def melanoma(self) -> int:
        return int(self.labels.sum())


@dataclass(frozen=True)
class Batches:
    dataset: tf.data.Dataset
    images: int  # images in one epoch (oversampled copies included)
    steps: int  # batches in one epoch


def labelled_files(manifest: pd.DataFrame, data_dir: Path, split: Split) -> LabelledFiles:
    rows = manifest[manifest["split"] == split]
    files = tuple(str(data_dir / path) for path in rows["path"])
    return LabelledFiles(files, rows["label"].to_numpy(dtype=np.float32), diagnosis_indices(rows))


def diagnosis_indices(rows: pd.DataFrame) -> np.ndarray:
    """Each row's `dx` as its index in `DIAGNOSIS_CLASSES`."""
    index = {dx: position for position, dx in enumerate(DIAGNOSIS_CLASSES)}
    unknown = rows[~rows["dx"].isin(list(index))]
    if len(unknown):
        first = unknown.iloc[0]
        raise TrainingDataError(
            f"image {first['image_id']}: diagnosis (dx) {first['dx']!r} is not one of "
            f"{', '.join(DIAGNOSIS_CLASSES)} ({len(unknown)} such image(s) in the manifest)"
        )
    return np.asarray(rows["dx"].map(index), dtype=np.int32)


def load_image(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read, decode (JPEG, PNG, BMP, GIF) and resize one image to uint8 RGB."""
    return decode_image(tf.io.read_file(path), image_size)


def decode_image(contents: tf.Tensor | bytes, image_size: int) -> tf.Tensor:
    """Decode image bytes to RGB and resize: the one way images enter the model, in
    training, evaluation and serving alike."""
    image = tf.cond(
        tf.io.is_jpeg(contents),
        # TensorFlow's default JPEG decoding (fast integer DCT) is up to 8 levels off the
        # accurate one that PIL and most clients use: an image sent as pixels would score
        # differently from the same image sent as a file.
        lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(contents, channels=3, expand_animations=False),
    )
    return resize_image(image, image_size)


def resize_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resize to a square of `image_size` (antialiased, back to uint8)."""
    resized = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def decoded_images(
    labelled: LabelledFiles, image_size: int, cache: str, cache_name: str
) -> tf.data.Dataset:
    """(uint8 image, label, diagnosis) triples, decoded in parallel and cached small (before
    any augmentation, so that every epoch draws fresh random changes)."""
    dataset = tf.data.Dataset.from_tensor_slices(
        (list(labelled.files), labelled.labels, labelled.diagnoses)
    )
    dataset = dataset.map(
        lambda path, label, dx: (load_image(path, image_size), label, dx),
        num_parallel_calls=AUTOTUNE,
    )
    if cache == "memory":
        return dataset.cache()
    if cache != "none":
        Path(cache).mkdir(parents=True, exist_ok=True)
        return dataset.cache(str(Path(cache) / cache_name))
    return dataset


def training_batches(
    labelled: LabelledFiles,
    *,
    image_size: int,
    batch_size: int,
    augmentation: Augmentation,
    seed: int,
    cache: str,
    oversample: bool,
    diagnosis: bool = False,
) -> Batches:
    """Shuffled, augmented batches of the training split. With `oversample`, each
    melanoma image is repeated about as often as it takes to match the other class; the
    copies differ because augmentation comes after the repeat."""
    dataset = decoded_images(labelled, image_size, cache, f"train-{image_size}")
    repeats = melanoma_repeats(labelled.labels) if oversample else 1
    if repeats > 1:
        dataset = dataset.flat_map(
            lambda image, label, dx: tf.data.Dataset.from_tensors((image, label, dx)).repeat(
                tf.where(label > 0.5, tf.constant(repeats, tf.int64), tf.constant(1, tf.int64))
            )
        )
    epoch_size = len(labelled) + (repeats - 1) * labelled.melanoma
    dataset = dataset.shuffle(min(epoch_size, SHUFFLE_BUFFER_LIMIT), seed=seed)
    if augmentation.enabled:
        seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda case, case_seed: (augment(case[0], case_seed, augmentation), *case[1:]),
            num_parallel_calls=AUTOTUNE,
        )
    return _batched(dataset, batch_size, diagnosis, epoch_size)


def evaluation_batches(
    labelled: LabelledFiles,
    *,
    image_size: int,
    batch_size: int,
    cache: str,
    name: str,
    diagnosis: bool = False,
) -> Batches:
    """Batches of a validation or test split, in manifest order, never augmented."""
    dataset = decoded_images(labelled, image_size, cache, f"{name}-{image_size}")
    return _batched(dataset, batch_size, diagnosis, len(labelled))


def _batched(dataset: tf.data.Dataset, batch_size: int, diagnosis: bool, images: int) -> Batches:
    """(image, label, diagnosis) triples to batches of (inputs, labels) as the model takes
    them: images alone, or with `diagnosis` a dict of images and diagnoses."""
    if diagnosis:
        dataset = dataset.map(
            lambda image, label, dx: (
                {IMAGE_INPUT: tf.cast(image, tf.float32), DIAGNOSIS_INPUT: dx},
                label,
            )
        )
    else:
        dataset = dataset.map(lambda image, label, dx: (tf.cast(image, tf.float32), label))
    batches = dataset.batch(batch_size).prefetch(AUTOTUNE)
    return Batches(batches, images, math.ceil(images / batch_size))


def melanoma_repeats(labels: Sequence[float] | np.ndarray) -> int:
    melanoma = int(np.sum(labels))
    others = len(labels) - melanoma
    return max(1, round(others / melanoma)) if melanoma else 1


def augment(image: tf.Tensor, seed: tf.Tensor, augmentation: Augmentation) -> tf.Tensor:
    """Flips, 90-degree rotations, a zoom and mild colour jitter, drawn from `seed` so that
    a run can be repeated exactly. Dermoscopy has no up or down, so every orientation is
    as real as the original."""
    size = tf.shape(image)[0]
    flip_lr, flip_ud, turn, scale, crop, colour = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    )
    image = tf.cast(image, tf.float32)
    image = tf.image.stateless_random_flip_left_right(image, flip_lr)
    image = tf.image.stateless_random_flip_up_down(image, flip_ud)
    image = tf.image.rot90(image, tf.random.stateless_uniform([], turn, 0, 4, dtype=tf.int32))
    if augmentation.zoom > 0:
        image = _zoom(image, size, scale, crop, augmentation.zoom)
    if augmentation.colour_jitter > 0:
        image = _colour_jitter(image, colour, augmentation.colour_jitter)
    return image


def _zoom(
    image: tf.Tensor, size: tf.Tensor, scale_seed: tf.Tensor, crop_seed: tf.Tensor, zoom: float
) -> tf.Tensor:
    scale = tf.random.stateless_uniform([], scale_seed, 1.0 - zoom, 1.0)
    side = tf.cast(tf.round(scale * tf.cast(size, tf.float32)), tf.int32)
    cropped = tf.image.stateless_random_crop(image, tf.stack([side, side, 3]), crop_seed)
    return tf.image.resize(cropped, tf.stack([size, size]))


def _colour_jitter(image: tf.Tensor, seed: tf.Tensor, jitter: float) -> tf.Tensor:
    brightness, contrast, saturation = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3)
    )
    image = tf.image.stateless_random_brightness(image, jitter * 255.0, brightness)
    image = tf.image.stateless_random_contrast(image, 1 - jitter, 1 + jitter, contrast)
    image = tf.image.stateless_random_saturation(image, 1 - jitter, 1 + jitter, saturation)
    return tf.clip_by_value(image, 0.0, 255.0)
