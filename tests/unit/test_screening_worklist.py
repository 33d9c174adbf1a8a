"""The worklist a dermatologist reads, and what `cme screen` accepts as its source."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pandas as pd
import pytest
from PIL import Image

from pipelines.screening import WORKLIST_COLUMNS, ranked_worklist, thumbnail, worklist_page
from registry.labels.domain import IntakeRules
from usecases.screening import (
    BatchOutcome,
    ScreeningImage,
    ScreeningSourceError,
    batches,
    carried,
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
    assert read_source(str(tmp_path / "photos"), "P7") == [
        ScreeningImage(str(tmp_path / "photos" / "a.png"), "P7"),
        ScreeningImage(str(tmp_path / "photos" / "b.JPG"), "P7"),
    ]
    manifest = tmp_path / "day.csv"
    manifest.write_text("image,patient_id,body_site\nphotos/a.png,P1,back\nphotos/b.JPG,P2,\n")
    assert read_source(str(manifest), None) == [
        ScreeningImage(str(tmp_path / "photos" / "a.png"), "P1", None, "back"),
        ScreeningImage(str(tmp_path / "photos" / "b.JPG"), "P2"),
    ]
    assert [image.patient_id for image in read_source(str(manifest), "P2")] == ["P2"]
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
        read_source(str(source), patient)


def test_a_source_in_an_object_store_is_read_through_fsspec():
    store = fsspec.filesystem("memory")  # in this process, as s3:// would be across machines
    store.pipe("/clinic/photos/a.png", b"a")
    store.pipe("/clinic/photos/b.jpg", b"b")
    store.pipe("/clinic/day.csv", b"image,patient_id\nphotos/a.png,P1\n/elsewhere/c.jpg,P2\n")
    try:
        assert [image.location for image in read_source("memory://clinic/photos", "P7")] == [
            "memory:///clinic/photos/a.png", "memory:///clinic/photos/b.jpg",
        ]  # fmt: skip
        assert [(image.location, image.patient_id) for image in
                read_source("memory://clinic/day.csv", None)] == [
            ("memory:///clinic/photos/a.png", "P1"), ("memory:///elsewhere/c.jpg", "P2"),
        ]  # fmt: skip
        with pytest.raises(ScreeningSourceError, match="memory://clinic/none: no such folder"):
            read_source("memory://clinic/none", "P7")
        with pytest.raises(ScreeningSourceError, match="nosuch://x: cannot open it"):
            read_source("nosuch://x", "P7")
    finally:
        store.rm("/clinic", recursive=True)


def test_carried_images_hold_their_bytes_or_why_they_could_not_be_read(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"a" * 10)
    (tmp_path / "big.jpg").write_bytes(b"b" * 200)
    images = [ScreeningImage(str(tmp_path / name), "P1") for name in ("a.jpg", "big.jpg", "no.jpg")]
    a, big, gone = carried(images, IntakeRules(max_file_bytes=100))
    assert (a.content, a.unreadable) == (b"a" * 10, None)
    assert big.content is None and big.unreadable == "file of 200 bytes is over 100"
    assert gone.content is None and gone.unreadable is not None
    assert gone.unreadable.startswith("cannot read the file (")


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
