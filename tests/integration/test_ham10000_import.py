"""A slice of the real HAM10000 copy goes through the registry as a lab export would."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pytest

from tests.conftest import HAM10000

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not (HAM10000 / "metadata.csv").is_file(),
        reason=f"the shared HAM10000 copy is not at {HAM10000} (see DESIGN.md)",
    ),
]


def ham_slice(tmp_path: Path, rows: int) -> Path:
    """The first `rows` rows of the real metadata, unchanged, with their own images folder."""
    metadata = tmp_path / "HAM10000_metadata.csv"
    with (HAM10000 / "metadata.csv").open(newline="") as source:
        lines = list(itertools.islice(source, rows + 1))
    metadata.write_text("".join(lines))
    return metadata


def test_a_slice_of_ham10000_imports_cleanly_with_its_quirks(registry, tmp_path):
    metadata = ham_slice(tmp_path, 400)
    with metadata.open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    summary = registry.import_metadata(metadata, HAM10000 / "images", steward="ham", batch_size=128)

    assert (summary.registered, summary.quarantined) == (len(rows), 0)
    labels = list(registry.labels())
    assert {image.image_id for image in labels} == {row["image_id"] for row in rows}
    assert all((i.facts.width, i.facts.height, i.facts.mode) == (128, 128, "RGB") for i in labels)
    by_id = {image.image_id: image for image in labels}
    assert sum(1 for r in rows if r["age"] == "") == sum(
        1 for i in labels if i.diagnosis.age is None
    )
    assert {r["lesion_id"] for r in rows} == {i.lesion_id for i in labels}
    sample = rows[17]
    assert by_id[sample["image_id"]].diagnosis.localization == sample["localization"]

    again = registry.import_metadata(metadata, HAM10000 / "images", steward="ham", batch_size=128)
    assert (again.registered, again.unchanged) == (0, len(rows))


def test_a_byte_identical_ham10000_twin_is_quarantined_naming_the_first(registry, tmp_path):
    """HAM10000 lists ISIC_0029861 and ISIC_0024366 as two images; they are one picture."""
    metadata = tmp_path / "twins.csv"
    with (HAM10000 / "metadata.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        twins = [r for r in reader if r["image_id"] in {"ISIC_0024366", "ISIC_0029861"}]
    with metadata.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(twins[0]))
        writer.writeheader()
        writer.writerows(twins)

    summary = registry.import_metadata(metadata, HAM10000 / "images", steward="ham")

    assert (summary.registered, summary.quarantined) == (1, 1)
    first, second = (row["image_id"] for row in twins)
    assert [image.image_id for image in registry.labels()] == [first]
    (held,) = registry.quarantine()
    assert (held.image_id, held.reason_kind) == (second, "duplicate-image")
    assert first in held.reason
