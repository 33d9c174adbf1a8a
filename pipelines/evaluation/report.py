"""The evaluation of a challenger (and of the champion beside it) on the locked test set, as
JSON for the gate and the registry, flat metrics for MLflow, and pages for a reviewer."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pipelines.evaluation.metrics import BinaryMetrics, ConfusionMatrix
from pipelines.evaluation.stats import AucComparison, F1Comparison
from pipelines.evaluation.subgroups import SubgroupRow

NO_IMAGES: Mapping[str, str] = MappingProxyType({})
HEADLINE_METRICS = (
    "f1", "roc_auc", "sensitivity", "specificity", "precision", "accuracy", "brier", "threshold",
)  # fmt: skip
SUBGROUP_METRICS = ("sensitivity", "specificity", "f1", "roc_auc")
SUBGROUP_NAMES = {"sensitivity": "sensitivity", "specificity": "specificity", "f1": "F1",
                  "roc_auc": "ROC AUC"}  # fmt: skip
METRIC_NAMES = {
    "threshold": "Operating threshold",
    "roc_auc": "ROC AUC",
    "f1": "F1",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision (PPV)",
    "accuracy": "Accuracy",
    "brier": "Brier score (lower is better)",
}
DISPLAY_ORDER = (
    "roc_auc", "f1", "sensitivity", "specificity", "precision", "accuracy", "brier", "threshold",
)  # fmt: skip


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's calls on the test set at its own operating threshold."""

    role: str
    model_uri: str
    version: str | None
    metrics: BinaryMetrics
    subgroups: tuple[SubgroupRow, ...]

    @property
    def name(self) -> str:
        return f"{self.role} (version {self.version})" if self.version else self.role

    def subgroup(self, attribute: str, group: str) -> SubgroupRow | None:
        for row in self.subgroups:
            if row.attribute == attribute and row.group == group:
                return row
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "model_uri": self.model_uri,
            "version": self.version,
            "metrics": self.metrics.to_dict(),
            "subgroups": [row.to_dict() for row in self.subgroups],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelEvaluation:
        return cls(
            role=data["role"],
            model_uri=data["model_uri"],
            version=data["version"],
            metrics=BinaryMetrics.from_dict(data["metrics"]),
            subgroups=tuple(SubgroupRow.from_dict(row) for row in data["subgroups"]),
        )


@dataclass(frozen=True)
class ChampionComparison:
    """The serving champion on the same cases, and the paired tests of the difference."""

    champion: ModelEvaluation
    auc: AucComparison | None
    f1: F1Comparison

    def to_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion.to_dict(),
            "auc": self.auc.to_dict() if self.auc else None,
            "f1": self.f1.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChampionComparison:
        return cls(
            champion=ModelEvaluation.from_dict(data["champion"]),
            auc=AucComparison.from_dict(data["auc"]) if data["auc"] is not None else None,
            f1=F1Comparison.from_dict(data["f1"]),
        )


@dataclass(frozen=True)
class EvaluationReport:
    snapshot_id: str
    test_images: int
    test_melanoma: int
    test_lesions: int
    challenger: ModelEvaluation
    versus: ChampionComparison | None
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "test_images": self.test_images,
            "test_melanoma": self.test_melanoma,
            "test_lesions": self.test_lesions,
            "challenger": self.challenger.to_dict(),
            "versus": self.versus.to_dict() if self.versus else None,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        versus = data["versus"]
        return cls(
            snapshot_id=data["snapshot_id"],
            test_images=int(data["test_images"]),
            test_melanoma=int(data["test_melanoma"]),
            test_lesions=int(data["test_lesions"]),
            challenger=ModelEvaluation.from_dict(data["challenger"]),
            versus=ChampionComparison.from_dict(versus) if versus is not None else None,
            created_at=data["created_at"],
        )

    @classmethod
    def from_json(cls, text: str) -> EvaluationReport:
        return cls.from_dict(json.loads(text))

    @property
    def evaluations(self) -> tuple[ModelEvaluation, ...]:
        """The challenger, then the champion when there is one."""
        return (self.challenger, *([self.versus.champion] if self.versus else []))

    def headline(self) -> dict[str, float]:
        """Flat metrics for MLflow; undefined values are left out."""
        values: dict[str, float | None] = {
            "test_images": self.test_images,
            "test_melanoma": self.test_melanoma,
            "test_lesions": self.test_lesions,
            **_prefixed("test_", self.challenger.metrics),
        }
        if self.versus:
            values.update(_prefixed("champion_test_", self.versus.champion.metrics))
            values.update(_comparison_headline(self.versus))
        return {key: float(value) for key, value in values.items() if value is not None}


def _prefixed(prefix: str, metrics: BinaryMetrics) -> dict[str, float | None]:
    return {f"{prefix}{name}": getattr(metrics, name) for name in HEADLINE_METRICS}


