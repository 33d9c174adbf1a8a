"""A warm-started week against a retrain from scratch, on the real HAM10000 copy.

    uv run python bench/warm_start.py --data ../shared/data/ham10000 [--image-size 64]
        [--epochs 32] [--warm-epochs 6] [--grid 1.0:0.0 0.5:0.01 ...]

Registers every image in a throwaway project (SQLite, not timed) and snapshots it, then:

1. the champion: the from-scratch recipe (bench/training.py) for --epochs on 80% of the
   training lesions (the weeks before this one), validation and test splits unchanged;
2. the warm week: from the champion, on all the training lesions, for --warm-epochs, once
   for each shrink:perturb pair of --grid (Ash and Adams' shrink and perturb);
3. the baseline: the same recipe from scratch for --epochs on all the training lesions.

Prints each model's locked-test ROC AUC, the warm weeks' difference from the baseline
(lesion-clustered DeLong, 95% CI) and their training time as a share of the baseline's
(targets: at most 1/5 of the compute, no more than 0.01 below).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from training import (
    SCRATCH_RECIPE,
    cnn_probabilities,
    project_env,
    register_and_snapshot,
    split_summary,
)

if TYPE_CHECKING:
    import keras

    from pipelines.training.config import TrainConfig

CHAMPION_SHARE = 0.8
DEFAULT_GRID = ("1.0:0.0", "0.5:0.01", "0.3:0.01", "0.5:0.1")
# A weight average over 0.999 of the steps forgets its start over ~1,000 steps: longer than a
# warm week. 0.99 forgets it over ~100, so the week is judged on what it learnt.
WARM_EMA_MOMENTUM = 0.99


@dataclass(frozen=True)
class Trained:
    name: str
    seconds: float
    test: np.ndarray
    model: keras.Model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=32)
    parser.add_argument("--warm-epochs", type=int, default=6)
    parser.add_argument("--grid", nargs="*", default=list(DEFAULT_GRID), metavar="SHRINK:PERTURB")
    parser.add_argument("--keep", type=Path, help="build the throwaway project here and keep it")
    args = parser.parse_args()
    if not (args.data / "metadata.csv").is_file():
        sys.exit(f"no HAM10000 copy at {args.data} (metadata.csv missing)")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        run(args, args.keep.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="cme-bench-warm-") as folder:
        run(args, Path(folder))


def run(args: argparse.Namespace, project: Path) -> None:
    manifest = register_and_snapshot(args.data, project, project_env(project))
    print(split_summary(manifest), flush=True)
    data_dir = project / "data"
    config = recipe(args.image_size, args.epochs)
    earlier = earlier_weeks(manifest, CHAMPION_SHARE)
    champion = trained("champion (80% of lesions)", earlier, data_dir, config, project)
    baseline = trained("from scratch, all lesions", manifest, data_dir, config, project)
    rows = [champion, baseline]
    warm = replace(config, warm_epochs=args.warm_epochs, ema_momentum=WARM_EMA_MOMENTUM)
    for pair in args.grid:
        shrink, perturb = (float(value) for value in pair.split(":"))
        name = f"warm, shrink {shrink:g} perturb {perturb:g}"
        week = replace(warm, shrink=shrink, perturb=perturb)
        rows.append(trained(name, manifest, data_dir, week, project, champion.model))
    report(manifest, rows, baseline)


def recipe(image_size: int, epochs: int) -> TrainConfig:
    from pipelines.training.config import Augmentation, TrainConfig

    values: dict[str, str] = dict(item.split("=", 1) for item in SCRATCH_RECIPE)
    return TrainConfig(
        image_size=image_size,
        batch_size=32,
        weights=values["weights"],
        unfreeze_from=values["unfreeze_from"],
        epochs=epochs,
        patience=epochs,  # the cosine schedule runs its course
        learning_rate=float(values["learning_rate"]),
        schedule="cosine",
        warmup_epochs=int(values["warmup_epochs"]),
        weight_decay=float(values["weight_decay"]),
        augmentation=Augmentation(zoom=float(values["zoom"])),
        ema_momentum=float(values["ema_momentum"]),
        gradient_clip_norm=float(values["gradient_clip_norm"]),
        diagnosis_weight=float(values["diagnosis_weight"]),
    )


def earlier_weeks(manifest: pd.DataFrame, share: float, seed: int = 0) -> pd.DataFrame:
    """The manifest with `share` of the training lesions (drawn at random), every
    validation and test image kept."""
    train = manifest[manifest["split"] == "train"]
    lesions = train["lesion_id"].drop_duplicates().sample(frac=share, random_state=seed)
    keep = (manifest["split"] != "train") | manifest["lesion_id"].isin(set(lesions))
    return manifest[keep].reset_index(drop=True)


def trained(
    name: str,
    manifest: pd.DataFrame,
    data_dir: Path,
    config: TrainConfig,
    project: Path,
    champion: keras.Model | None = None,
) -> Trained:
    from pipelines.training.fit import train_classifier
    from pipelines.training.warm_start import WarmStart

    print(f"\ntraining: {name} ...", flush=True)
    warm_start = WarmStart("bench champion", champion) if champion is not None else None
    started = time.perf_counter()
    result = train_classifier(
        manifest,
        data_dir,
        config,
        work_dir=project / "work",
        on_epoch=lambda epoch: print(f"  {epoch.line()}", flush=True),
        warm_start=warm_start,
    )
    seconds = time.perf_counter() - started
    test = cnn_probabilities(manifest, data_dir, result.model, config.image_size).test
    return Trained(name, seconds, test, result.model)


def report(manifest: pd.DataFrame, rows: list[Trained], baseline: Trained) -> None:
    from sklearn.metrics import roc_auc_score

    from pipelines.evaluation.stats import delong_test

    test = manifest[manifest["split"] == "test"]
    labels = test["label"].to_numpy()
    print("\nlocked test split                   ROC AUC   train min  compute  vs scratch (DeLong)")
    for row in rows:
        auc = roc_auc_score(labels, row.test)
        line = f"  {row.name:<34} {auc:.3f}     {row.seconds / 60:7.1f}"
        if row is not baseline and row.name.startswith("warm"):
            compared = delong_test(labels, row.test, baseline.test, lesions=test["lesion_id"])
            line += (
                f"   {row.seconds / baseline.seconds:5.2f}x  {compared.difference:+.3f} "
                f"[{compared.ci_low:+.3f}, {compared.ci_high:+.3f}]"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
