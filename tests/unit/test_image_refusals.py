"""What the served model refuses before it decodes anything, and how it says so: the row, the
reason, and an MLflow error kind that scoring servers answer with a 4xx."""

from __future__ import annotations

import base64
import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from pipelines.training import pyfunc
from pipelines.training.pyfunc import ImageTooLarge, InvalidImage, ModelFault, decoded


def encoded(image: Image.Image, format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_a_readable_image_is_decoded_at_the_model_size():
    jpeg = encoded(Image.new("RGB", (90, 60), (200, 120, 80)))
    # raw bytes; base64 text; base64 text as bytes (MLflow's `inputs` and `instances` formats)
    for value in (jpeg, base64.b64encode(jpeg).decode(), base64.b64encode(jpeg)):
        image = decoded(value, 32, row=0)
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert abs(int(image[..., 0].mean()) - 200) <= 3


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (b"", "row 3: empty image"),
        (b"%PDF-1.7 a referral letter", "row 3: not a readable image (unknown image format)"),
        ("%% not base64 %%", "row 3: text is not base64-encoded image bytes"),
        (np.zeros((4, 4, 5), dtype=np.uint8), "row 3: expected an array of shape"),
        (42, "row 3: expected image bytes, base64 text or an array, got int"),
    ],
)
def test_unreadable_input_names_the_row_and_the_reason(value, words):
    with pytest.raises(InvalidImage) as refused:
        decoded(value, 32, row=3)
    assert str(refused.value).startswith(words)
    assert refused.value.row == 3
    assert refused.value.get_http_status_code() == 400


@pytest.mark.parametrize(
    ("image", "format", "words"),
    [
        (
            Image.new("RGB", (1, 1), (200, 120, 80)),
            "PNG",
            "image of 1x1 pixels is outside 32..8000",
        ),
        (Image.new("RGB", (900, 20), (200, 120, 80)), "JPEG", "20 pixels is outside 32..8000"),
        (Image.new("L", (64, 64), 120), "JPEG", "image in colour mode L, not RGB"),
        (Image.new("RGBA", (64, 64), (1, 2, 3, 4)), "PNG", "colour mode RGBA, not RGB"),
        (Image.new("RGB", (64, 64)), "BMP", "image format BMP is not accepted (JPEG, PNG)"),
    ],
)
def test_what_registration_would_refuse_is_not_scored_either(image, format, words):
    """The intake's rules (params.yaml defaults) and validation's colour mode."""
    with pytest.raises(InvalidImage, match=words.replace("(", r"\(").replace(")", r"\)")):
        decoded(encoded(image, format), 32, row=2)


def test_a_truncated_jpeg_is_refused():
    jpeg = encoded(Image.new("RGB", (64, 64), (10, 200, 30)))
    with pytest.raises(InvalidImage, match="row 0: not a readable image"):
        decoded(jpeg[: len(jpeg) // 2], 32, row=0)


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(pyfunc, "RULES", replace(pyfunc.RULES, max_pixels=100 * 100))
    small_file_big_image = encoded(Image.new("RGB", (101, 100)), "PNG")
    with pytest.raises(ImageTooLarge, match=r"row 1: image of 101x100 pixels exceeds 10,000"):
        decoded(small_file_big_image, 32, row=1)
    with pytest.raises(ImageTooLarge, match="101x100 pixels"):
        decoded(np.zeros((100, 101, 3), dtype=np.uint8), 32, row=1)
    assert decoded(encoded(Image.new("RGB", (100, 100)), "PNG"), 32, row=1).shape == (32, 32, 3)


def test_too_many_bytes_are_refused(monkeypatch):
    monkeypatch.setattr(pyfunc, "RULES", replace(pyfunc.RULES, max_file_bytes=1_000))
    jpeg = encoded(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    )
    assert len(jpeg) > 1_000
    with pytest.raises(
        ImageTooLarge, match=r"row 0: image of [\d,]+ bytes is over the limit of 1,000"
    ):
        decoded(jpeg, 32, row=0)


def test_a_probability_that_is_not_a_number_is_never_an_answer():
    class Broken:
        def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
            return np.full((len(batch), 1), np.nan)

    classifier = pyfunc.MelanomaClassifier()
    classifier._model, classifier.image_size = Broken(), 32
    with pytest.raises(ModelFault, match="not a number"):
        classifier.probabilities([encoded(Image.new("RGB", (40, 40)))])
