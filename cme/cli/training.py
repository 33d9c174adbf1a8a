"""`cme train`: the train stage of dvc.yaml."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cme.cli.common import OVERRIDES, Advance, opened_app, progress
from pipelines.durations import duration

if TYPE_CHECKING:
    from pipelines.training.fit import EpochRecord, TrainResult


def train(
    snapshot: str | None = typer.Option(
        None, "--snapshot", help="Snapshot id to train on; default the latest."
    ),
    record_file: Path | None = typer.Option(
        None, "--record", help="Also write the run's record (run id, model URI) here as JSON."
    ),
    overrides: list[str] = OVERRIDES,
) -> None:
    """Fine-tune ResNet50 on a snapshot and log the run and the model to MLflow; prints the
    run id. E.g. `cme train -S train.weights=none -S train.unfreeze_from=all`."""
    from usecases.challenger_training import train as train_challenger

    bar = progress("training", None, "epochs", time_left=False, plain_lines=False)
    with opened_app() as cme, bar as advance:
        outcome = train_challenger(
            cme, cme.params(overrides), snapshot_id=snapshot, on_epoch=partial(_shown, advance)
        )
    result = outcome.result
    record = {
        "run_id": outcome.run_id,
        "model_uri": outcome.model_uri,
        "snapshot_id": outcome.snapshot.snapshot_id,
        "dvc_hash": outcome.snapshot.dvc_hash,
        **_chosen(result),
        "precision": result.hardware.precision,
        "train_images_per_second": result.training_images_per_second,
    }
    if record_file is not None:
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps(record, indent=2) + "\n")
    for best in result.member_bests():
        member = f"member {best.member}: " if best.members > 1 else ""
        typer.echo(
            f"{member}best epoch {best.epoch}: val ROC AUC {best.metrics.get('val_auc', 0):.3f}"
        )
    if result.ensemble_val_auc is not None:
        typer.echo(f"ensemble: val ROC AUC {result.ensemble_val_auc:.3f}")
    typer.echo(f"model {outcome.model_uri}")
    typer.echo(f"run {outcome.run_id}")


def _chosen(result: TrainResult) -> dict[str, Any]:
    """What was kept: the best epoch, or each member's and the ensemble's val ROC AUC."""
    if result.ensemble_val_auc is None:
        best = result.best
        return {"best_epoch": best.epoch, "best_val_auc": best.metrics.get("val_auc")}
    return {
        "ensemble_val_auc": result.ensemble_val_auc,
        "members": [
            {"best_epoch": best.epoch, "best_val_auc": best.metrics.get("val_auc")}
            for best in result.member_bests()
        ],
    }


def _shown(advance: Advance, record: EpochRecord) -> None:
    """The epoch's line, and on a terminal the bar below the lines."""
    typer.echo(record.line())
    epoch_advanced(advance, record)


def epoch_advanced(advance: Advance, record: EpochRecord) -> None:
    """The training bar: epochs done of those planned (every member's), the latest
    validation ROC AUC and the time left at most."""
    planned = record.planned * record.members or None
    done = (record.member - 1) * record.planned + record.epoch
    detail = f"val ROC AUC {record.metrics['val_auc']:.3f}" if "val_auc" in record.metrics else ""
    if record.seconds_left is not None:
        detail += f", at most {duration(record.seconds_left)} left"
    advance(done, detail.lstrip(", "), total=planned)
