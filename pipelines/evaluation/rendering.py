"""The evaluation report as a reviewer reads it: summary.md and the self-contained
summary.html (pipelines/templates/evaluation.html.j2, through the shared kit of
pipelines/pages.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from pipelines.evaluation.report import ChampionComparison, EvaluationReport, ModelEvaluation
from pipelines.evaluation.subgroups import SubgroupRow
from pipelines.pages import image_source, number, render_page, signed

NO_IMAGES: Mapping[str, str] = MappingProxyType({})
SUBGROUP_METRICS = ("sensitivity", "specificity", "f1", "roc_auc")
SUBGROUP_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "f1": "F1",
                  "roc_auc": "ROC AUC"}  # fmt: skip
METRIC_NAMES = {
    "threshold": "Operating threshold",
    "roc_auc": "ROC AUC",
    "partial_roc_auc": "Partial ROC AUC above 80% sensitivity (0 to 0.2)",
    "f1": "F1",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision (PPV)",
    "accuracy": "Accuracy",
    "brier": "Brier score (lower is better)",
}
DISPLAY_ORDER = (
    "roc_auc", "partial_roc_auc", "f1", "sensitivity", "specificity", "precision", "accuracy",
    "brier", "threshold",
)  # fmt: skip
DIGITS = {"partial_roc_auc": 4}
"""decimals shown where the default three hide the differences that matter (0 to 0.2)"""
SMALL_NOTE = (
    "Small groups (too few images or melanomas) are shown but not used to judge a drop; "
    "'worse in' names the metrics where the challenger is below the champion."
)


def locked_set_sentence(report: EvaluationReport) -> str:
    benign = report.test_images - report.test_melanoma
    return (
        f"Locked test set of snapshot {report.snapshot_id}: {report.test_images} images "
        f"({report.test_melanoma} melanoma, {benign} not melanoma) from "
        f"{report.test_lesions} lesions."
    )


def headline_rows(report: EvaluationReport) -> list[tuple[str, str, str, str]]:
    """(metric, challenger, champion, difference) for each headline metric."""
    champion = report.versus.champion.metrics if report.versus else None
    rows = []
    for name in DISPLAY_ORDER:
        mine = getattr(report.challenger.metrics, name)
        theirs = getattr(champion, name) if champion else None
        change = mine - theirs if mine is not None and theirs is not None else None
        digits = DIGITS.get(name, 3)
        rows.append(
            (
                METRIC_NAMES[name],
                number(mine, digits),
                number(theirs, digits),
                signed(change, digits),
            )
        )
    return rows


def statistics_lines(versus: ChampionComparison) -> list[str]:
    """The paired tests of the difference, one sentence each."""
    lines = []
    if versus.auc:
        auc = versus.auc
        lines.append(
            f"ROC AUC difference {signed(auc.difference)} (DeLong, "
            f"{auc.confidence:.0%} CI {signed(auc.ci_low)} to {signed(auc.ci_high)}; "
            f"two-sided p = {number(auc.p_value, 4)}; one-sided p that the challenger is "
            f"better = {number(auc.p_superiority, 4)})."
        )
    else:
        lines.append("ROC AUC difference: undefined (the test set has a single class).")
    f1 = versus.f1
    lines.append(
        f"F1 difference {signed(f1.difference)} (paired bootstrap over {f1.resampled}s, "
        f"{f1.iterations} resamples, {f1.confidence:.0%} CI {signed(f1.ci_low)} to "
        f"{signed(f1.ci_high)}; one-sided {1 - f1.alpha:.0%} lower bound "
        f"{signed(f1.lower_bound)}; share of resamples where the challenger is not better "
        f"{number(f1.p_not_better)})."
    )
    partial = versus.partial_auc
    if partial:
        lines.append(
            f"Partial ROC AUC above {partial.min_sensitivity:.0%} sensitivity difference "
            f"{signed(partial.difference, 4)} (paired bootstrap over {partial.resampled}s, "
            f"{partial.iterations} resamples, {partial.confidence:.0%} CI "
            f"{signed(partial.ci_low, 4)} to {signed(partial.ci_high, 4)}; one-sided "
            f"{1 - partial.alpha:.0%} lower bound {signed(partial.lower_bound, 4)}; share of "
            f"resamples where the challenger is not better {number(partial.p_not_better)})."
        )
    return lines


def worse_metrics(challenger: SubgroupRow, champion: SubgroupRow | None) -> set[str]:
    """The subgroup metrics where the challenger is below the champion."""
    if champion is None:
        return set()
    worse = set()
    for name in SUBGROUP_METRICS:
        mine, theirs = getattr(challenger, name), getattr(champion, name)
        if mine is not None and theirs is not None and mine < theirs:
            worse.add(name)
    return worse


@dataclass(frozen=True)
class SubgroupLine:
    """One subgroup as both pages show it: the challenger's values (each with whether it is
    below the champion's), the champion's (none without a champion) and the flags, each
    as (kind, text)."""

    attribute: str
    group: str
    images: int
    melanoma: int
    small: bool
    challenger: tuple[tuple[str, bool], ...]
    champion: tuple[str, ...]
    flags: tuple[tuple[str, str], ...]


def subgroup_lines(report: EvaluationReport) -> list[SubgroupLine]:
    champion = report.versus.champion if report.versus else None
    lines = []
    for row in report.challenger.subgroups:
        theirs = champion.subgroup(row.attribute, row.group) if champion else None
        worse = worse_metrics(row, theirs)
        lines.append(
            SubgroupLine(
                attribute=row.attribute.replace("_", " "),
                group=row.group,
                images=row.images,
                melanoma=row.melanoma,
                small=row.small,
                challenger=tuple(
                    (number(getattr(row, name)), name in worse) for name in SUBGROUP_METRICS
                ),
                champion=tuple(number(getattr(theirs, name, None)) for name in SUBGROUP_METRICS)
                if report.versus
                else (),
                flags=_flags(row, worse),
            )
        )
    return lines


def _flags(row: SubgroupRow, worse: set[str]) -> tuple[tuple[str, str], ...]:
    flags = [("small", "small")] if row.small else []
    if worse:
        names = (SUBGROUP_NAMES[name] for name in SUBGROUP_METRICS if name in worse)
        flags.append(("worse", "worse in " + ", ".join(names)))
    return tuple(flags)


# --------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------


def summary_markdown(report: EvaluationReport, decision_lines: Sequence[str] = ()) -> str:
    lines = [f"# Melanoma classifier evaluation: {report.challenger.name}", ""]
    lines += [locked_set_sentence(report), ""]
    if decision_lines:
        lines += ["## Decision", "", *(f"- {line}" for line in decision_lines), ""]
    lines += _headline_markdown(report, "##")
    lines += ["", "## Confusion matrices", ""]
    lines += [_confusion_sentence(evaluation) for evaluation in report.evaluations]
    lines += ["", "## Subgroups", "", *_subgroup_markdown(report)]
    return "\n".join(lines) + "\n"


def version_description(
    report: EvaluationReport,
    decision_lines: Sequence[str],
    lineage: Mapping[str, str],
    run_id: str,
) -> str:
    """What a reviewer reads on the version page of the MLflow UI (Markdown): the decision
    and its reasons, the headline against the champion with its intervals, the test set,
    the lineage, and links to the run's full report (MLflow resolves `#/` links in place)."""
    lines = ["### Decision", "", *(f"- {line}" for line in decision_lines), ""]
    lines += [locked_set_sentence(report), ""]
    lines += _headline_markdown(report, "###")
    lines += ["", "### Lineage", "", *(f"- {key}: `{value}`" for key, value in lineage.items())]
    report_page = f"#/runs/{run_id}/artifactPath/evaluation/summary.html"
    lines += [
        "",
        f"[The run]({f'#/runs/{run_id}'}): [the full report]({report_page}) with the "
        "subgroups, ROC, precision-recall, reliability and confusion plots, and the "
        "training curves.",
    ]
    return "\n".join(lines) + "\n"