def _comparison_headline(versus: ChampionComparison) -> dict[str, float | None]:
    values: dict[str, float | None] = {
        "delta_f1": versus.f1.difference,
        "delta_f1_ci_low": versus.f1.ci_low,
        "delta_f1_ci_high": versus.f1.ci_high,
        "delta_f1_lower_bound": versus.f1.lower_bound,
        "delta_f1_p_not_better": versus.f1.p_not_better,
    }
    if versus.auc:
        values.update(
            {
                "delta_roc_auc": versus.auc.difference,
                "delta_roc_auc_p_value": versus.auc.p_value,
                "delta_roc_auc_p_superiority": versus.auc.p_superiority,
                "delta_roc_auc_ci_low": versus.auc.ci_low,
                "delta_roc_auc_ci_high": versus.auc.ci_high,
            }
        )
    return values


# --------------------------------------------------------------------------------------
# What a reviewer reads
# --------------------------------------------------------------------------------------


SMALL_NOTE = (
    "Small groups (too few images or melanomas) are shown but not used to judge a drop; "
    "'worse in' names the metrics where the challenger is below the champion."
)


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def signed(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


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
        rows.append((METRIC_NAMES[name], number(mine), number(theirs), signed(change)))
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


def summary_markdown(report: EvaluationReport, decision_lines: Sequence[str] = ()) -> str:
    lines = [f"# Melanoma classifier evaluation: {report.challenger.name}", ""]
    lines += [locked_set_sentence(report), ""]
    if decision_lines:
        lines += ["## Decision", "", *(f"- {line}" for line in decision_lines), ""]
    lines += ["## Headline metrics", "", "| metric | challenger | champion | difference |"]
    lines += ["|---|---:|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in headline_rows(report)]
    if report.versus:
        lines += [
            "",
            "## Paired statistics",
            "",
            *(f"- {s}" for s in statistics_lines(report.versus)),
        ]
    lines += ["", "## Confusion matrices", ""]
    lines += [_confusion_sentence(evaluation) for evaluation in report.evaluations]
    lines += ["", "## Subgroups", "", *_subgroup_markdown(report)]
    return "\n".join(lines) + "\n"


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
    for row, champion, worse in _subgroup_pairs(report):
        cells = [_attribute_name(row), row.group, str(row.images), str(row.melanoma)]
        cells += [number(getattr(row, name)) for name in SUBGROUP_METRICS]
        if report.versus:
            cells += [number(getattr(champion, name, None)) for name in SUBGROUP_METRICS]
        cells.append(", ".join(_flags(row, worse)))
        lines.append(f"| {' | '.join(cells)} |")
    lines += ["", SMALL_NOTE]
    return lines


def _subgroup_pairs(
    report: EvaluationReport,
) -> list[tuple[SubgroupRow, SubgroupRow | None, set[str]]]:
    champion = report.versus.champion if report.versus else None
    pairs = []
    for row in report.challenger.subgroups:
        theirs = champion.subgroup(row.attribute, row.group) if champion else None
        pairs.append((row, theirs, worse_metrics(row, theirs)))
    return pairs


def _attribute_name(row: SubgroupRow) -> str:
    return row.attribute.replace("_", " ")


def _flags(row: SubgroupRow, worse: set[str]) -> list[str]:
    flags = ["small"] if row.small else []
    if worse:
        names = (SUBGROUP_NAMES[name] for name in SUBGROUP_METRICS if name in worse)
        flags.append("worse in " + ", ".join(names))
    return flags


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td.text, th.text { text-align: left; }
td.worse { background: #fbd5d5; color: #8a1010; font-weight: bold; }
tr.small td { color: #777; font-style: italic; }
span.badge { white-space: nowrap; border-radius: 0.3em; padding: 0 0.4em; font-size: 0.85em; }
span.small { background: #eee; color: #555; }
span.worse { background: #fbd5d5; color: #8a1010; }
ul.decision li { font-weight: bold; }
figure { display: inline-block; margin: 0 1em 1em 0; }
figure img { width: 30em; border: 1px solid #ddd; }
table.confusion { display: inline-table; margin-right: 2em; }
"""
TEXT = ' class="text"'


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
    title = f"Melanoma classifier evaluation: {report.challenger.name}"
    parts = [
        f"<h1>{escaped(title)}</h1>",
        f"<p>{escaped(locked_set_sentence(report))}<br>Evaluated {escaped(report.created_at)}.</p>",
        _models_html(report),
    ]
    if decision_lines:
        items = "".join(f"<li>{escaped(line)}</li>" for line in decision_lines)
        parts.append(f'<h2>Decision</h2><ul class="decision">{items}</ul>')
    parts += [_headline_html(report), _confusions_html(report), _subgroups_html(report)]
    if images:
        parts.append(_figures_html(images, image_folder))
    return html_page(title, "\n".join(parts), STYLE)


def html_page(title: str, body: str, style: str) -> str:
    """A self-contained page: `body` is HTML already, `title` is text."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escaped(title)}</title><style>{style}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def escaped(value: object) -> str:
    return html.escape(str(value))


def row_html(cells: Sequence[str], header: bool = False) -> str:
    """A table row whose first cell is text (left-aligned) and the others numbers."""
    tag = "th" if header else "td"
    out = [f"<{tag}{TEXT if i == 0 else ''}>{escaped(c)}</{tag}>" for i, c in enumerate(cells)]
    return f"<tr>{''.join(out)}</tr>"


def _models_html(report: EvaluationReport) -> str:
    items = [
        f"<li><b>{escaped(e.role)}</b>: {escaped(e.model_uri)}"
        f"{escaped(f' (registered version {e.version})' if e.version else '')}</li>"
        for e in report.evaluations
    ]
    if not report.versus:
        items.append("<li>No champion yet: this would be the first model.</li>")
    return f"<ul>{''.join(items)}</ul>"


def _headline_html(report: EvaluationReport) -> str:
    rows = [row_html(("metric", "challenger", "champion", "difference"), header=True)]
    rows += [row_html(row) for row in headline_rows(report)]
    table = f"<h2>Headline metrics</h2><table>{''.join(rows)}</table>"
    if not report.versus:
        return table
    sentences = "".join(f"<li>{escaped(line)}</li>" for line in statistics_lines(report.versus))
    return f"{table}<h2>Paired statistics</h2><ul>{sentences}</ul>"


def _confusions_html(report: EvaluationReport) -> str:
    tables = [_confusion_html(e.name, e.metrics) for e in report.evaluations]
    return f"<h2>Confusion matrices</h2>{''.join(tables)}"


def _confusion_html(name: str, metrics: BinaryMetrics) -> str:
    counts: ConfusionMatrix = metrics.confusion
    rows = [
        row_html(("histopathology \\ called", "not melanoma", "melanoma"), header=True),
        row_html(("not melanoma", str(counts.true_negatives), str(counts.false_positives))),
        row_html(("melanoma", str(counts.false_negatives), str(counts.true_positives))),
    ]
    caption = f"{name} at threshold {number(metrics.threshold)}"
    return f'<table class="confusion"><caption>{escaped(caption)}</caption>{"".join(rows)}</table>'


def _figures_html(images: Mapping[str, str], folder: Path | None) -> str:
    figures = [
        f'<figure><img src="{escaped(image_source(name, folder))}" alt="{escaped(caption)}">'
        f"<figcaption>{escaped(caption)}</figcaption></figure>"
        for caption, name in images.items()
    ]
    return f"<h2>Curves</h2>{''.join(figures)}"


def image_source(name: str, folder: Path | None) -> str:
    if folder is None:
        return name
    encoded = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{encoded}"


def _subgroups_html(report: EvaluationReport) -> str:
    spanned = "".join(
        f'<th rowspan="2"{css}>{name}</th>'
        for name, css in (("attribute", TEXT), ("group", TEXT), ("images", ""), ("melanoma", ""))
    )
    roles = "".join(
        f'<th colspan="{len(SUBGROUP_METRICS)}">{escaped(e.name)}</th>' for e in report.evaluations
    )
    names = "".join(
        f"<th>{SUBGROUP_NAMES[name]}</th>" for _ in report.evaluations for name in SUBGROUP_METRICS
    )
    rows = [f'<tr>{spanned}{roles}<th rowspan="2"{TEXT}>flags</th></tr><tr>{names}</tr>']
    for row, champion, worse in _subgroup_pairs(report):
        rows.append(_subgroup_row_html(row, champion, worse, with_champion=bool(report.versus)))
    return f"<h2>Subgroups</h2><p>{escaped(SMALL_NOTE)}</p><table>{''.join(rows)}</table>"


def _subgroup_row_html(
    row: SubgroupRow, champion: SubgroupRow | None, worse: set[str], *, with_champion: bool
) -> str:
    cells = [f"<td{TEXT}>{escaped(v)}</td>" for v in (_attribute_name(row), row.group)]
    cells += [f"<td>{row.images}</td>", f"<td>{row.melanoma}</td>"]
    for name in SUBGROUP_METRICS:
        marked = ' class="worse"' if name in worse else ""
        cells.append(f"<td{marked}>{number(getattr(row, name))}</td>")
    if with_champion:
        cells += [f"<td>{number(getattr(champion, name, None))}</td>" for name in SUBGROUP_METRICS]
    badges = [
        f'<span class="badge {flag.split()[0]}">{escaped(flag)}</span>'
        for flag in _flags(row, worse)
    ]
    cells.append(f"<td{TEXT}>{' '.join(badges)}</td>")
    css = ' class="small"' if row.small else ""
    return f"<tr{css}>{''.join(cells)}</tr>"
