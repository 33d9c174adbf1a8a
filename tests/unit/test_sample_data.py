"""The generated set: HAM10000 layout, reproducible, and a learnable melanoma task."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from registry.labels import DIAGNOSES, LABEL_SOURCES, LOCALIZATIONS, METADATA_COLUMNS
from tests.conftest import read_rows
from usecases.sample_data import SampleSpec, write_sample_data


def digest(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (folder / "images").iterdir()
    }


def test_layout_and_metadata_follow_ham10000(generated_set):
    rows = read_rows(generated_set / "metadata.csv")
    header = (generated_set / "metadata.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == METADATA_COLUMNS
    assert len(rows) == 24
    for row in rows:
        assert row["dx"] in DIAGNOSES and row["dx_type"] in LABEL_SOURCES
        assert row["localization"] in LOCALIZATIONS
        image = Image.open(generated_set / "images" / f"{row['image_id']}.jpg")
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
        if row["dx"] == "mel":
            assert row["dx_type"] == "histo"
    lesions = [row["lesion_id"] for row in rows]
    assert len(set(lesions)) < len(lesions)  # some lesions have several images


def test_a_larger_set_extends_a_smaller_one_with_the_same_bytes(tmp_path):
    write_sample_data(tmp_path / "small", SampleSpec(n=4, seed=2, image_size=48))
    write_sample_data(tmp_path / "large", SampleSpec(n=9, seed=2, image_size=48))
    small, large = digest(tmp_path / "small"), digest(tmp_path / "large")
    assert small == {name: large[name] for name in small}
    assert (
        read_rows(tmp_path / "small" / "metadata.csv")
        == read_rows(tmp_path / "large" / "metadata.csv")[:4]
    )


def test_same_seed_same_images_other_seed_other_ids(tmp_path):
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((first, 3), (again, 3), (other, 4)):
        write_sample_data(folder, SampleSpec(n=5, seed=seed, image_size=48))
    assert digest(first) == digest(again)
    assert not set(digest(first)) & set(digest(other))


def test_melanoma_is_learnable_from_colour_alone(tmp_path):
    write_sample_data(tmp_path, SampleSpec(n=120, seed=11, image_size=64))
    rows = read_rows(tmp_path / "metadata.csv")
    spread, melanoma = [], []
    for row in rows:
        pixels = np.asarray(Image.open(tmp_path / "images" / f"{row['image_id']}.jpg"), np.float32)
        centre = pixels[16:48, 16:48].reshape(-1, 3)
        spread.append(float(centre.std(axis=0).mean() + (centre[:, 2] - centre[:, 0]).mean()))
        melanoma.append(row["dx"] == "mel")
    scores, labels = np.array(spread), np.array(melanoma)
    positives, negatives = scores[labels], scores[~labels]
    auc = (positives[:, None] > negatives[None, :]).mean()
    assert 20 < labels.sum() < 60
    assert 0.75 < auc < 0.999  # learnable, yet not a trivially separable toy
