"""The article's eight backbones and its convnet on this machine: training step and
inference throughput, and trainable and total parameters, in one table from one run.

    uv run python bench/backbones.py [--image-size 64] [--batch-size 32] [--steps 5]

Each classifier is built as `cme train` builds it (the backbone's preprocessing and the
head inside) without ImageNet weights (they cannot be had here: the arithmetic is the
same), and timed for:
- a `fine_tune` step: the backbone's last block and the head learn, the rest frozen,
  batch normalisation in inference mode, as when fine-tuning pretrained weights;
- a `feature_extraction` step: the head alone;
- inference: `predict_on_batch`, as the served model answers.
Xception and the Inception family cannot read images under 71 and 75 px: they run at
their smallest size instead, said in the table. NASNetLarge's ImageNet weights fit 331 px
only, so under 331 px its fine-tuning step is from scratch, every layer learning. Ratios
are to ResNet50 in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.training.backbones import BACKBONES
from pipelines.training.config import TrainConfig


@dataclass(frozen=True)
class Row:
    architecture: str
    image_size: int
    parameters_total: int
    parameters_fine_tune: int
    parameters_feature_extraction: int
    fine_tune_images_per_s: float
    feature_extraction_images_per_s: float
    inference_images_per_s: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after a warm-up")
    parser.add_argument("--only", nargs="*", help="some architectures (default: all nine)")
    args = parser.parse_args()
    names = args.only or [*BACKBONES, "convnet"]
    rows = []
    for name in names:
        rows.append(measure(configured(name, args.image_size), args.batch_size, args.steps))
        print(rows[-1], flush=True)  # a long run's figures kept as they come
    print(table(rows, args))


def configured(name: str, image_size: int) -> TrainConfig:
    if name == "convnet":
        return TrainConfig(image_size=image_size, approach="convnet", weights="none")
    backbone = BACKBONES[name]
    size = max(image_size, backbone.min_size)
    if backbone.imagenet_size not in (None, size):
        # Its ImageNet weights fit one size only: at this size it can only learn from
        # scratch, every layer (and batch normalisation) training.
        return TrainConfig(image_size=size, backbone=name, weights="none", unfreeze_from="all")
    # A weights file named, not read: the backbone is built as for pretrained weights.
    return TrainConfig(image_size=size, backbone=name, weights="bench-unread.weights.h5")


def measure(config: TrainConfig, batch_size: int, steps: int) -> Row:
    import keras

    from pipelines.training.model import (
        build_classifier,
        compile_classifier,
        freeze_base,
        trainable_weights,
        unfreeze_from,
    )

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, config.image_size, config.image_size, 3))
    images = images.astype("float32")
    labels = (rng.uniform(size=(batch_size, 1)) < 0.2).astype("float32")
    model = build_classifier(config, weights_file=None)
    print(f"{config.architecture} at {config.image_size} px ...", flush=True)

    unfreeze_from(model, config)
    compile_classifier(model, 1e-4, 0.5)
    fine_tune_parameters = trainable_weights(model)
    fine_tune = _rate(lambda: model.train_on_batch(images, labels), batch_size, steps)
    extraction_parameters, extraction = 0, float("nan")  # the convnet has no pretrained part
    if config.approach != "convnet":
        freeze_base(model)
        compile_classifier(model, 1e-3, 0.5)
        extraction_parameters = trainable_weights(model)
        extraction = _rate(lambda: model.train_on_batch(images, labels), batch_size, steps)
    inference = _rate(lambda: model.predict_on_batch(images), batch_size, steps)
    return Row(config.architecture, config.image_size, model.count_params(),
               fine_tune_parameters, extraction_parameters, fine_tune, extraction,
               inference)  # fmt: skip


def _rate(step: Any, batch_size: int, steps: int) -> float:
    step()  # traces the step's graph: not timed
    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def table(rows: list[Row], args: argparse.Namespace) -> str:
    resnet = next((row for row in rows if row.architecture == "resnet50"), rows[0])
    lines = [
        f"{len(rows)} architectures, batch {args.batch_size}, {args.steps} timed steps each; "
        f"ratios to {resnet.architecture}",
        "",
        "| architecture | px | parameters | trained: fine_tune | trained: feature_extraction "
        "| fine_tune step, img/s | feature_extraction step, img/s | inference, img/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        extraction = "(all: from scratch)" if row.architecture == "convnet" else (
            f"{row.parameters_feature_extraction:,}"
        )  # fmt: skip
        rates = [
            _with_ratio(getattr(row, rate), getattr(resnet, rate))
            for rate in ("fine_tune_images_per_s", "feature_extraction_images_per_s",
                         "inference_images_per_s")
        ]  # fmt: skip
        lines.append(
            f"| {row.architecture} | {row.image_size} | {row.parameters_total:,} "
            f"| {row.parameters_fine_tune:,} | {extraction} | {' | '.join(rates)} |"
        )
    return "\n".join(lines)


def _with_ratio(value: float, baseline: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:,.0f} ({value / baseline:.2f}x)"


if __name__ == "__main__":
    main()
