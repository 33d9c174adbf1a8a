"""The pre-screening worklist a dermatologist reads: each patient's images ranked by the
model's probability of melanoma, highest first, with the decision at the version's operating
threshold; as CSV, JSON and a self-contained HTML page of thumbnails."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from pipelines.pages import render_page

WORKLIST_COLUMNS = (
    "rank", "patient_id", "image", "probability", "decision", "threshold", "model_version",
    "sha256", "lesion_id", "body_site",
)  # fmt: skip
THUMBNAIL_SIDE = 128


def ranked_worklist(scored: pd.DataFrame) -> pd.DataFrame:
    """Per patient, the images by probability of melanoma, highest first (rank 1), ties in
    image order; columns WORKLIST_COLUMNS. `scored` has every column but rank and decision,
    and `melanoma` (the decision at the threshold) instead."""
    if scored.empty:
        return pd.DataFrame(columns=list(WORKLIST_COLUMNS))
    ordered = scored.sort_values(
        ["patient_id", "probability", "image"], ascending=[True, False, True], kind="stable"
    ).reset_index(drop=True)
    ordered["rank"] = ordered.groupby("patient_id").cumcount() + 1
    ordered["decision"] = ordered["melanoma"].map({True: "melanoma", False: "not melanoma"})
    return ordered[list(WORKLIST_COLUMNS)]


def thumbnail(content: bytes, side: int = THUMBNAIL_SIDE) -> str | None:
    """A small JPEG of the image as a data URI, for the page; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content)) as image:
            image.thumbnail((side, side))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def worklist_page(
    worklist: pd.DataFrame,
    thumbnails: Mapping[str, str | None],
    refused: Sequence[tuple[str, str]],
    model: str,
) -> str:
    """The HTML worklist: a section per patient, a card per image (thumbnail, rank,
    probability, decision), highest probability first; then the files not scored and why."""
    patients: dict[str, list[dict[str, Any]]] = {}
    for row in worklist.to_dict("records"):
        row["thumbnail"] = thumbnails.get(row["sha256"])
        patients.setdefault(str(row["patient_id"]), []).append(row)
    return render_page(
        "worklist.html.j2",
        title=f"Pre-screening worklist ({model})",
        model=model,
        patients=patients,
        refused=list(refused),
    )
