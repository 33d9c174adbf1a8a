"""The demo: three weeks of the platform's life on generated images, through the real flows.

Each week a steward's lab export lands in the inbox (label-inbox flow), the weekly retrain
runs (weekly-retrain flow), and a reviewer approves the challenger when the gate passed it
and the policy asks for approval. Nothing is downloaded: training runs from scratch at 64 px
so that three retrains take minutes on two CPU cores."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cme.bootstrap import App
from pipelines.errors import Refused
from usecases.retrain_steps import RetrainSummary
from usecases.sample_data import SampleSpec, write_sample_data

DEMO_STEWARD = "demo-steward"
DEMO_REVIEWER = "demo-reviewer"
DEMO_OVERRIDES = (
    # ResNet50 from scratch at 64 px: no ImageNet download, a minute a retrain on a laptop.
    "train.weights=none",
    "train.unfreeze_from=all",
    "train.image_size=64",
    "train.epochs=3",
    "train.learning_rate=0.001",
    "train.batch_size=16",
    # Operate where melanoma screening does: the threshold that finds 95% of the melanoma
    # in the validation split (the gate's sensitivity floor is 0.80).
    "evaluate.target_sensitivity=0.95",
    # The demo drops each export whole; a steward's copy may take a while.
    "inbox.settle_seconds=0",
    # Each generated week is drawn on its own, so the drift report warns every week; the demo
    # shows continued education (weeks 2 and 3 start from the champion) instead.
    "retrain.full_on_drift=false",
)


# Generated exports are seeded by week. With 200 images, about 1 seed in 3 puts fewer than
# four melanoma lesions in the validation or test split (two stop the week at validation);
# these put 5 and 10 there in week 1.
FIRST_SEED = 13


class DemoFailed(Refused):
    """A week of the demo did not complete; the message says which and why."""


@dataclass(frozen=True)
class DemoWeek:
    week: int
    intake: list[str]
    retrain: RetrainSummary
    review: str | None = None

    def lines(self) -> list[str]:
        lines = [*self.intake, *self.retrain.lines()]
        if self.review:
            lines.append(self.review)
        return [f"week {self.week}: {line}" for line in lines]


def week_sizes(weeks: int, first_week: int, later_weeks: int) -> list[int]:
    return [first_week, *([later_weeks] * (weeks - 1))]


def run_demo(
    app: App,
    folder: Path,
    sizes: list[int],
    overrides: list[str],
    on_week: Callable[[DemoWeek], None] = lambda _week: None,
) -> list[DemoWeek]:
    """Live `len(sizes)` weeks: generate and drop each week's export, import it, retrain,
    review. Returns what happened each week."""
    weeks = []
    for week, images in enumerate(sizes, start=1):
        drop_export(app, folder, week, images)
        intake = _run_flow("label-inbox", week, label_inbox_flow(), steward=DEMO_STEWARD,
                           overrides=overrides)  # fmt: skip
        summary = _run_flow("weekly-retrain", week, weekly_retrain_flow(), steward=DEMO_STEWARD,
                            overrides=overrides)  # fmt: skip
        done = DemoWeek(week, intake[1:], summary, review(app, summary))
        weeks.append(done)
        on_week(done)
    return weeks


def drop_export(app: App, folder: Path, week: int, images: int) -> Path:
    """Generate week `week`'s lab export (kept under `folder`) and copy it into the inbox,
    as a steward would."""
    generated = folder / f"week{week}"
    if not (generated / "metadata.csv").is_file():
        write_sample_data(generated, SampleSpec(n=images, seed=FIRST_SEED + week - 1))
    dropped = app.settings.inbox_dir / f"lab-export-week{week}"
    staging = app.settings.inbox_dir / f".{dropped.name}.copying"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(generated, staging)
    staging.rename(dropped)
    return dropped


def review(app: App, summary: RetrainSummary) -> str | None:
    """The demo's reviewer approves what the gate passed and waits for approval."""
    if summary.status != "awaiting approval" or summary.version is None:
        return None
    return app.champions().approve(summary.version, DEMO_REVIEWER).message


def label_inbox_flow() -> Any:
    from flows.label_inbox import label_inbox

    return label_inbox


def weekly_retrain_flow() -> Any:
    from flows.weekly_retrain import weekly_retrain

    return weekly_retrain


def _run_flow(name: str, week: int, flow: Any, **parameters: Any) -> Any:
    state = flow(**parameters, return_state=True)
    if not state.is_completed():
        raise DemoFailed(f"week {week}: {name} ended {state.name}: {state.message}")
    return state.result()
