"""The backtest: replay a labelled set as weekly arrivals of confirmed labels, and report
whether the champion keeps improving, week by week, as confirmed images arrive.

`weekly_arrivals` cuts the set into weeks by lesion; the orchestration (cme/backtest.py)
feeds each week through the real weekly retrain and records a `BacktestWeek`;
`write_backtest_report` and `verdict` tell the answer. The champion of every week is
scored on the FINAL locked test set, so the weeks are comparable; each challenger on its
own week's locked test set, as the gate saw it.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.dataset.manifest import write_atomically
from pipelines.pages import image_source, number, render_page

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ARRIVAL_COLUMNS = ("lesion_id", "image_id")
"""The columns a replayed set must have to arrive by lesion; the rest travel untouched."""

SKIPPED, REJECTED, PROMOTED, AWAITING, FAILED = (
    "skipped", "rejected", "promoted", "awaiting approval", "failed",
)  # fmt: skip
OUTCOMES = (SKIPPED, REJECTED, PROMOTED, AWAITING, FAILED)
CHALLENGER_COLOURS = {PROMOTED: "#1a9850", REJECTED: "#d73027", AWAITING: "#fdae61"}
NO_CHALLENGER_SHADES = {SKIPPED: "#bbbbbb", FAILED: "#f4a6a6"}
METRICS = {"roc_auc": "ROC AUC", "f1": "F1"}
REASON_SEPARATOR = " | "

CHART_PNG, PAGE_HTML, WEEKS_CSV, BACKTEST_JSON = (
    "backtest.png", "backtest.html", "weeks.csv", "backtest.json",
)  # fmt: skip


# --------------------------------------------------------------------------------------
# Weekly arrivals
# --------------------------------------------------------------------------------------


def weekly_arrivals(
    metadata: pd.DataFrame,
    weeks: int,
    *,
    seed: int = 0,
    first_week_share: float | None = None,
    start: date,
) -> list[pd.DataFrame]:
    """The rows of `metadata` as `weeks` batches of confirmed labels, each with its
    `confirmed_at` (`start`, then a week later each week). A lesion's images arrive
    together; lesions arrive in a seeded random order, balanced by lesion count, with
    `first_week_share` of the lesions in week 1 when given."""
    lesion_of_row = _lesion_ids(metadata)
    lesions = _lesions_in_arrival_order(lesion_of_row, seed)
    per_week = lesions_per_week(len(lesions), weeks, first_week_share)
    week_of_lesion = dict(zip(lesions, np.repeat(np.arange(weeks), per_week), strict=True))
    week_of_row = lesion_of_row.map(week_of_lesion).to_numpy()
    return [
        _confirmed(metadata.loc[week_of_row == week], start + timedelta(weeks=int(week)))
        for week in range(weeks)
    ]


def lesions_per_week(lesions: int, weeks: int, first_week_share: float | None = None) -> list[int]:
    """How many lesions arrive each week: as even as whole lesions allow, or
    `first_week_share` of them in week 1 and the rest spread evenly over the others."""
    if weeks < 1:
        raise ValueError(f"weeks must be at least 1, got {weeks}")
    if weeks > lesions:
        raise ValueError(
            f"{weeks} weeks need at least {weeks} lesions (one a week); the metadata has {lesions}"
        )
    if first_week_share is None:
        return _spread_evenly(lesions, weeks)
    if not 0 < first_week_share < 1:
        raise ValueError(f"first_week_share must be between 0 and 1, got {first_week_share}")
    if weeks == 1:
        return [lesions]
    first = min(max(round(first_week_share * lesions), 1), lesions - (weeks - 1))
    return [first, *_spread_evenly(lesions - first, weeks - 1)]


def _spread_evenly(lesions: int, weeks: int) -> list[int]:
    base, extra = divmod(lesions, weeks)
    return [base + 1 if week < extra else base for week in range(weeks)]


def _lesion_ids(metadata: pd.DataFrame) -> pd.Series:
    missing = [column for column in ARRIVAL_COLUMNS if column not in metadata.columns]
    if missing:
        raise ValueError(
            f"metadata is missing column(s) {', '.join(missing)}; "
            f"it has {', '.join(map(str, metadata.columns)) or 'none'}"
        )
    lesion_ids = metadata["lesion_id"].astype("string").str.strip()
    unnamed = int((lesion_ids.isna() | (lesion_ids == "")).sum())
    if unnamed:
        raise ValueError(f"{unnamed} row(s) have no lesion_id; every image needs its lesion")
    return lesion_ids


def _lesions_in_arrival_order(lesion_ids: pd.Series, seed: int) -> list[str]:
    """Distinct lesions, sorted then shuffled by `seed`: the order ignores the row order."""
    lesions = sorted(lesion_ids.unique())
    order = np.random.default_rng(seed).permutation(len(lesions))
    return [lesions[index] for index in order]


def _confirmed(rows: pd.DataFrame, confirmed_on: date) -> pd.DataFrame:
    batch = rows.reset_index(drop=True)
    batch["confirmed_at"] = confirmed_on.isoformat()
    return batch


# --------------------------------------------------------------------------------------
# One replayed week
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestWeek:
    """What one replayed week did. The challenger's metrics are on that week's locked test
    set; the champion's (the champion after the week) on the final one, `test_images`
    images, the same cases for every week."""

    week: int
    arrived: int
    images: int
    outcome: str
    reasons: tuple[str, ...]
    challenger_version: str | None
    challenger_f1: float | None
    challenger_roc_auc: float | None
    champion_version: str | None
    champion_f1: float | None
    champion_roc_auc: float | None
    test_images: int
    train_minutes: float | None = None
    initialized_from: str | None = None
    champion_partial_roc_auc: float | None = None
    champion_sensitivity: float | None = None
    champion_specificity: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; known: {', '.join(OUTCOMES)}")
        if self.week < 1:
            raise ValueError(f"weeks count from 1, got {self.week}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "week": self.week,
            "arrived": self.arrived,
            "images": self.images,
            "outcome": self.outcome,
            "reasons": list(self.reasons),
            "challenger_version": self.challenger_version,
            "challenger_f1": self.challenger_f1,
            "challenger_roc_auc": self.challenger_roc_auc,
            "champion_version": self.champion_version,
            "champion_f1": self.champion_f1,
            "champion_roc_auc": self.champion_roc_auc,
            "test_images": self.test_images,
            **{name: getattr(self, name) for name in LATER_FIELDS},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BacktestWeek:
        return cls(
            week=int(data["week"]),
            arrived=int(data["arrived"]),
            images=int(data["images"]),
            outcome=str(data["outcome"]),
            reasons=tuple(str(reason) for reason in data["reasons"]),
            challenger_version=_optional_text(data["challenger_version"]),
            challenger_f1=_optional_number(data["challenger_f1"]),
            challenger_roc_auc=_optional_number(data["challenger_roc_auc"]),
            champion_version=_optional_text(data["champion_version"]),
            champion_f1=_optional_number(data["champion_f1"]),
            champion_roc_auc=_optional_number(data["champion_roc_auc"]),
            test_images=int(data["test_images"]),
            train_minutes=_optional_number(data.get("train_minutes")),
            initialized_from=_optional_text(data.get("initialized_from")),
            champion_partial_roc_auc=_optional_number(data.get("champion_partial_roc_auc")),
            champion_sensitivity=_optional_number(data.get("champion_sensitivity")),
            champion_specificity=_optional_number(data.get("champion_specificity")),
        )


LATER_FIELDS = (
    "train_minutes", "initialized_from", "champion_partial_roc_auc", "champion_sensitivity",
    "champion_specificity",
)  # fmt: skip
"""Recorded since the weeks were warm-started; a report written before reads as None."""


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_number(value: Any) -> float | None:
    return None if value is None else float(value)


# --------------------------------------------------------------------------------------
# The answer: one line for the CLI
# --------------------------------------------------------------------------------------


def verdict(weeks: Sequence[BacktestWeek]) -> str:
    """Does the champion keep improving? Its final-test-set metrics from the first week it
    served to the last, and what the weeks decided."""
    if not weeks:
        return "no weeks replayed"
    return f"{_champion_trend(weeks)}; {_outcome_tally(weeks)}"


def _champion_trend(weeks: Sequence[BacktestWeek]) -> str:
    served = [week for week in weeks if week.champion_version is not None]
    if not served:
        return f"no champion after {len(weeks)} week{'s' if len(weeks) != 1 else ''}"
    first, last = served[0], served[-1]
    if first is last:
        return (
            f"champion ROC AUC {number(first.champion_roc_auc, 2)}, "
            f"F1 {number(first.champion_f1, 2)} (week {first.week} only)"
        )
    return (
        f"champion ROC AUC {number(first.champion_roc_auc, 2)} (week {first.week}) -> "
        f"{number(last.champion_roc_auc, 2)} (week {last.week}), "
        f"F1 {number(first.champion_f1, 2)} -> {number(last.champion_f1, 2)}"
    )


def _outcome_tally(weeks: Sequence[BacktestWeek]) -> str:
    counts = Counter(week.outcome for week in weeks)
    parts = [_counted(counts[PROMOTED], "promotion", "promotions")]
    for outcome, one, many in (
        (REJECTED, "rejection", "rejections"),
        (AWAITING, "awaiting approval", "awaiting approval"),
        (SKIPPED, "skipped week", "skipped weeks"),
        (FAILED, "failed week", "failed weeks"),
    ):
        if counts[outcome]:
            parts.append(_counted(counts[outcome], one, many))
    return ", ".join(parts)


def _counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


# --------------------------------------------------------------------------------------
# The report: chart, page, table, JSON
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestFiles:
    chart_png: Path
    html: Path
    csv: Path
    json: Path


def write_backtest_report(
    weeks: Sequence[BacktestWeek], folder: Path, *, title: str, notes: Sequence[str] = ()
) -> BacktestFiles:
    """Write the chart, a self-contained HTML page, weeks.csv and backtest.json into
    `folder`, each atomically."""
    if not weeks:
        raise ValueError("no weeks to report: the backtest replayed none")
    files = BacktestFiles(
        chart_png=folder / CHART_PNG,
        html=folder / PAGE_HTML,
        csv=folder / WEEKS_CSV,
        json=folder / BACKTEST_JSON,
    )
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomically(backtest_figure(weeks, title), files.chart_png)
    write_atomically(files.html, backtest_html(weeks, title, notes, folder).encode("utf-8"))
    write_atomically(files.csv, _weeks_csv(weeks))
    write_atomically(files.json, _backtest_json(weeks, title, notes))
    return files


def backtest_figure(weeks: Sequence[BacktestWeek], title: str) -> Figure:
    """ROC AUC above F1, by week: the champion as a line on the final test set, each
    challenger as a dot coloured by its outcome, weeks without a challenger shaded. The
    caller saves and closes it."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers; here, not at import
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True, constrained_layout=True)
    for axis, (metric, name) in zip(axes, METRICS.items(), strict=True):
        _plot_metric(axis, weeks, metric, name)
    numbers = [week.week for week in weeks]
    axes[-1].set_xticks(numbers, [f"{week.week}\n+{week.arrived}" for week in weeks])
    axes[-1].set_xlabel("week (and the confirmed labels that arrived in it)")
    handles: dict[str, Any] = {}
    for axis in axes:
        handles.update(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    figure.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=2,
                  fontsize="small")  # fmt: skip
    figure.suptitle(title)
    return figure


