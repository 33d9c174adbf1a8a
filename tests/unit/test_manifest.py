"""The snapshot manifest: lesion-grouped and locked splits, stable content digest, drift."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.dataset.manifest import (
    MANIFEST_COLUMNS,
    ManifestEntry,
    ManifestError,
    build_manifest,
    lesion_splits,
    manifest_digest,
    read_manifest,
    write_manifest,
)
from pipelines.dataset.split import SplitFractions
from pipelines.validation import DriftThresholds, PreviousSnapshot, drift_report


def entry(image: int, lesion: int, dx: str = "nv", **changes: object) -> ManifestEntry:
    values: dict[str, object] = {
        "image_id": f"IMG_{image:04d}", "lesion_id": f"LES_{lesion:04d}", "sha256": f"{image:064x}",
        "path": f"images/{image}.jpg", "dx": dx, "dx_type": "histo", "age": 50.0, "sex": "female",
        "localization": "back", "confirmed_at": datetime(2026, 11, 2, tzinfo=UTC), "width": 64,
        "height": 64, "mode": "RGB", "image_format": "JPEG", "brightness_mean": 130.0,
        "brightness_std": 20.0,
    }  # fmt: skip
    values.update(changes)
    return ManifestEntry(**values)  # type: ignore[arg-type]


lesion_layouts = st.lists(st.integers(0, 40), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(
    lesions=lesion_layouts,
    locked=st.dictionaries(st.integers(0, 40), st.sampled_from(["train", "val", "test"])),
)
def test_no_lesion_is_in_two_splits_and_locked_lesions_keep_theirs(lesions, locked):
    locked_splits = {f"LES_{lesion:04d}": split for lesion, split in locked.items()}
    manifest = build_manifest(
        [entry(i, lesion) for i, lesion in enumerate(lesions)], locked_splits, SplitFractions()
    )

    assert (manifest.groupby("lesion_id")["split"].nunique() == 1).all()
    splits = lesion_splits(manifest)
    assert all(
        splits[lesion] == split for lesion, split in locked_splits.items() if lesion in splits
    )


def test_rows_are_sorted_typed_and_labelled():
    manifest = build_manifest(
        [entry(2, 1, "mel"), entry(1, 1, "mel"), entry(3, 2)], {}, SplitFractions()
    )
    assert list(manifest.columns) == list(MANIFEST_COLUMNS)
    assert list(manifest.image_id) == ["IMG_0001", "IMG_0002", "IMG_0003"]
    assert list(manifest.label) == [1, 1, 0]


def test_the_digest_follows_content_not_arrival_order(tmp_path):
    entries = [entry(i, i // 2) for i in range(10)]
    forward = build_manifest(entries, {}, SplitFractions())
    backward = build_manifest(reversed(entries), {}, SplitFractions())
    changed = build_manifest([*entries[:-1], entry(9, 4, age=51.0)], {}, SplitFractions())
    assert manifest_digest(forward) == manifest_digest(backward) != manifest_digest(changed)

    write_manifest(forward, tmp_path / "manifest.csv")
    assert manifest_digest(read_manifest(tmp_path / "manifest.csv")) == manifest_digest(forward)


def test_a_file_missing_manifest_columns_is_named(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("image_id,lesion_id\nA,B\n")
    with pytest.raises(ManifestError, match=r"manifest.csv: missing manifest column\(s\) sha256"):
        read_manifest(path)


def frame(entries: list[ManifestEntry]) -> pd.DataFrame:
    return build_manifest(entries, {}, SplitFractions())


def test_drift_names_a_shift_in_melanoma_share_among_new_labels():
    before = frame([entry(i, i, "mel" if i % 10 == 0 else "nv") for i in range(100)])
    now = frame([*(entry(i, i, "mel" if i % 10 == 0 else "nv") for i in range(100)),
                 *(entry(i, i, "mel" if i % 2 else "nv") for i in range(100, 140))])  # fmt: skip

    report = drift_report(PreviousSnapshot("S1", before), now, DriftThresholds(min_new_labels=30))

    assert report.new_labels == 40
    assert [check.feature for check in report.warnings] == ["melanoma"]
    assert "10.0% before, 50.0% among new labels" in report.warnings[0].detail


def test_too_few_new_labels_are_reported_but_not_warned_about():
    before = frame([entry(i, i) for i in range(50)])
    now = frame([*(entry(i, i) for i in range(50)), *(entry(i, i, "mel") for i in range(50, 55))])
    report = drift_report(PreviousSnapshot("S1", before), now, DriftThresholds(min_new_labels=30))
    assert report.new_labels == 5 and report.checks and not report.warnings


def test_a_relabel_counts_as_a_new_label_and_no_previous_snapshot_means_no_checks():
    before = frame([entry(i, i) for i in range(5)])
    now = frame([*(entry(i, i) for i in range(4)), entry(4, 4, "bkl")])
    assert drift_report(PreviousSnapshot("S1", before), now, DriftThresholds()).new_labels == 1
    assert drift_report(None, now, DriftThresholds()).checks == ()
