"""Figures a reviewer compares models by: ROC and precision-recall curves, calibration, and
the confusion matrices. Each takes `curves`, a model's name -> its probabilities on the
same test cases; the caller saves and closes the figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import numpy.typing as npt

matplotlib.use("Agg")  # no display on workers; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from pipelines.evaluation.metrics import as_labels, as_probabilities
from pipelines.evaluation.report import ModelEvaluation

CLASS_NAMES = ("not melanoma", "melanoma")


def roc_figure(labels: npt.ArrayLike, curves: Mapping[str, npt.ArrayLike]) -> Figure:
    truth = as_labels(labels)
    figure, axis = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    for name, probabilities in curves.items():
        scores = as_probabilities(probabilities)
        false_positive_rate, sensitivity, _ = roc_curve(truth, scores)
        auc = roc_auc_score(truth, scores)
        axis.plot(false_positive_rate, sensitivity, label=f"{name} (ROC AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
    axis.set_title("ROC curve on the locked test set")
    axis.legend(loc="lower right")
    return figure


def pr_figure(labels: npt.ArrayLike, curves: Mapping[str, npt.ArrayLike]) -> Figure:
    truth = as_labels(labels)
    figure, axis = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    for name, probabilities in curves.items():
        scores = as_probabilities(probabilities)
        precision, sensitivity, _ = precision_recall_curve(truth, scores)
        average = average_precision_score(truth, scores)
        axis.step(sensitivity, precision, where="post", label=f"{name} (AP {average:.3f})")
    prevalence = float(truth.mean())
    axis.axhline(prevalence, color="grey", linestyle="--", linewidth=1,
                 label=f"melanoma prevalence {prevalence:.3f}")  # fmt: skip
    axis.set(xlabel="sensitivity (recall)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    axis.set_title("Precision-recall curve on the locked test set")
    axis.legend(loc="lower left")
    return figure


def reliability_figure(
    labels: npt.ArrayLike, curves: Mapping[str, npt.ArrayLike], bins: int = 10
) -> Figure:
    """Calibration (observed melanoma share per probability bin) above a histogram of the
    probabilities."""
    truth = as_labels(labels)
    figure, (calibration, histogram) = plt.subplots(
        2, 1, figsize=(5.5, 7), height_ratios=(3, 1), sharex=True, constrained_layout=True
    )
    calibration.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1,
                     label="perfectly calibrated")  # fmt: skip
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, probabilities in curves.items():
        scores = as_probabilities(probabilities)
        observed, predicted = calibration_curve(truth, scores, n_bins=bins, strategy="uniform")
        brier = brier_score_loss(truth, scores)
        calibration.plot(predicted, observed, marker="o", label=f"{name} (Brier {brier:.3f})")
        histogram.hist(scores, bins=edges, histtype="step", linewidth=1.5, label=name)
    calibration.set(ylabel="observed melanoma share", xlim=(0, 1), ylim=(0, 1.02))
    calibration.set_title("Calibration on the locked test set")
    calibration.legend(loc="upper left")
    histogram.set(xlabel="predicted melanoma probability", ylabel="images")
    return figure


def confusion_figure(evaluations: Sequence[ModelEvaluation]) -> Figure:
    """Each model's confusion matrix at its operating threshold, counts annotated."""
    figure, axes = plt.subplots(
        1, len(evaluations), figsize=(4.2 * len(evaluations), 4), constrained_layout=True,
        squeeze=False,
    )  # fmt: skip
    for axis, evaluation in zip(axes[0], evaluations, strict=True):
        counts = evaluation.metrics.confusion
        matrix = np.array(
            [[counts.true_negatives, counts.false_positives],
             [counts.false_negatives, counts.true_positives]]
        )  # fmt: skip
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (row, column), count in np.ndenumerate(matrix):
            dark = count > matrix.max() / 2
            axis.text(column, row, str(count), ha="center", va="center", fontsize=14,
                      color="white" if dark else "black")  # fmt: skip
        axis.set_xticks([0, 1], [f"called {name}" for name in CLASS_NAMES])
        axis.set_yticks([0, 1], CLASS_NAMES)
        axis.set_ylabel("histopathology")
        axis.set_title(f"{evaluation.name}\nthreshold {evaluation.metrics.threshold:.3f}")
    return figure