def _plot_metric(axis: Axes, weeks: Sequence[BacktestWeek], metric: str, name: str) -> None:
    numbers = [week.week for week in weeks]
    champion = [_or_nan(getattr(week, f"champion_{metric}")) for week in weeks]
    test_images = weeks[-1].test_images
    axis.plot(numbers, champion, color="black", marker=".", zorder=2,
              label=f"champion, final test set ({test_images} images)")  # fmt: skip
    for outcome, colour in CHALLENGER_COLOURS.items():
        scored = [
            week
            for week in weeks
            if week.outcome == outcome and getattr(week, f"challenger_{metric}") is not None
        ]
        if scored:
            axis.scatter([week.week for week in scored],
                         [getattr(week, f"challenger_{metric}") for week in scored],
                         color=colour, edgecolor="black", s=45, zorder=3,
                         label=f"challenger {outcome}, its week's test set")  # fmt: skip
    for week in weeks:
        if week.outcome in NO_CHALLENGER_SHADES:
            axis.axvspan(week.week - 0.4, week.week + 0.4, alpha=0.5, zorder=1,
                         color=NO_CHALLENGER_SHADES[week.outcome],
                         label=f"{week.outcome} week")  # fmt: skip
    axis.set_ylabel(name)
    axis.grid(alpha=0.3)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _save_atomically(figure: Figure, path: Path) -> None:
    from pipelines.evaluation.artifacts import save_figure  # imports pyplot: only when drawing

    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    save_figure(figure, partial)
    partial.replace(path)


