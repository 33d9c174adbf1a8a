"""The files an evaluation leaves for the MLflow run and its reviewer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure

from pipelines.evaluation.evaluate import CHALLENGER, CHAMPION, ScoredModel
from pipelines.evaluation.metrics import as_probabilities
from pipelines.evaluation.plots import confusion_figure, pr_figure, reliability_figure, roc_figure
from pipelines.evaluation.rendering import summary_html, summary_markdown
from pipelines.evaluation.report import EvaluationReport

FIGURES: dict[str, str] = {
    "ROC curve": "roc.png",
    "Precision-recall curve": "pr.png",
    "Calibration": "reliability.png",
    "Confusion matrices": "confusion.png",
}
CURVE_PLOTS: dict[str, Callable[[npt.ArrayLike, dict[str, npt.ArrayLike]], Figure]] = {
    "roc.png": roc_figure,
    "pr.png": pr_figure,
    "reliability.png": reliability_figure,
}


def write_evaluation_artifacts(
    report: EvaluationReport,
    cases: pd.DataFrame,
    challenger: ScoredModel,
    champion: ScoredModel | None,
    folder: Path,
    decision_lines: Sequence[str] = (),
) -> list[Path]:
    """Write evaluation.json, summary.md, summary.html (figures embedded), the four PNGs,
    subgroups.csv and predictions.csv into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = _write_figures(report, cases, challenger, champion, folder)
    written.append(_write_text(folder / "evaluation.json", report.to_json()))
    written.append(_write_text(folder / "summary.md", summary_markdown(report, decision_lines)))
    page = summary_html(report, decision_lines, FIGURES, image_folder=folder)
    written.append(_write_text(folder / "summary.html", page))
    written.append(_write_csv(folder / "subgroups.csv", subgroup_frame(report)))
    written.append(
        _write_csv(folder / "predictions.csv", prediction_frame(cases, challenger, champion))
    )
    return written


def _write_figures(
    report: EvaluationReport,
    cases: pd.DataFrame,
    challenger: ScoredModel,
    champion: ScoredModel | None,
    folder: Path,
) -> list[Path]:
    labels = cases["label"].to_numpy()
    curves: dict[str, npt.ArrayLike] = {report.challenger.name: challenger.probabilities}
    if champion is not None and report.versus is not None:
        curves[report.versus.champion.name] = champion.probabilities
    written = [
        save_figure(plot(labels, curves), folder / name) for name, plot in CURVE_PLOTS.items()
    ]
    written.append(save_figure(confusion_figure(report.evaluations), folder / "confusion.png"))
    return written


def save_figure(figure: Figure, path: Path) -> Path:
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, index=False, lineterminator="\n")
    return path


def subgroup_frame(report: EvaluationReport) -> pd.DataFrame:
    """Both models' subgroup rows, with a role column."""
    records = [
        {"role": evaluation.role, **row.to_dict()}
        for evaluation in report.evaluations
        for row in evaluation.subgroups
    ]
    return pd.DataFrame.from_records(records)


def prediction_frame(
    cases: pd.DataFrame, challenger: ScoredModel, champion: ScoredModel | None
) -> pd.DataFrame:
    """One row per test image: its ids, histopathology label and each model's probability."""
    frame = cases.loc[:, ["image_id", "lesion_id", "label"]].reset_index(drop=True)
    frame[f"{CHALLENGER}_probability"] = as_probabilities(challenger.probabilities)
    if champion is not None:
        frame[f"{CHAMPION}_probability"] = as_probabilities(champion.probabilities)
    return frame
