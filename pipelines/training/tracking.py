"""MLflow records of a training run: lineage tags, params, per-epoch metrics, the learning
curve and the model as a pyfunc that predicts from images."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import matplotlib

matplotlib.use("Agg")  # no display on workers; must precede pyplot
import matplotlib.pyplot as plt
import mlflow
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pipelines.training.backbones import (
    APPROACH_TAG,
    BACKBONE_TAG,
    TOTAL_PARAMETERS_TAG,
    TRAINED_PARAMETERS_TAG,
)
from pipelines.training.fit import MONITOR, EpochRecord, TrainResult
from pipelines.training.pyfunc import (
    IMAGE_COLUMN,
    KERAS_ARTIFACT,
    signature,
)

MODEL_NAME_IN_RUN = "model"

CURVE_METRICS = (("loss", "loss"), ("auc", "ROC AUC"))


@dataclass(frozen=True)
class Lineage:
    """Where a model's data and code came from; every run carries it as tags."""

    snapshot_id: str
    dvc_hash: str
    manifest_sha256: str
    git_commit: str
    labels_as_of: str

    def tags(self) -> dict[str, str]:
        return {
            "snapshot_id": self.snapshot_id,
            "dvc_hash": self.dvc_hash,
            "manifest_sha256": self.manifest_sha256,
            "git_commit": self.git_commit,
            "mlflow.source.git.commit": self.git_commit,
            "labels_as_of": self.labels_as_of,
        }


def log_epoch(record: EpochRecord) -> None:
    """Log one epoch's metrics to the active run as it ends, so a reviewer can watch a long
    run in the MLflow UI; an ensemble's members each have their own curves
    (`member_2/val_auc`)."""
    prefix = f"member_{record.member}/" if record.members > 1 else ""
    mlflow.log_metrics(
        {f"{prefix}{key}": value for key, value in record.metrics.items()}, step=record.epoch
    )


def log_run_inputs(config_params: Mapping[str, Any], data_params: Mapping[str, Any]) -> None:
    mlflow.log_params({f"train.{key}": value for key, value in config_params.items()})
    mlflow.log_params(dict(data_params))


def architecture_tags(result: TrainResult) -> dict[str, str]:
    """What the challenger is built of and how much of it learnt (an ensemble: all members);
    its run and model version carry them, so a gate between architectures is readable."""
    from pipelines.training.model import trained_parameters

    config = result.config
    return {
        BACKBONE_TAG: config.architecture,
        APPROACH_TAG: config.approach,
        TRAINED_PARAMETERS_TAG: str(trained_parameters(config) * config.ensemble_size),
        TOTAL_PARAMETERS_TAG: str(result.model.count_params()),
    }


def log_result(result: TrainResult, example_image: bytes, model_name: str | None = None) -> str:
    """Log the summary metrics, the learning curve, the architecture and the model; return
    the model's URI."""
    mlflow.set_tags(architecture_tags(result))
    mlflow.log_metrics(
        {
            **_best_metrics(result),
            "epochs_run": len(result.history),
            "train_seconds": sum(record.seconds for record in result.history),
            "train_images_per_second": result.training_images_per_second,
        }
    )
    if result.cache_use is not None:  # feature extraction: the week's cost is what it computed
        mlflow.log_metrics(
            {"features_cached": result.cache_use.cached,
             "features_computed": result.cache_use.computed}
        )  # fmt: skip
    figure = learning_curve(result)
    mlflow.log_figure(figure, "learning_curve.png")
    plt.close(figure)
    return log_classifier(
        result.model, result.config.image_size, result.config.threshold, example_image, model_name
    )


def _best_metrics(result: TrainResult) -> dict[str, float]:
    """The best epoch's metrics; for an ensemble, each member's best epoch and validation
    ROC AUC, and the served ensemble's."""
    if result.ensemble_val_auc is None:
        best = result.best
        return {"best_epoch": best.epoch, **{f"best_{k}": v for k, v in best.metrics.items()}}
    metrics = {"ensemble_val_auc": result.ensemble_val_auc}
    for best in result.member_bests():
        metrics[f"member_{best.member}/best_epoch"] = best.epoch
        metrics[f"member_{best.member}/best_val_auc"] = best.metrics.get(MONITOR, float("nan"))
    return metrics


def log_classifier(
    model: keras.Model,
    image_size: int,
    threshold: float,
    example_image: bytes,
    model_name: str | None = None,
) -> str:
    """Log the Keras model as the pyfunc that serves it, in the active run; return its URI.
    `model_name` is the registered model it is meant for: a served copy finds its version
    there."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="cme-model-") as folder:
        keras_file = Path(folder) / "classifier.keras"
        model.save(keras_file)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={KERAS_ARTIFACT: str(keras_file)},
            model_config={
                "image_size": image_size,
                "threshold": threshold,
                "registered_model_name": model_name,
            },
            code_paths=[str(Path(__file__).resolve().parents[1])],
            signature=signature(),
            input_example=pd.DataFrame({IMAGE_COLUMN: [example_image]}),
            pip_requirements=_requirements(),
        )
    return str(info.model_uri)


def load_classifier(model_uri: str) -> keras.Model:
    """The Keras model a logged or registered classifier serves, as trained."""
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    return pyfunc.unwrap_python_model().keras_model


def _requirements() -> list[str]:
    """Pinned to what trained the model, for `mlflow models serve` in a fresh environment."""
    from importlib.metadata import version

    names = (_tensorflow_distribution(), "keras", "mlflow", "numpy", "pandas", "pillow")
    return [f"{name}=={version(name)}" for name in names]


def _tensorflow_distribution() -> str:
    """`tensorflow-cpu` here and in CI; `tensorflow` on GPU images."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("tensorflow-cpu")
    except PackageNotFoundError:
        return "tensorflow"
    return "tensorflow-cpu"


def learning_curve(result: TrainResult) -> Figure:
    """Loss and ROC AUC per epoch, train and validation (of each member of an ensemble),
    with the phases marked."""
    figure, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(10, 4), constrained_layout=True)
    for axis, (key, title) in zip(axes, CURVE_METRICS, strict=True):
        for member in result.member_bests():
            _plot_member(axis, result.history, member, key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend()
    figure.suptitle(_curve_title(result))
    return figure


def _plot_member(axis: Axes, history: list[EpochRecord], best: EpochRecord, key: str) -> None:
    records = [record for record in history if record.member == best.member]
    epochs = [record.epoch for record in records]
    named = f"member {best.member} " if best.members > 1 else ""
    for prefix, label in (("", "train"), ("val_", "validation")):
        values = [record.metrics.get(f"{prefix}{key}", float("nan")) for record in records]
        axis.plot(epochs, values, marker="o", label=f"{named}{label}")
    for record, following in itertools.pairwise(records):
        if following.phase != record.phase:
            axis.axvline(record.epoch + 0.5, color="grey", linestyle="--", linewidth=1)


def _curve_title(result: TrainResult) -> str:
    if result.ensemble_val_auc is not None:
        bests = ", ".join(
            f"{best.epoch} ({best.metrics.get(MONITOR, 0):.3f})" for best in result.member_bests()
        )
        return (
            f"ensemble of {len(result.member_bests())}: val ROC AUC "
            f"{result.ensemble_val_auc:.3f}; members' best epochs {bests}"
        )
    best = result.best
    return f"best epoch {best.epoch} (val ROC AUC {best.metrics.get(MONITOR, 0):.3f})"