def backtest_html(
    weeks: Sequence[BacktestWeek], title: str, notes: Sequence[str], folder: Path
) -> str:
    """The page (pipelines/templates/backtest.html.j2): title, notes, the verdict, the
    chart (read from `folder` and embedded) and every week's decision with its reasons."""
    return render_page(
        "backtest.html.j2",
        title=title,
        verdict=verdict(weeks),
        notes=notes,
        chart=image_source(CHART_PNG, folder),
        metrics_sentence=_metrics_sentence(weeks[-1].test_images),
        header=WEEK_HEADER,
        weeks=[(_week_cells(week), week.reasons) for week in weeks],
    )


def _metrics_sentence(test_images: int) -> str:
    return (
        f"Champion metrics are on the final locked test set ({test_images} images), the "
        "same cases for every week; challenger metrics are on the locked test set of the "
        "challenger's own week, as the gate saw them."
    )


WEEK_HEADER = (
    "week", "arrived", "images", "started from", "train min", "decision", "challenger",
    "challenger F1", "challenger ROC AUC", "champion", "champion F1", "champion ROC AUC",
    "champion pAUC>80%", "champion sensitivity", "champion specificity",
)  # fmt: skip


def _week_cells(week: BacktestWeek) -> tuple[str, ...]:
    return (
        str(week.week), str(week.arrived), str(week.images), week.initialized_from or "",
        number(week.train_minutes, 1), week.outcome, week.challenger_version or "none",
        number(week.challenger_f1), number(week.challenger_roc_auc),
        week.champion_version or "none", number(week.champion_f1),
        number(week.champion_roc_auc), number(week.champion_partial_roc_auc),
        number(week.champion_sensitivity), number(week.champion_specificity),
    )  # fmt: skip


