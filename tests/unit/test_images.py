"""Facts measured at registration, and the refusals that protect the store."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from registry.labels import IntakeRules, RejectedSubmission
from registry.labels.images import inspect_image


def encode(image: Image.Image, image_format: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


def test_facts_describe_the_pixels():
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, 30:] = 200
    facts = inspect_image(encode(Image.fromarray(pixels), "PNG"), IntakeRules())
    assert (facts.width, facts.height, facts.format, facts.mode) == (60, 40, "PNG", "RGB")
    assert facts.brightness_mean == pytest.approx(100, abs=1)
    assert facts.brightness_std == pytest.approx(100, abs=1)
    assert len(facts.sha256) == 64


def test_a_grey_image_is_recorded_as_such_for_validation_to_judge():
    facts = inspect_image(encode(Image.new("L", (64, 64), 120)), IntakeRules())
    assert facts.mode == "L" and facts.brightness_std == 0


@pytest.mark.parametrize(
    ("size", "reason_kind"), [((16, 64), "size-out-of-bounds"), ((9000, 40), "size-out-of-bounds")]
)
def test_size_bounds(size, reason_kind):
    with pytest.raises(RejectedSubmission) as refusal:
        inspect_image(encode(Image.new("RGB", size), "PNG"), IntakeRules())
    assert refusal.value.reason_kind == reason_kind


def test_pixel_limit_is_checked_before_decoding():
    content = encode(Image.new("RGB", (300, 300)), "PNG")
    with pytest.raises(RejectedSubmission, match="exceeds 50,000 pixels") as refusal:
        inspect_image(content, IntakeRules(max_pixels=50_000))
    assert refusal.value.reason_kind == "too-large"


def test_other_formats_are_refused():
    with pytest.raises(RejectedSubmission, match="GIF is not accepted"):
        inspect_image(encode(Image.new("RGB", (64, 64)), "GIF"), IntakeRules())
