"""Every validation rule fails on a manifest crafted to break it, and only that rule; a sound
manifest passes them all. Great Expectations runs for real, in memory."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from pipelines.dataset.manifest import ManifestEntry, build_manifest
from pipelines.dataset.split import SplitFractions
from pipelines.validation import DriftThresholds, ManifestBounds, ValidationReport
from pipelines.validation.suites import expectations
from pipelines.validation.validate import validate_manifest
from registry.labels.domain import DIAGNOSES, LABEL_SOURCES, LOCALIZATIONS, SEXES

VOCABULARY = {
    "dx": DIAGNOSES,
    "dx_type": LABEL_SOURCES,
    "sex": SEXES,
    "localization": LOCALIZATIONS,
}
BOUNDS = ManifestBounds(min_melanoma=5, melanoma_share_min=0.1, melanoma_share_max=0.5)


def sound_manifest() -> pd.DataFrame:
    """48 images of 24 lesions (two views each), a quarter of the lesions melanoma; each
    split holds 8 lesions, 2 of them melanoma."""
    entries = [
        ManifestEntry(
            image_id=f"IMG_{i:03d}",
            lesion_id=f"LES_{i // 2:03d}",
            sha256=f"{i:064x}",
            path=f"images/{i:03d}.jpg",
            dx="mel" if (i // 2) % 4 == 0 else "nv",
            dx_type="histo",
            age=float(20 + i),
            sex=("male", "female")[i % 2],
            localization="back",
            confirmed_at=datetime(2026, 11, 1, tzinfo=UTC),
            width=64,
            height=64,
            mode="RGB",
            image_format="JPEG",
            brightness_mean=120.0 + i,
            brightness_std=25.0,
        )
        for i in range(48)
    ]
    splits = {f"LES_{n:03d}": ("train", "val", "test")[(n // 4) % 3] for n in range(24)}
    return build_manifest(entries, splits, SplitFractions())


def first_lesion_in(manifest: pd.DataFrame, split: str) -> str:
    return str(manifest.loc[manifest["split"] == split, "lesion_id"].iloc[0])


def set_value(column: str, value: object, row: int = 3) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame

    return mutate


def second_diagnosis(frame: pd.DataFrame) -> pd.DataFrame:
    lesion = frame.loc[frame["dx"] == "nv", "lesion_id"].iloc[0]
    frame.loc[frame.index[frame["lesion_id"] == lesion][0], "dx"] = "bkl"
    return frame


def second_split(frame: pd.DataFrame) -> pd.DataFrame:
    row = frame.index[0]
    frame.loc[row, "split"] = "test" if frame.loc[row, "split"] != "test" else "train"
    return frame


def duplicate(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[1, column] = frame.loc[0, column]
        return frame

    return mutate


def too_few_melanoma(frame: pd.DataFrame) -> pd.DataFrame:
    """Two melanoma lesions of two images each: 4 < BOUNDS.min_melanoma, share still 10%."""
    kept = frame.loc[frame["dx"] == "mel", "lesion_id"].unique()[:2]
    demoted = (frame["dx"] == "mel") & ~frame["lesion_id"].isin(kept)
    frame.loc[demoted, ["dx", "label"]] = ["nv", 0]
    return frame


def split_without_class(dx: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The test split's lesions of one class relabelled as the other class."""

    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        melanoma = dx == "mel"
        rows = (frame["split"] == "test") & ((frame["dx"] == "mel") == melanoma)
        frame.loc[rows, ["dx", "label"]] = ["nv", 0] if melanoma else ["mel", 1]
        return frame

    return mutate


def all_melanoma(frame: pd.DataFrame) -> pd.DataFrame:
    frame["dx"], frame["label"] = "mel", 1
    return frame


