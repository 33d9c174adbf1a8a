"""`cme backtest`: replay a labelled set (HAM10000 layout) as weekly arrivals of confirmed
labels through the real weekly-retrain flow, in an installation of its own, and report the
champion week by week on the final locked test set: does the model keep improving?"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.backtest import (
    AWAITING,
    FAILED,
    PROMOTED,
    BacktestFiles,
    BacktestWeek,
    weekly_arrivals,
    write_backtest_report,
)
from pipelines.errors import BadInput
from pipelines.evaluation.metrics import BinaryMetrics, binary_metrics
from usecases.challenger_evaluation import score
from usecases.params import Params
from usecases.platform import Platform
from usecases.retrain_steps import RetrainSummary
from usecases.snapshots import snapshot_manifest

BACKTEST_STEWARD = "backtest"
BACKTEST_REVIEWER = "backtest-reviewer"
FOREIGN_SETTINGS = ("CME_DATABASE_URL", "CME_TRACKING_URI", "CME_IMAGE_STORE", "CME_INBOX",
                    "CME_DVC_REMOTE", "PREFECT_API_URL")  # fmt: skip


class BacktestFailed(BadInput):
    """The backtest cannot start or go on; the message says why."""


@dataclass(frozen=True)
class ReplayedWeek:
    """One week as the flow left it, before the champions are scored on the final test set."""

    week: int
    arrived: int
    images: int
    summary: RetrainSummary | None
    failure: str | None
    champion: str | None
    review: str | None = None
    train_minutes: float | None = None


def installation(out: Path, params_file: Path) -> dict[str, str]:
    """The settings of the backtest's own installation under `out`: its label registry,
    data, MLflow and Prefect stores, so that production is never touched."""
    home = (out / ".cme").resolve()
    return {
        "CME_HOME": str(home),
        "CME_DATA_DIR": str((out / "data").resolve()),
        "CME_PROJECT_DIR": str(out.resolve()),
        "CME_PARAMS_FILE": str(params_file.resolve()),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "PREFECT_HOME": str(home / "prefect"),
    }


def enter_installation(out: Path, params_file: Path) -> None:
    """Point this process at the backtest's installation (call before bootstrap and before
    importing prefect) and make `out` a DVC project."""
    if (out / ".cme").exists() and any((out / ".cme").iterdir()):
        raise BacktestFailed(f"{out} holds an earlier backtest: give another --out")
    out.mkdir(parents=True, exist_ok=True)
    for name in FOREIGN_SETTINGS:
        os.environ.pop(name, None)
    os.environ.update(installation(out, params_file))
    if not (out / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=out,
                       check=True)  # fmt: skip


def read_labelled_set(data: Path) -> pd.DataFrame:
    metadata = data / "metadata.csv"
    if not metadata.is_file() or not (data / "images").is_dir():
        raise BacktestFailed(f"{data}: expected metadata.csv and images/ (HAM10000 layout)")
    return pd.read_csv(metadata, dtype=str, keep_default_na=False)


def arrivals(labelled: pd.DataFrame, weeks: int, seed: int, first_week_share: float | None,
             today: datetime) -> list[pd.DataFrame]:  # fmt: skip
    """Weekly batches dated so that the last week was confirmed today."""
    start = (today - timedelta(weeks=weeks - 1)).date()
    try:
        return weekly_arrivals(labelled, weeks, seed=seed, first_week_share=first_week_share,
                               start=start)  # fmt: skip
    except ValueError as error:
        raise BacktestFailed(str(error)) from None


def replay_week(
    platform: Platform,
    params: Params,
    week: int,
    batch: pd.DataFrame,
    images: Path,
    retrain: Callable[[], Any],
) -> ReplayedWeek:
    """Register the week's labels, run the weekly retrain, approve what the gate passed."""
    export = platform.workspace.home / "arrivals" / f"week{week}.csv"
    export.parent.mkdir(parents=True, exist_ok=True)
    batch.to_csv(export, index=False)
    registry = platform.label_registry(params.intake.rules())
    registry.import_metadata(export, images, steward=BACKTEST_STEWARD,
                             batch_size=params.intake.batch_size)  # fmt: skip
    state = retrain()
    labels = registry.stats().images
    if not state.is_completed():
        failure = f"{state.name}: {state.message}"
        return ReplayedWeek(week, len(batch), labels, None, failure, _champion(platform))
    summary: RetrainSummary = state.result()
    review = None
    if summary.status == AWAITING and summary.version is not None:
        review = platform.champions().approve(summary.version, BACKTEST_REVIEWER).message
    minutes = training_minutes(platform, summary.run_id)
    return ReplayedWeek(
        week, len(batch), labels, summary, None, _champion(platform), review, minutes
    )


