"""Feature extraction's weekly head-only retrain with the feature cache against without
it, on the real HAM10000 copy.

    uv run python bench/feature_cache.py --data ../shared/data/ham10000 [--image-size 64]
        [--epochs 5] [--new-share 0.1]

Registers every image in a throwaway project (SQLite, not timed) and snapshots it, then:

1. last week: feature extraction (ResNet50 frozen, the head alone learns) on the snapshot
   less --new-share of the training lesions, with the cache: it fills the cache;
2. this week, all the training lesions, timed both ways from the same backbone weights:
   with the cache (features computed for the new images only; the head on unaugmented
   images) and without it (every image through the frozen backbone every epoch, augmented);
3. the locked test set: ROC AUC of both heads (what dropping augmentation costs); and on
   the validation images, the cached head's predictions from the features training kept
   against its classifier's from the images (the cached and the uncached path on the same
   weights: the largest difference).

ImageNet weights cannot be had here: the backbone is a randomly initialised ResNet50 saved
as a weights file. The times are those of a pretrained backbone; the ROC AUCs are those of
random features, far below what ImageNet's would give.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from training import cnn_probabilities, project_env, register_and_snapshot, split_summary
from warm_start import earlier_weeks

if TYPE_CHECKING:
    import keras

    from pipelines.training.fit import TrainResult


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--new-share", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cme-bench-cache-") as folder:
        run(args, Path(folder))


def run(args: argparse.Namespace, project: Path) -> None:
    import keras
    from sklearn.metrics import roc_auc_score

    from pipelines.training.config import TrainConfig
    from pipelines.training.fit import train_classifier

    manifest = register_and_snapshot(args.data.resolve(), project, project_env(project))
    print(split_summary(manifest), flush=True)
    data_dir = project / "data"
    weights = project / "resnet50_notop.weights.h5"
    keras.utils.set_random_seed(0)
    shape = (args.image_size, args.image_size, 3)
    keras.applications.ResNet50(include_top=False, weights=None, input_shape=shape).save_weights(
        weights
    )
    config = TrainConfig(image_size=args.image_size, weights=str(weights),
                         approach="feature_extraction", head_epochs=args.epochs, epochs=0,
                         patience=args.epochs)  # fmt: skip
    cache = project / "feature-cache"
    last_week = earlier_weeks(manifest, 1.0 - args.new_share)

    def week(name: str, rows: pd.DataFrame, week_config: TrainConfig) -> tuple[float, TrainResult]:
        print(f"\n{name} ...", flush=True)
        started = time.perf_counter()
        result = train_classifier(
            rows, data_dir, week_config, work_dir=project / "work", feature_cache=cache,
            on_epoch=lambda epoch: print(f"  {epoch.line()}", flush=True),
        )  # fmt: skip
        seconds = time.perf_counter() - started
        print(f"  {seconds:.1f} s; cache: {result.cache_use}", flush=True)
        return seconds, result

    filled, _ = week("last week, filling the cache", last_week, config)
    cached_s, cached = week("this week, with the cache", manifest, config)
    uncached_s, uncached = week("this week, without the cache", manifest,
                                replace(config, feature_cache=False))  # fmt: skip
    test = manifest[manifest["split"] == "test"]
    labels = test["label"].to_numpy()
    cached_p = cnn_probabilities(manifest, data_dir, cached.model, args.image_size)
    uncached_p = cnn_probabilities(manifest, data_dir, uncached.model, args.image_size)
    val = manifest[manifest["split"] == "val"]
    largest = _cached_path_difference(cached.model, val, data_dir, cache, cached_p.val)

    new_train = (manifest["split"] == "train").sum() - (last_week["split"] == "train").sum()
    print(
        f"\n{args.image_size} px, {args.epochs} head epochs, {new_train} new training images "
        f"({args.new_share:.0%} of the training lesions)\n"
        f"last week (cache filled): {filled:.1f} s\n"
        f"this week with the cache: {cached_s:.1f} s; without: {uncached_s:.1f} s; "
        f"ratio {uncached_s / cached_s:.1f}x (goal >= 5x)\n"
        f"locked test ROC AUC, random-weight backbone: cached head (no augmentation) "
        f"{roc_auc_score(labels, cached_p.test):.3f}, uncached head (augmented) "
        f"{roc_auc_score(labels, uncached_p.test):.3f}\n"
        f"cached against uncached path, same weights, {len(val)} validation images: largest "
        f"difference in probability {largest:.2e}"
    )


def _cached_path_difference(
    model: keras.Model, images: pd.DataFrame, data_dir: Path, cache: Path,
    from_images: np.ndarray,
) -> float:  # fmt: skip
    """The head on the features training cached against the classifier on the images."""
    from pipelines.training.feature_cache import FeatureCache
    from pipelines.training.fit import feature_cache_identity
    from pipelines.training.model import feature_extractor

    size = int(feature_extractor(model).input.shape[1])
    identity = feature_cache_identity(model, size, "float32")  # a CPU run's precision
    files = [str(data_dir / path) for path in images["path"]]
    digests = list(images["sha256"].astype(str))

    def uncached(paths: object) -> np.ndarray:
        raise AssertionError(f"training left images uncached: {paths}")

    features, _ = FeatureCache(cache, identity).features(digests, files, uncached)
    from_cache = np.asarray(model.get_layer("melanoma")(features)).ravel()
    return float(np.max(np.abs(from_cache - from_images)))


if __name__ == "__main__":
    main()
