"""The worklist a dermatologist reads, and what `cme screen` accepts as its source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipelines.screening import WORKLIST_COLUMNS, ranked_worklist, thumbnail, worklist_page
from usecases.screening import (
    BatchOutcome,
    ScreeningImage,
    ScreeningSourceError,
    batches,
    progress_line,
    read_source,
    screening_model,
)


def scored(*rows: tuple[str, str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"patient_id": patient, "image": image, "probability": p, "melanoma": p >= 0.3,
          "threshold": 0.3, "model_version": "4", "sha256": image * 2, "lesion_id": None,
          "body_site": None} for patient, image, p in rows]
    )  # fmt: skip


def test_each_patients_images_are_ranked_highest_probability_first():
    worklist = ranked_worklist(scored(("B", "b1", 0.1), ("A", "a1", 0.2), ("A", "a2", 0.9),
                                      ("A", "a3", 0.2), ("B", "b2", 0.7)))  # fmt: skip
    assert tuple(worklist.columns) == WORKLIST_COLUMNS
    assert worklist[["patient_id", "image", "rank"]].values.tolist() == [
        ["A", "a2", 1],
        ["A", "a1", 2],
        ["A", "a3", 3],
        ["B", "b2", 1],
        ["B", "b1", 2],
    ]  # fmt: skip  (ties in image order)
    assert worklist["decision"].tolist() == [
        "melanoma", "not melanoma", "not melanoma", "melanoma", "not melanoma",
    ]  # fmt: skip
    assert ranked_worklist(scored()).empty


def test_the_page_shows_every_patient_and_the_files_not_scored(tmp_path):
    Image.new("RGB", (300, 200), "brown").save(tmp_path / "a.jpg")
    picture = thumbnail((tmp_path / "a.jpg").read_bytes())
    assert picture is not None and picture.startswith("data:image/jpeg;base64,")
    assert thumbnail(b"not an image") is None
    worklist = ranked_worklist(scored(("A", "a1", 0.9), ("B", "<b1>", 0.1)))
    page = worklist_page(worklist, {"a1a1": picture}, [("x.jpg", "not a readable image")], "m 4")
    assert "Patient A: 1 images, 1 called melanoma" in page
    assert "&lt;b1&gt;" in page and "<b1>" not in page  # names are escaped
    assert "x.jpg" in page and "not a readable image" in page


def test_a_folder_is_one_patients_and_a_manifest_may_hold_several(tmp_path):
    (tmp_path / "photos").mkdir()
    for name in ("b.JPG", "a.png", "notes.txt"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    assert read_source(tmp_path / "photos", "P7") == [
        ScreeningImage(str(tmp_path / "photos" / "a.png"), "P7"),
        ScreeningImage(str(tmp_path / "photos" / "b.JPG"), "P7"),
    ]
    manifest = tmp_path / "day.csv"
    manifest.write_text("image,patient_id,body_site\nphotos/a.png,P1,back\nphotos/b.JPG,P2,\n")
    assert read_source(manifest, None) == [
        ScreeningImage(str(tmp_path / "photos" / "a.png"), "P1", None, "back"),
        ScreeningImage(str(tmp_path / "photos" / "b.JPG"), "P2"),
    ]
    assert [image.patient_id for image in read_source(manifest, "P2")] == ["P2"]
    assert [len(batch) for batch in batches(list(range(7)), 3)] == [3, 3, 1]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "patient", "message"),
    [
        (None, None, "a folder of images needs --patient ID"),
        ("image,patient\na.jpg,P1\n", None, "(missing: patient_id)"),
        ("image,patient_id\na.jpg,\n", None, "day.csv, row 2: image and patient_id are required"),
        ("image,patient_id\na.jpg,P1\n", "P9", "no rows of patient P9"),
        ("image,patient_id\na.jpg\n", None, "day.csv, row 2: image and patient_id are required"),
        (f"image,patient_id\na.jpg,{'P' * 129}\n", None, "row 2: patient_id is 129 characters"),
    ],
)
def test_a_source_that_cannot_be_screened_says_why(tmp_path: Path, text, patient, message):
    source = tmp_path / "day.csv" if text is not None else tmp_path
    if text is not None:
        source.write_text(text)
    with pytest.raises(ScreeningSourceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_source(source, patient)


def test_the_runs_log_says_how_far_and_how_fast():
    outcomes = [BatchOutcome(250, 6, (("x.jpg", "unreadable"),)), BatchOutcome(256, 0, ())]
    assert progress_line(outcomes, 10_015, 10.0) == (
        "batches 2: 513 of 10,015 images (506 scored now, 6 before, 1 not scored), 50.6 images/s"
    )


def test_a_run_names_the_version_it_scores_with():
    class Workspace:
        model_name = "melanoma-resnet50"

    class Platform:
        workspace = Workspace()

    model = screening_model(Platform(), "models:/melanoma-resnet50/7")  # type: ignore[arg-type]
    assert (model.uri, model.version) == ("models:/melanoma-resnet50/7", "7")
    for moving in ("models:/melanoma-resnet50/latest", "models:/melanoma-resnet50/Production"):
        with pytest.raises(ScreeningSourceError, match="name a version number"):
            screening_model(Platform(), moving)  # type: ignore[arg-type]
    with pytest.raises(ScreeningSourceError, match="screen with a registered version"):
        screening_model(Platform(), "runs:/abc/model")  # type: ignore[arg-type]
