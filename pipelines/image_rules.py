"""What a file must be for the platform to take it as a dermoscopic image, in every path
that takes one: registration (the label registry's intake), scoring (`cme predict`, `cme
serve`, `cme screen`). Checked from the image's header, before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

ACCEPTED_FORMATS: dict[str, str] = {"JPEG": "jpg", "PNG": "png"}


@dataclass(frozen=True)
class ImageRules:
    """The bounds of params.yaml `intake` (and `validate.image_modes`), with their defaults."""

    max_pixels: int = 40_000_000
    max_file_bytes: int = 50_000_000
    min_side: int = 32
    max_side: int = 8000
    image_modes: tuple[str, ...] = ("RGB",)


@dataclass(frozen=True)
class ImageRefusal:
    kind: str  # a short code, e.g. size-out-of-bounds
    message: str
    too_large: bool = False


def header_refusal(image: Image.Image, rules: ImageRules) -> ImageRefusal | None:
    """Why an image whose header is read cannot be taken, or None. The colour mode is left
    to the caller: registration records it for validation to judge (a whole snapshot's
    report), scoring refuses at once (`colour_refusal`)."""
    if image.format not in ACCEPTED_FORMATS:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS))
        return ImageRefusal(
            "unsupported-format", f"image format {image.format} is not accepted ({accepted})"
        )
    width, height = image.size
    if width * height > rules.max_pixels:
        return ImageRefusal(
            "too-large",
            f"image of {width}x{height} pixels exceeds {rules.max_pixels:,} pixels "
            "(refused as a possible decompression bomb)",
            too_large=True,
        )
    if min(width, height) < rules.min_side or max(width, height) > rules.max_side:
        return ImageRefusal(
            "size-out-of-bounds",
            f"image of {width}x{height} pixels is outside "
            f"{rules.min_side}..{rules.max_side} px a side",
        )
    return None


def colour_refusal(image: Image.Image, rules: ImageRules) -> ImageRefusal | None:
    if image.mode in rules.image_modes:
        return None
    return ImageRefusal(
        "not-colour",
        f"image in colour mode {image.mode}, not {' or '.join(rules.image_modes)}: "
        "a dermoscopic image is a colour photograph",
    )
