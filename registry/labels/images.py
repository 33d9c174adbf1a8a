"""Decode a submitted image safely and measure the facts recorded at registration."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.image_rules import ACCEPTED_FORMATS, colour_refusal, header_refusal
from registry.labels.domain import ImageFacts, IntakeRules
from registry.labels.errors import RejectedSubmission


def inspect_image(content: bytes, rules: IntakeRules) -> ImageFacts:
    """Return the image's facts, or raise RejectedSubmission saying why it cannot be stored.

    The size is checked from the header before any pixel is decoded, so a decompression
    bomb (a small file that expands to gigabytes) is refused without being expanded.
    """
    with _header_checked(content, rules) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise RejectedSubmission("undecodable", f"image cannot be decoded: {error}") from None
        luminance = np.asarray(image.convert("L"), dtype=np.float32)
        return ImageFacts(
            sha256=hashlib.sha256(content).hexdigest(),
            width=image.width,
            height=image.height,
            format=str(image.format),
            mode=image.mode,
            byte_size=len(content),
            brightness_mean=round(float(luminance.mean()), 3),
            brightness_std=round(float(luminance.std()), 3),
        )


def check_header(content: bytes, rules: IntakeRules, *, colour: bool = False) -> None:
    """Refuse, from the header alone (no pixel decoded), what registration would refuse for
    its format or size, and with `colour` what validation would for its colour mode: for a
    path that decodes the image itself afterwards (scoring)."""
    with _header_checked(content, rules) as image:
        refusal = colour_refusal(image, rules) if colour else None
    if refusal is not None:
        raise RejectedSubmission(refusal.kind, refusal.message)


@contextmanager
def _header_checked(content: bytes, rules: IntakeRules) -> Iterator[Image.Image]:
    """The opened image (nothing decoded yet) once its header passes the rules."""
    if not content:
        raise RejectedSubmission("empty-file", "image file is empty (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _opened(content) as image:
            _check_header(image, rules)
            yield image


def _opened(content: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(content))
    except Image.DecompressionBombError as error:
        raise RejectedSubmission(
            "too-large", f"image too large to decode safely: {error}"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RejectedSubmission("not-an-image", "file is not a readable image") from None


def _check_header(image: Image.Image, rules: IntakeRules) -> None:
    refusal = header_refusal(image, rules)
    if refusal is not None:
        raise RejectedSubmission(refusal.kind, refusal.message)


def file_extension(image_format: str) -> str:
    return ACCEPTED_FORMATS[image_format]