BREAKS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "manifest columns": lambda frame: frame.assign(notes="x"),
    "image_id present": set_value("image_id", None),
    "lesion_id present": set_value("lesion_id", None),
    "sha256 present": set_value("sha256", None),
    "path present": set_value("path", None),
    "label present": set_value("label", None),
    "split present": set_value("split", None),
    "dx present": set_value("dx", None),
    "dx_type present": set_value("dx_type", None),
    "dx in vocabulary": set_value("dx", "melanoma?"),
    "dx_type in vocabulary": set_value("dx_type", "biopsy"),
    "sex in vocabulary": set_value("sex", "M"),
    "localization in vocabulary": set_value("localization", "elbow"),
    "split is train, val or test": lambda f: f.assign(split=f["split"].replace("val", "holdout")),
    "label is 0 or 1": set_value("label", 2),
    "label agrees with dx": lambda frame: frame.assign(label=1 - frame["label"]),
    "age within range": set_value("age", 131.0),
    "image_id unique": duplicate("image_id"),
    "sha256 unique": duplicate("sha256"),
    "sha256 well formed": set_value("sha256", "not-a-digest"),
    "one diagnosis per lesion": second_diagnosis,
    "no lesion in two splits": second_split,
    "locked splits kept": lambda frame: frame,  # broken through the locked splits instead
    "melanoma share within bounds": all_melanoma,
    "enough melanoma": too_few_melanoma,
    "melanoma lesions in every split": split_without_class("mel"),
    "other lesions in every split": split_without_class("nv"),
    "decodable JPEG or PNG": set_value("image_format", "GIF"),
    "colour mode": set_value("mode", "L"),
    "width within bounds": set_value("width", 16),
    "height within bounds": set_value("height", 9000),
    "not blank or saturated": set_value("brightness_mean", 2.0),
    "not flat": set_value("brightness_std", 0.5),
    "image file in the store": lambda frame: frame,  # broken by deleting a file instead
}
# Rules a broken manifest cannot help failing besides the one it targets.
ALSO_FAILS: dict[str, set[str]] = {
    "manifest columns": set(),
    "image_id present": {"image_id unique"},
    "sha256 present": {"sha256 unique", "sha256 well formed"},
    "lesion_id present": {"one diagnosis per lesion", "no lesion in two splits"},
    "split present": {
        "split is train, val or test",
        "no lesion in two splits",
        "melanoma lesions in every split",
        "other lesions in every split",
    },
    "label present": {"label agrees with dx", "label is 0 or 1"},
    "dx present": {"dx in vocabulary", "label agrees with dx"},
    "dx in vocabulary": {"one diagnosis per lesion"},
    "label is 0 or 1": {"label agrees with dx"},
    "label agrees with dx": {"melanoma share within bounds", "enough melanoma"},
    "image_id unique": set(),
    "one diagnosis per lesion": set(),
    "melanoma share within bounds": {"one diagnosis per lesion", "other lesions in every split"},
    "enough melanoma": {"melanoma lesions in every split", "melanoma share within bounds"},
    "melanoma lesions in every split": {"enough melanoma", "melanoma share within bounds"},
    "other lesions in every split": {"melanoma share within bounds"},
    "path present": {"image file in the store"},
}


def run(frame: pd.DataFrame, tmp_path: Path, **overrides: object) -> ValidationReport:
    options: dict[str, object] = {
        "subject": "crafted manifest",
        "bounds": BOUNDS,
        "vocabulary": VOCABULARY,
        "locked_splits": {},
        "data_dir": None,
        "docs_dir": None,
        "previous": None,
        "drift_thresholds": DriftThresholds(),
        **overrides,
    }
    return validate_manifest(frame, **options)  # type: ignore[arg-type]


def test_every_rule_has_a_crafted_break() -> None:
    assert {rule.rule for rule in expectations(BOUNDS, VOCABULARY)} == set(BREAKS)


def test_a_sound_manifest_passes_every_rule(tmp_path: Path) -> None:
    report = run(sound_manifest(), tmp_path)
    assert report.success, report.summary_lines()
    assert len(report.results) == len(BREAKS)


@pytest.mark.parametrize(
    "rule", sorted(set(BREAKS) - {"locked splits kept", "image file in the store"})
)
def test_a_crafted_break_fails_its_rule_and_names_the_rows(rule: str, tmp_path: Path) -> None:
    report = run(BREAKS[rule](sound_manifest()), tmp_path)
    failed = {result.rule for result in report.failed}
    assert rule in failed
    assert failed - {rule} <= ALSO_FAILS.get(rule, set())
    result = next(r for r in report.failed if r.rule == rule)
    if result.unexpected_count:
        assert result.examples and all(e.startswith("image_id ") for e in result.examples)


def test_moving_a_locked_lesion_fails_and_names_it(tmp_path: Path) -> None:
    manifest = sound_manifest()
    lesion = first_lesion_in(manifest, "train")
    report = run(manifest, tmp_path, locked_splits={lesion: "test"})
    assert [r.rule for r in report.failed] == ["locked splits kept"]
    assert f"(lesion {lesion})" in report.failed[0].examples[0]


def test_an_image_missing_from_the_store_fails(tmp_path: Path) -> None:
    manifest = sound_manifest()
    for path in manifest["path"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"jpeg")
    assert run(manifest, tmp_path, data_dir=tmp_path).success
    (tmp_path / manifest.loc[5, "path"]).unlink()
    report = run(manifest, tmp_path, data_dir=tmp_path)
    assert [r.rule for r in report.failed] == ["image file in the store"]
    assert report.failed[0].examples == (
        f"image_id {manifest.loc[5, 'image_id']}: image_file_present = False",
    )


def test_data_docs_html_is_written(tmp_path: Path) -> None:
    report = run(BREAKS["age within range"](sound_manifest()), tmp_path, docs_dir=tmp_path / "docs")
    assert report.data_docs == tmp_path / "docs" / "index.html"
    assert report.data_docs.is_file()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert pages and any("age" in page.read_text(encoding="utf-8") for page in pages)
