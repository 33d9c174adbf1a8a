"""A generated dermoscopy-like data set in the HAM10000 layout, so that the demo and the
tests have a learnable melanoma task without any download.

Melanoma-like lesions follow the ABCD rule of dermoscopy: Asymmetric, irregular Borders,
several Colours (light and dark brown, black, blue-grey), larger Diameter. Benign ones are
round, evenly brown and smaller. Every image has skin texture, lighting variation, a
dermoscope's vignette and, often, hairs; some lesions are photographed several times.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from registry.labels.domain import METADATA_COLUMNS

# Weights from the HAM10000 metadata, so generated subgroups look like the real ones.
LOCALIZATION_WEIGHTS: dict[str, float] = {
    "back": 2192, "lower extremity": 2077, "trunk": 1404, "upper extremity": 1118,
    "abdomen": 1022, "face": 745, "chest": 407, "foot": 319, "unknown": 234, "neck": 168,
    "scalp": 128, "hand": 90, "ear": 56, "genital": 48, "acral": 7,
}  # fmt: skip

MELANOMA_PALETTE = np.array(
    [[150, 95, 60], [95, 55, 35], [45, 30, 25], [30, 24, 24], [110, 112, 126], [138, 136, 148]],
    dtype=np.float32,
)
BENIGN_BROWNS = np.array([[165, 110, 75], [140, 90, 60], [120, 78, 52]], dtype=np.float32)


@dataclass(frozen=True)
class SampleSpec:
    n: int = 200
    seed: int = 0
    image_size: int = 128
    melanoma_fraction: float = 0.3
    multi_image_lesion_fraction: float = 0.35


@dataclass(frozen=True)
class LesionCase:
    lesion_id: str
    dx: str
    dx_type: str
    age: float
    sex: str
    localization: str
    image_ids: tuple[str, ...]


def write_sample_data(folder: Path, spec: SampleSpec) -> Path:
    """Write `folder/metadata.csv` and `folder/images/<image_id>.jpg`; return the CSV path.

    Each image depends only on the seed and its own position, so the same id always has
    the same bytes, whatever `n` (a larger set extends a smaller one)."""
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    metadata = folder / "metadata.csv"
    temporary = metadata.with_suffix(".csv.part")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METADATA_COLUMNS)
        cases = plan_cases(spec, np.random.default_rng(spec.seed))
        image_number = 0
        for lesion_number, case in enumerate(cases):
            shape_seed = int(
                np.random.SeedSequence([spec.seed, lesion_number]).generate_state(1)[0]
            )
            for image_id in case.image_ids:
                view = np.random.default_rng([spec.seed, image_number, 1])
                image_number += 1
                picture = render_lesion(case.dx == "mel", shape_seed, view, spec.image_size)
                _save_jpeg(picture, images_dir / f"{image_id}.jpg")
                age = f"{case.age:.1f}"
                writer.writerow(
                    [case.lesion_id, image_id, case.dx, case.dx_type, age, case.sex,
                     case.localization]
                )  # fmt: skip
    temporary.replace(metadata)
    return metadata


def plan_cases(spec: SampleSpec, rng: np.random.Generator) -> list[LesionCase]:
    """Lesions with their metadata and image ids, `spec.n` images in all."""
    cases: list[LesionCase] = []
    made = 0
    locations = list(LOCALIZATION_WEIGHTS)
    location_p = np.array(list(LOCALIZATION_WEIGHTS.values()))
    location_p = location_p / location_p.sum()
    while made < spec.n:
        index = len(cases)
        melanoma = bool(rng.random() < spec.melanoma_fraction)
        views = 1
        if rng.random() < spec.multi_image_lesion_fraction:
            views = int(rng.integers(2, 5))
        views = min(views, spec.n - made)
        dx, dx_type = _diagnosis(melanoma, rng)
        age_mean = 62 if melanoma else 46
        age = float(np.clip(round(rng.normal(age_mean, 15) / 5) * 5, 5, 85))
        sex = str(rng.choice(["male", "female", "unknown"], p=[0.52, 0.46, 0.02]))
        cases.append(
            LesionCase(
                lesion_id=f"SYNL_{spec.seed}_{index:05d}",
                dx=dx,
                dx_type=dx_type,
                age=age,
                sex=sex,
                localization=str(rng.choice(locations, p=location_p)),
                image_ids=tuple(f"SYN_{spec.seed}_{made + k:06d}" for k in range(views)),
            )
        )
        made += views
    return cases


def _diagnosis(melanoma: bool, rng: np.random.Generator) -> tuple[str, str]:
    if melanoma:
        return "mel", "histo"
    if rng.random() < 0.75:
        return "nv", str(rng.choice(["histo", "follow_up"], p=[0.7, 0.3]))
    return "bkl", str(rng.choice(["histo", "consensus"], p=[0.6, 0.4]))


def render_lesion(
    melanoma: bool, shape_seed: int, rng: np.random.Generator, size: int
) -> np.ndarray:
    """One photograph (uint8 RGB) of a lesion; `shape_seed` fixes the lesion across views."""
    shape_rng = np.random.default_rng(shape_seed)
    # Atypia: how strongly the ABCD features show. Early melanomas and dysplastic naevi
    # overlap, so the task is learnable but not trivial.
    atypia = shape_rng.beta(4, 2) if melanoma else shape_rng.beta(1.2, 5)
    skin = _skin(rng, size)
    radius, colour_field = _lesion_shape(atypia, shape_rng, rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.normal(0, size * 0.04, 2)
    dy, dx = yy - centre[0], xx - centre[1]
    angle = (np.arctan2(dy, dx) + rng.uniform(0, 2 * math.pi)) % (2 * math.pi)
    boundary = np.interp(angle, np.linspace(0, 2 * math.pi, radius.size), radius)
    distance = np.hypot(dy, dx) / boundary
    edge_softness = 0.18 - 0.12 * atypia
    mask = np.clip((1 - distance) / edge_softness, 0, 1)[..., None]
    pigment = _pigment(atypia, colour_field, distance, shape_rng, size)
    picture = skin * (1 - mask) + pigment * mask
    picture = _add_hairs(picture, rng, size)
    picture *= _lighting(rng, size)
    photograph: np.ndarray = np.clip(picture, 0, 255).astype(np.uint8)
    return photograph


def _skin(rng: np.random.Generator, size: int) -> np.ndarray:
    tone = np.array([228, 184, 162], dtype=np.float32) * rng.uniform(0.82, 1.05)
    tone += rng.normal(0, 6, 3)
    texture = _smooth_noise(rng, size, blur=1.2) * 9 + _smooth_noise(rng, size, blur=6) * 14
    skin: np.ndarray = np.broadcast_to(tone, (size, size, 3)) + texture[..., None]
    return skin


def _lesion_shape(
    atypia: float, shape_rng: np.random.Generator, view_rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Border radius by angle, and a smooth field that places colours inside the lesion."""
    theta = np.linspace(0, 2 * math.pi, 256, endpoint=False)
    base = size * shape_rng.uniform(0.15, 0.24) * (1 + 0.45 * atypia)
    base *= view_rng.uniform(0.92, 1.08)
    radius = np.ones_like(theta)
    for k in range(1, 2 + int(9 * atypia)):
        amplitude = (0.04 + 0.3 * atypia) * shape_rng.uniform(0.2, 1.0) / k**0.8
        radius += amplitude * np.cos(k * theta + shape_rng.uniform(0, 2 * math.pi))
    radius = np.clip(radius, 0.4, None) * base
    colour_field = _smooth_noise(shape_rng, size, blur=size / 14)
    return radius, colour_field