def _headline_markdown(report: EvaluationReport, level: str) -> list[str]:
    lines = [f"{level} Headline metrics", "", "| metric | challenger | champion | difference |"]
    lines += ["|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in headline_rows(report)]
    if report.versus:
        lines += ["", f"{level} Paired statistics", ""]
        lines += [f"- {s}" for s in statistics_lines(report.versus)]
    return lines


def _confusion_sentence(evaluation: ModelEvaluation) -> str:
    counts = evaluation.metrics.confusion
    return (
        f"- {evaluation.name} at threshold {number(evaluation.metrics.threshold)}: "
        f"{counts.true_positives} melanoma caught, {counts.false_negatives} missed, "
        f"{counts.false_positives} false alarms, {counts.true_negatives} correctly cleared."
    )


def _subgroup_markdown(report: EvaluationReport) -> list[str]:
    roles = [evaluation.role for evaluation in report.evaluations]
    header = ["attribute", "group", "images", "melanoma"]
    header += [f"{role} {SUBGROUP_NAMES[name]}" for role in roles for name in SUBGROUP_METRICS]
    header.append("flags")
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    for line in subgroup_lines(report):
        cells = [line.attribute, line.group, str(line.images), str(line.melanoma)]
        cells += [value for value, _ in line.challenger]
        cells += line.champion
        cells.append(", ".join(text for _, text in line.flags))
        lines.append(f"| {' | '.join(cells)} |")
    lines += ["", SMALL_NOTE]
    return lines


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------


def summary_html(
    report: EvaluationReport,
    decision_lines: Sequence[str] = (),
    images: Mapping[str, str] = NO_IMAGES,
    *,
    image_folder: Path | None = None,
) -> str:
    """A self-contained page for a clinical reviewer. `images` maps a caption to a PNG's
    file name; with `image_folder`, the PNGs are read from it and embedded as data URIs
    (MLflow's artifact viewer does not resolve relative links), else linked by name."""
    return render_page(
        "evaluation.html.j2",
        title=f"Melanoma classifier evaluation: {report.challenger.name}",
        report=report,
        locked_set=locked_set_sentence(report),
        decision_lines=decision_lines,
        headline_rows=headline_rows(report),
        statistics=statistics_lines(report.versus) if report.versus else [],
        small_note=SMALL_NOTE,
        subgroup_metrics=[SUBGROUP_NAMES[name] for name in SUBGROUP_METRICS],
        subgroup_lines=subgroup_lines(report),
        figures=[(caption, image_source(name, image_folder)) for caption, name in images.items()],
    )
