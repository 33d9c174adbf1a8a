"""The classifier as an MLflow pyfunc model: a batch of images in, a probability of
melanoma, the decision at the model's threshold and the model version out.

Input: a DataFrame (or dict) with an `image` column whose values are JPEG/PNG bytes, the
same bytes base64-encoded (what JSON carries), or RGB arrays of shape (height, width, 3).
Images are decoded and resized exactly as in training (`pipelines.dataset.tfdata`).

A copy loaded where a tracking server is configured (`mlflow models serve -m
models:/NAME@champion` always is) finds the registered version it is, answers with that
version and decides at the operating threshold its evaluation chose (the version's
`threshold` tag), so every server of one version calls the same images melanoma.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel

from pipelines.errors import BadInput, Fault
from pipelines.image_rules import ImageRules, colour_refusal, header_refusal

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("probability", "melanoma", "model_version")
KERAS_ARTIFACT = "keras_model"
PREDICT_BATCH = 64
RULES = ImageRules()
"""The intake's image rules (params.yaml's defaults): scoring takes what registration takes,
checked from the header before anything is decoded."""

_BASE64_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")

_log = logging.getLogger(__name__)


class InvalidImage(MlflowException, BadInput):
    """An input row is not an image the model can read; the message names the row. An
    MlflowException of kind INVALID_PARAMETER_VALUE, so scoring servers answer 400."""

    def __init__(self, reason: str, row: int | None = None) -> None:
        super().__init__(reason if row is None else f"row {row}: {reason}", INVALID_PARAMETER_VALUE)
        self.reason = reason
        self.row = row


class ModelFault(Fault, RuntimeError):
    """The model produced an answer that must not reach a patient (e.g. NaN)."""


class ImageTooLarge(InvalidImage):
    """An image over the size the model accepts (bytes or pixels)."""


@dataclass(frozen=True)
class RegisteredAs:
    """The registered model version a loaded copy is."""

    name: str
    version: str
    threshold: float | None


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.double, "probability"),
                ColSpec(DataType.boolean, "melanoma"),
                ColSpec(DataType.string, "model_version", required=False),
            ]
        ),
    )


class MelanomaClassifier(PythonModel):
    """Loaded by MLflow from the logged Keras model and its `model_config`
    (`image_size`, `threshold`)."""

    def __init__(self) -> None:
        super().__init__()
        self._model: Any = None
        self.image_size = 0
        self.threshold = 0.5
        self.model_version: str | None = None

    def load_context(self, context: Any) -> None:
        import keras

        import pipelines.training.model  # noqa: F401 (registers the preprocessing layer)

        keras_file = context.artifacts[KERAS_ARTIFACT]
        self._model = keras.saving.load_model(keras_file, compile=False)
        self.image_size = int(context.model_config["image_size"])
        self.threshold = float(context.model_config["threshold"])
        registered = registered_as(
            Path(keras_file), context.model_config.get("registered_model_name")
        )
        if registered is not None:
            self.model_version = registered.version
            if registered.threshold is not None:
                self.threshold = registered.threshold

    @property
    def keras_model(self) -> Any:
        """The Keras model that answers (what a warm-started challenger starts from)."""
        return self._model

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        images = image_values(model_input)
        probabilities = self.probabilities(images)
        return pd.DataFrame(
            {
                "probability": probabilities,
                "melanoma": probabilities >= self.threshold,
                "model_version": pd.Series([self.model_version] * len(images), dtype=object),
            }
        )

    def probabilities(self, images: Sequence[Any]) -> np.ndarray:
        if not images:
            return np.zeros(0, dtype=np.float64)
        decoded_images = [decoded(value, self.image_size, row) for row, value in enumerate(images)]
        batch = np.stack(decoded_images).astype(np.float32)
        chunks = [
            np.asarray(self._model.predict_on_batch(batch[start : start + PREDICT_BATCH]))
            for start in range(0, len(batch), PREDICT_BATCH)
        ]
        probabilities = np.concatenate(chunks).reshape(-1).astype(np.float64)
        if not np.isfinite(probabilities).all():  # never let NaN read as "not melanoma"
            raise ModelFault("the model returned a probability that is not a number")
        return probabilities


def image_values(model_input: Any) -> list[Any]:
    """The images of a pyfunc input, one per row."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise InvalidImage(f"expected a column {IMAGE_COLUMN!r}, got {list(model_input)}")
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, dict):
        return list(model_input[IMAGE_COLUMN])
    if isinstance(model_input, np.ndarray) and model_input.ndim == 4:
        return list(model_input)
    if isinstance(model_input, (list, tuple, pd.Series)):
        return list(model_input)
    raise InvalidImage(f"cannot read images from a {type(model_input).__name__}")