def _pigment(
    atypia: float,
    colour_field: np.ndarray,
    distance: np.ndarray,
    shape_rng: np.random.Generator,
    size: int,
) -> np.ndarray:
    """Evenly brown with a darker centre; atypical lesions add zones of other colours."""
    brown = BENIGN_BROWNS[shape_rng.integers(len(BENIGN_BROWNS))]
    shade = 1 - 0.18 * np.clip(1 - distance, 0, 1)
    even = brown * shade[..., None] + colour_field[..., None] * 4
    zones = round(1 + 3 * atypia)
    if zones < 2:
        return np.asarray(even, dtype=np.float32)
    colours = MELANOMA_PALETTE[shape_rng.choice(len(MELANOMA_PALETTE), zones, replace=False)]
    cuts = np.quantile(colour_field, np.linspace(0, 1, zones + 1)[1:-1])
    mottled = colours[np.digitize(colour_field, cuts)]
    mottled += _smooth_noise(shape_rng, size, blur=2.0)[..., None] * 18
    blend = min(1.0, 0.35 + 0.65 * atypia)
    pigment: np.ndarray = even * (1 - blend) + mottled * blend
    return pigment


def _add_hairs(picture: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    count = int(rng.choice([0, 0, 1, 2, 3, 5, 8]))
    if count == 0:
        return picture
    overlay = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(overlay)
    for _ in range(count):
        start, bend, end = rng.uniform(-0.1, 1.1, (3, 2)) * size
        points = [
            tuple((1 - t) ** 2 * start + 2 * (1 - t) * t * bend + t**2 * end)
            for t in np.linspace(0, 1, 24)
        ]
        draw.line(points, fill=255, width=max(1, round(size / 110)))
    alpha = np.asarray(overlay.filter(ImageFilter.GaussianBlur(0.5)), dtype=np.float32) / 255
    hair_colour = np.array([40, 28, 22], dtype=np.float32)
    result: np.ndarray = (
        picture * (1 - alpha[..., None] * 0.85) + hair_colour * alpha[..., None] * 0.85
    )
    return result


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    vignette = 1 - rng.uniform(0.5, 1.1) * np.clip(np.hypot(yy, xx) - 0.3, 0, None) ** 1.5 * 3
    gradient = 1 + rng.normal(0, 0.06) * xx + rng.normal(0, 0.06) * yy
    cast = rng.uniform(0.93, 1.07, 3)
    exposure = rng.uniform(0.85, 1.1)
    light: np.ndarray = (np.clip(vignette, 0.2, 1) * gradient)[..., None] * cast * exposure
    return light


def _smooth_noise(rng: np.random.Generator, size: int, blur: float) -> np.ndarray:
    """Zero-mean noise of unit spread, smoothed at `blur` pixels."""
    noise = rng.normal(128, 40, (size, size)).clip(0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(blur)), np.float32)
    spread = float(smooth.std()) or 1.0
    result: np.ndarray = (smooth - smooth.mean()) / spread
    return result


def _save_jpeg(picture: np.ndarray, path: Path) -> None:
    temporary = path.with_name(path.name + ".part")
    Image.fromarray(picture, "RGB").save(temporary, format="JPEG", quality=92)
    temporary.replace(path)
