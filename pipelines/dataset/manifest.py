"""The snapshot manifest: one row per image, the frozen input of training and evaluation.

A manifest is a pandas DataFrame with `MANIFEST_COLUMNS`, sorted by image_id, and is stored
as CSV. Its digest (sha256 of the CSV bytes) identifies its content: two manifests with
the same digest train the same model.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipelines.dataset.split import SPLITS, Split, SplitFractions, assign_lesion_splits
from pipelines.errors import BadInput

MELANOMA = "mel"

IDENTITY_COLUMNS = ("image_id", "lesion_id", "sha256", "path", "label", "split")
CLINICAL_COLUMNS = ("dx", "dx_type", "age", "sex", "localization", "confirmed_at")
IMAGE_FACT_COLUMNS = (
    "width", "height", "mode", "image_format", "brightness_mean", "brightness_std",
)  # fmt: skip
MANIFEST_COLUMNS: tuple[str, ...] = (*IDENTITY_COLUMNS, *CLINICAL_COLUMNS, *IMAGE_FACT_COLUMNS)

_DTYPES: dict[str, str] = {
    "image_id": "string",
    "lesion_id": "string",
    "sha256": "string",
    "path": "string",
    "label": "int64",
    "split": "string",
    "dx": "string",
    "dx_type": "string",
    "age": "float64",
    "sex": "string",
    "localization": "string",
    "confirmed_at": "string",
    "width": "int64",
    "height": "int64",
    "mode": "string",
    "image_format": "string",
    "brightness_mean": "float64",
    "brightness_std": "float64",
}


class ManifestError(BadInput, ValueError):
    """A manifest file cannot be read as a manifest; the message names the file and why."""


@dataclass(frozen=True)
class ManifestEntry:
    """One confirmed label with the facts of its image, as the label registry holds it."""

    image_id: str
    lesion_id: str
    sha256: str
    path: str
    dx: str
    dx_type: str
    age: float | None
    sex: str
    localization: str
    confirmed_at: datetime
    width: int
    height: int
    mode: str
    image_format: str
    brightness_mean: float
    brightness_std: float


def build_manifest(
    entries: Iterable[ManifestEntry],
    locked_splits: Mapping[str, str],
    fractions: SplitFractions,
) -> pd.DataFrame:
    """The manifest of `entries`, each lesion in its locked split or, when new, the one the
    stable hash gives it."""
    records = [_record(entry) for entry in entries]
    frame = pd.DataFrame.from_records(
        records, columns=[c for c in MANIFEST_COLUMNS if c != "split"]
    )
    locked = {lesion: _split(split) for lesion, split in locked_splits.items()}
    splits = assign_lesion_splits(frame["lesion_id"].unique(), locked, fractions)
    frame["split"] = frame["lesion_id"].map(splits)
    return _normalized(frame)


def _record(entry: ManifestEntry) -> dict[str, object]:
    return {
        "image_id": entry.image_id,
        "lesion_id": entry.lesion_id,
        "sha256": entry.sha256,
        "path": entry.path,
        "label": int(entry.dx == MELANOMA),
        "dx": entry.dx,
        "dx_type": entry.dx_type,
        "age": entry.age,
        "sex": entry.sex,
        "localization": entry.localization,
        "confirmed_at": entry.confirmed_at.isoformat(),
        "width": entry.width,
        "height": entry.height,
        "mode": entry.mode,
        "image_format": entry.image_format,
        "brightness_mean": entry.brightness_mean,
        "brightness_std": entry.brightness_std,
    }


def _normalized(frame: pd.DataFrame) -> pd.DataFrame:
    ordered = frame.loc[:, list(MANIFEST_COLUMNS)].astype(_DTYPES)
    return ordered.sort_values("image_id", kind="stable").reset_index(drop=True)


def manifest_csv(manifest: pd.DataFrame) -> bytes:
    buffer = io.StringIO()
    manifest.to_csv(buffer, index=False, lineterminator="\n", float_format="%.6g")
    return buffer.getvalue().encode("utf-8")


def manifest_digest(manifest: pd.DataFrame) -> str:
    return hashlib.sha256(manifest_csv(manifest)).hexdigest()


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    write_atomically(path, manifest_csv(manifest))


def write_atomically(path: Path, content: bytes) -> None:
    """A reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(content)
    partial.replace(path)


def read_manifest(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        frame = pd.read_csv(path, dtype={c: "string" for c in ("image_id", "lesion_id", "sha256")})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: not a readable CSV manifest: {error}") from None
    missing = [column for column in MANIFEST_COLUMNS if column not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: missing manifest column(s) {', '.join(missing)}")
    return frame


def lesion_splits(manifest: pd.DataFrame) -> dict[str, Split]:
    """Each lesion's split; a manifest that puts one lesion in two splits fails validation
    before this is asked."""
    pairs = manifest.drop_duplicates("lesion_id")[["lesion_id", "split"]]
    return {str(lesion): _split(str(split)) for lesion, split in pairs.itertuples(index=False)}


def _split(value: str) -> Split:
    for split in SPLITS:
        if value == split:
            return split
    raise ManifestError(f"unknown split {value!r}; expected one of {', '.join(SPLITS)}")
