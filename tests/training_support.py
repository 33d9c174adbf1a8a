"""Generated training data for the training tests: a manifest over sample images, split by
lesion like a snapshot, without the label registry."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines.dataset.manifest import MELANOMA
from pipelines.dataset.split import SplitFractions, assign_lesion_splits
from pipelines.sample_data import SampleSpec, write_sample_data


def sample_manifest(folder: Path, n: int, seed: int = 11, image_size: int = 64) -> pd.DataFrame:
    """Write `n` generated images under `folder/images/` and return a manifest whose paths
    are relative to `folder` (the data folder)."""
    write_sample_data(folder, SampleSpec(n=n, seed=seed, image_size=image_size))
    manifest = pd.read_csv(folder / "metadata.csv")
    manifest["path"] = "images/" + manifest["image_id"] + ".jpg"
    manifest["label"] = (manifest["dx"] == MELANOMA).astype(int)
    fractions = SplitFractions(train=0.6, val=0.2, test=0.2)
    splits = assign_lesion_splits(manifest["lesion_id"].unique(), {}, fractions)
    manifest["split"] = manifest["lesion_id"].map(splits)
    return manifest