def training_minutes(platform: Platform, run_id: str | None) -> float | None:
    """How long the week's challenger trained, as its run recorded it."""
    import mlflow

    if run_id is None:
        return None
    platform.tracking()
    seconds = mlflow.get_run(run_id).data.metrics.get("train_seconds")
    return None if seconds is None else seconds / 60


def _champion(platform: Platform) -> str | None:
    return platform.champions().expected_champion()


def score_champions(platform: Platform, versions: set[str]) -> tuple[dict[str, BinaryMetrics], int]:
    """Each version on the final locked test set (the latest snapshot's), at the threshold
    it serves with; and how many test images that set holds."""
    import mlflow

    snapshots = platform.label_registry().snapshots()
    if not snapshots:
        return {}, 0
    manifest = snapshot_manifest(platform, snapshots[-1].snapshot_id)
    cases = manifest[manifest["split"] == "test"].reset_index(drop=True)
    models = platform.champions().models
    scored = {}
    for version in sorted(versions):
        registered = models.version(version)
        probabilities = score(mlflow.pyfunc.load_model(registered.uri), cases,
                              platform.workspace.data_dir)  # fmt: skip
        threshold = float(registered.tags.get("threshold", 0.5))
        scored[version] = binary_metrics(cases["label"].to_numpy(), probabilities, threshold)
    return scored, len(cases)


def backtest_weeks(
    replayed: list[ReplayedWeek], champions: Mapping[str, BinaryMetrics], test_images: int
) -> list[BacktestWeek]:
    return [_backtest_week(week, champions, test_images) for week in replayed]


def _backtest_week(
    week: ReplayedWeek, champions: Mapping[str, BinaryMetrics], test_images: int
) -> BacktestWeek:
    summary = week.summary
    champion = champions.get(week.champion) if week.champion else None
    reasons: tuple[str, ...]
    if summary is None:
        outcome, reasons = FAILED, (week.failure or "",)
    else:
        outcome = PROMOTED if week.review else summary.status
        plain = tuple(f"in plain words: {sentence}" for sentence in summary.explanations)
        review = (week.review,) if week.review else ()
        reasons = (summary.message, *summary.reasons, *plain, *review)
    metrics = summary.metrics if summary else {}
    return BacktestWeek(
        week=week.week,
        arrived=week.arrived,
        images=week.images,
        outcome=outcome,
        reasons=reasons,
        challenger_version=summary.version if summary else None,
        challenger_f1=metrics.get("test_f1"),
        challenger_roc_auc=metrics.get("test_roc_auc"),
        champion_version=week.champion,
        champion_f1=champion.f1 if champion else None,
        champion_roc_auc=champion.roc_auc if champion else None,
        test_images=test_images,
        train_minutes=week.train_minutes,
        initialized_from=summary.initialized_from if summary else None,
        champion_partial_roc_auc=champion.partial_roc_auc if champion else None,
        champion_sensitivity=champion.sensitivity if champion else None,
        champion_specificity=champion.specificity if champion else None,
    )


def report(weeks: list[BacktestWeek], out: Path, data: Path, overrides: list[str]) -> BacktestFiles:
    notes = [
        f"Replayed {data} as {len(weeks)} weekly arrivals of confirmed labels through the "
        "weekly-retrain flow, with the gate policy of params.yaml.",
        f"Where the policy asks for approval, {BACKTEST_REVIEWER} approved what the gate passed.",
        "Overrides: " + (", ".join(overrides) if overrides else "none"),
    ]
    title = f"Backtest: {len(weeks)} weeks of {data.name}"
    return write_backtest_report(weeks, out / "report", title=title, notes=notes)


def now() -> datetime:
    return datetime.now(UTC)