def _weeks_csv(weeks: Sequence[BacktestWeek]) -> bytes:
    records = [{**week.to_dict(), "reasons": REASON_SEPARATOR.join(week.reasons)} for week in weeks]
    buffer = io.StringIO()
    pd.DataFrame.from_records(records).to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue().encode("utf-8")


def _backtest_json(weeks: Sequence[BacktestWeek], title: str, notes: Sequence[str]) -> bytes:
    document = {
        "title": title,
        "notes": list(notes),
        "verdict": verdict(weeks),
        "weeks": [week.to_dict() for week in weeks],
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------
# Arms: the same weeks replayed under different settings (the loop against restarting)
# --------------------------------------------------------------------------------------

ARMS_PNG, ARMS_MARKDOWN = "arms.png", "arms.md"
ARM_METRICS = {"roc_auc": "ROC AUC", "partial_roc_auc": "partial ROC AUC above 80% sensitivity"}


def read_backtest(path: Path) -> list[BacktestWeek]:
    """The weeks of a written backtest.json."""
    document = json.loads(path.read_text())
    return [BacktestWeek.from_dict(week) for week in document["weeks"]]


def arms_verdict(arms: Mapping[str, Sequence[BacktestWeek]]) -> str:
    """Where each arm's champion ended on the final locked test set, in one line."""
    ends = []
    for name, weeks in arms.items():
        served = [week for week in weeks if week.champion_roc_auc is not None]
        last = served[-1] if served else None
        total = sum(week.train_minutes or 0.0 for week in weeks)
        ends.append(
            f"{name}: ROC AUC {number(last.champion_roc_auc if last else None)}, "
            f"pAUC {number(last.champion_partial_roc_auc if last else None)} "
            f"after week {last.week if last else '-'} ({total:.0f} training min)"
        )
    return "; ".join(ends)


def write_arms_report(
    arms: Mapping[str, Sequence[BacktestWeek]], folder: Path, *, title: str
) -> tuple[Path, Path]:
    """A chart of each arm's champion by week and a Markdown table; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    chart, table = folder / ARMS_PNG, folder / ARMS_MARKDOWN
    _save_atomically(arms_figure(arms, title), chart)
    write_atomically(table, arms_markdown(arms, title).encode("utf-8"))
    return chart, table


def arms_figure(arms: Mapping[str, Sequence[BacktestWeek]], title: str) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 1, figsize=(9, 7), sharex=True, constrained_layout=True)
    for axis, (metric, name) in zip(axes, ARM_METRICS.items(), strict=True):
        for arm, weeks in arms.items():
            values = [_or_nan(getattr(week, f"champion_{metric}")) for week in weeks]
            line = axis.plot([week.week for week in weeks], values, marker="o", label=arm)
            if metric == "roc_auc":  # what each week trained, promoted or not
                challengers = [_or_nan(week.challenger_roc_auc) for week in weeks]
                axis.plot([week.week for week in weeks], challengers, linestyle="--",
                          marker="x", color=line[0].get_color(),
                          label=f"{arm}: the week's challenger (its week's test set)")  # fmt: skip
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    axes[-1].set_xlabel("week (champion on the final locked test set)")
    figure.suptitle(title)
    return figure


def arms_markdown(arms: Mapping[str, Sequence[BacktestWeek]], title: str) -> str:
    columns = ("started from", "train min", "decision", "ROC AUC", "pAUC", "F1", "sens", "spec")
    header = ["week", *(f"{arm}: {column}" for arm in arms for column in columns)]
    lines = [f"# {title}", "", arms_verdict(arms), "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]  # fmt: skip
    weeks = max(len(weeks) for weeks in arms.values())
    for index in range(weeks):
        cells = [str(index + 1)]
        for arm_weeks in arms.values():
            week = arm_weeks[index] if index < len(arm_weeks) else None
            cells += _arm_cells(week)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _arm_cells(week: BacktestWeek | None) -> list[str]:
    if week is None:
        return [""] * 8
    return [
        week.initialized_from or "", number(week.train_minutes, 1), week.outcome,
        number(week.champion_roc_auc), number(week.champion_partial_roc_auc),
        number(week.champion_f1), number(week.champion_sensitivity),
        number(week.champion_specificity),
    ]  # fmt: skip
