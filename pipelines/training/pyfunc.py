"""The classifier as an MLflow pyfunc model: a batch of images in, a probability of
melanoma (and the decision at the model's threshold) out.

Input: a DataFrame (or dict) with an `image` column whose values are JPEG/PNG bytes, the
same bytes base64-encoded (what JSON carries), or RGB arrays of shape (height, width, 3).
Images are decoded and resized exactly as in training (`pipelines.dataset.tfdata`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("probability", "melanoma")
KERAS_ARTIFACT = "keras_model"
PREDICT_BATCH = 64


class InvalidImage(ValueError):
    """An input row is not an image the model can read; the message names the row."""


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema(
            [ColSpec(DataType.double, "probability"), ColSpec(DataType.boolean, "melanoma")]
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

    def load_context(self, context: Any) -> None:
        import keras

        import pipelines.training.model  # noqa: F401 (registers the preprocessing layer)

        self._model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        self.image_size = int(context.model_config["image_size"])
        self.threshold = float(context.model_config["threshold"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        images = image_values(model_input)
        probabilities = self.probabilities(images)
        return pd.DataFrame(
            {"probability": probabilities, "melanoma": probabilities >= self.threshold}
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
        return np.concatenate(chunks).reshape(-1).astype(np.float64)


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

    if isinstance(value, str):
        value = _from_base64(value, row)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise InvalidImage(f"row {row}: empty image")
        try:
            return np.asarray(decode_image(bytes(value), image_size))
        except tf.errors.InvalidArgumentError as error:
            reason = str(error.message).splitlines()[0]
            raise InvalidImage(f"row {row}: not a readable image ({reason})") from None
    if isinstance(value, np.ndarray):
        resized: np.ndarray = np.asarray(resize_image(_rgb(value, row), image_size))
        return resized
    raise InvalidImage(
        f"row {row}: expected image bytes, base64 text or an array, got {type(value).__name__}"
    )


def _from_base64(text: str, row: int) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"row {row}: text is not base64-encoded image bytes") from None


def _rgb(array: np.ndarray, row: int) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
        raise InvalidImage(
            f"row {row}: expected an array of shape (height, width, 3), got {array.shape}"
        )
    rgb: np.ndarray = np.clip(array[..., :3], 0, 255).astype(np.uint8)
    return rgb
