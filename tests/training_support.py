"""Generated training data for the training tests: a manifest over sample images, split by
lesion like a snapshot, without the label registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.dataset.manifest import MELANOMA
from pipelines.dataset.split import SplitFractions, assign_lesion_splits
from pipelines.training.backbones import ConvnetShape
from pipelines.training.config import TrainConfig
from usecases.sample_data import SampleSpec, write_sample_data

# The flows, the registries, the gate, serving and the lineage do not depend on the network:
# the tests that exercise them use the small convnet (seconds), not ResNet50 (a minute of
# graph building on two cores for each training, a 90-MB model to log and load). ResNet50's
# own training, warm start and serving are tested where they are the subject
# (test_backbones, test_classifier, test_warm_start).
TINY_CONVNET = ConvnetShape(filters=(8, 16, 32), dense_units=16)
TINY_TRAINING = {
    "approach": "convnet", "convnet_filters": list(TINY_CONVNET.filters),
    "convnet_dense_units": TINY_CONVNET.dense_units,
    "image_size": 32, "batch_size": 16, "weights": "none", "unfreeze_from": "all",
    "head_epochs": 0, "epochs": 2, "learning_rate": 0.001, "patience": 2,
}  # fmt: skip


def tiny_network(seed: int = 0, **settings: Any) -> TrainConfig:
    """The tests' small convnet at 32 px from scratch, as a training configuration."""
    return TrainConfig(approach="convnet", convnet=TINY_CONVNET, image_size=32, weights="none",
                       unfreeze_from="all", seed=seed, **settings)  # fmt: skip


# A tiny model from scratch cannot meet the real floors; the rules are tested in test_gate.
LENIENT_GATE = {
    "sensitivity_floor": 0.0, "specificity_floor": 0.0, "first_model_roc_auc": 0.0,
    "first_model_f1": 0.0,
    "roc_auc": "point", "f1": "point", "max_subgroup_drop": 1.0,
}  # fmt: skip
QUICK_EVALUATION = {"bootstrap_iterations": 200, "min_subgroup_images": 5}


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