def decoded(value: Any, image_size: int, row: int) -> np.ndarray:
    """One image as uint8 RGB at the model's size."""
    import tensorflow as tf

    from pipelines.dataset.tfdata import decode_image, resize_image

    contents = image_bytes(value, row)
    if contents is not None:
        checked = _within_limits(contents, row)
        try:
            return np.asarray(decode_image(checked, image_size))
        except tf.errors.InvalidArgumentError as error:
            reason = str(error.message).splitlines()[0]
            raise InvalidImage(f"not a readable image ({reason})", row) from None
    if isinstance(value, np.ndarray):
        resized: np.ndarray = np.asarray(resize_image(_rgb(value, row), image_size))
        return resized
    raise InvalidImage(
        f"expected image bytes, base64 text or an array, got {type(value).__name__}",
        row,
    )


def image_bytes(value: Any, row: int) -> bytes | None:
    """The encoded image of an input value (base64 text decoded); None for an array.

    Bytes that are base64 text are decoded too: MLflow's `inputs` and `instances` request
    formats hand the text over as bytes. No image format starts with base64 characters only
    (JPEG begins 0xFF 0xD8, PNG 0x89), so the two cannot be confused."""
    if isinstance(value, str):
        return _from_base64(value, row)
    if isinstance(value, (bytes, bytearray, memoryview)):
        contents = bytes(value)
        text = contents.strip()
        if text and _BASE64_BYTES.issuperset(text):
            return _from_base64(text.decode("ascii"), row)
        return contents
    return None


def _within_limits(contents: bytes, row: int) -> bytes:
    """The bytes, once the image's size, format, dimensions and colour mode in its header
    are the intake's: a small file can declare a huge image, and decoding it would exhaust
    the server's memory; a thumbnail or a grey image is no dermoscopic image to judge."""
    from PIL import Image, UnidentifiedImageError

    if not contents:
        raise InvalidImage("empty image", row)
    if len(contents) > RULES.max_file_bytes:
        raise ImageTooLarge(
            f"image of {len(contents):,} bytes is over the limit of {RULES.max_file_bytes:,}",
            row,
        )
    try:
        with Image.open(io.BytesIO(contents)) as header:
            refusal = header_refusal(header, RULES) or colour_refusal(header, RULES)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidImage("not a readable image (unknown image format)", row) from None
    if refusal is not None:
        raise (ImageTooLarge if refusal.too_large else InvalidImage)(refusal.message, row)
    return contents


def _from_base64(text: str, row: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage("text is not base64-encoded image bytes", row) from None


def registered_as(model_file: Path, model_name: str | None = None) -> RegisteredAs | None:
    """The registered version whose run logged this copy of the model, asked of the
    configured tracking server; None when none is configured, the run was never registered,
    or the registry cannot be reached (the copy still predicts, at its logged threshold)."""
    import mlflow
    from mlflow.models import Model

    mlmodel = next((folder / "MLmodel" for folder in model_file.parents
                    if (folder / "MLmodel").is_file()), None)  # fmt: skip
    tracking_uri_set: Callable[[], bool] = mlflow.is_tracking_uri_set
    if mlmodel is None or not tracking_uri_set():
        return None
    return registered_run(Model.load(str(mlmodel)).run_id, model_name)


def registered_run(run_id: str | None, model_name: str | None = None) -> RegisteredAs | None:
    """The newest registered version of a training run's model (under `model_name` when
    known), from the configured registry."""
    from mlflow import MlflowClient

    if not run_id:
        return None
    query = f"run_id = '{run_id}'" + (f" and name = '{model_name}'" if model_name else "")
    try:
        found = MlflowClient().search_model_versions(query)
    except MlflowException as error:
        _log.warning("cannot ask the model registry which version this model is: %s", error)
        return None
    if not found:
        return None
    newest = max(found, key=lambda version: int(version.creation_timestamp or 0))
    threshold = (newest.tags or {}).get("threshold")
    return RegisteredAs(newest.name, str(newest.version), float(threshold) if threshold else None)


def _rgb(array: np.ndarray, row: int) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
        raise InvalidImage(f"expected an array of shape (height, width, 3), got {array.shape}", row)
    if array.shape[0] * array.shape[1] > RULES.max_pixels:
        raise ImageTooLarge(
            f"image of {array.shape[1]}x{array.shape[0]} pixels is over the limit of "
            f"{RULES.max_pixels:,} pixels",
            row,
        )
    rgb: np.ndarray = np.clip(array[..., :3], 0, 255).astype(np.uint8)
    return rgb
