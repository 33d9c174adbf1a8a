"""Long commands say how far they have come: off a terminal (flows, CI, a log file) a plain
line per step with the count, the total and the time left at the pace so far; on a
terminal a bar (rich) in its place."""

from __future__ import annotations

import re

from cme.cli.common import progress
from cme.cli.training import _shown
from pipelines.durations import duration
from pipelines.training.fit import EpochRecord


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (4.4, 65, 3599.6, 8040)] == [
        "4 s", "1 min 05 s", "1 h 00 min", "2 h 14 min",
    ]  # fmt: skip


def test_off_a_terminal_each_step_is_a_line_with_the_time_left(capsys):
    with progress("importing metadata.csv", 300, "rows") as advance:
        advance(100, "100 registered")
        advance(300, "300 registered")
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(
        r"importing metadata.csv: 100 of 300 rows \(about \d+ s left\): 100 registered", lines[0]
    ), lines[0]
    assert (
        lines[1] == "importing metadata.csv: 300 of 300 rows: 300 registered"
    )  # done: no estimate


def test_uneven_steps_give_no_estimate_and_a_later_total_replaces_the_first(capsys):
    with progress("snapshot", 4, "steps", time_left=False) as step:
        step(2, "versioning data/ with DVC (10,017 files: hashing, caching, pushing)")
    with progress("training", None, "epochs", time_left=False) as advance:
        advance(1, "val ROC AUC 0.700")
        advance(2, "", total=12)
    assert capsys.readouterr().err.splitlines() == [
        "snapshot: 2 of 4 steps: versioning data/ with DVC (10,017 files: hashing, caching, "
        "pushing)",
        "training: 1 epochs: val ROC AUC 0.700",
        "training: 2 of 12 epochs",
    ]


def test_a_later_unit_replaces_the_first_as_a_step_counts_its_files(capsys):
    with progress("snapshot", 4, "steps", time_left=False) as advance:
        advance(2, "versioning data/ with DVC")
        advance(700, "versioning data/ with DVC: Adding data to cache", total=1503, unit="files")
        advance(3, "recording the snapshot", total=4, unit="steps")
    assert capsys.readouterr().err.splitlines() == [
        "snapshot: 2 of 4 steps: versioning data/ with DVC",
        "snapshot: 700 of 1503 files: versioning data/ with DVC: Adding data to cache",
        "snapshot: 3 of 4 steps: recording the snapshot",
    ]


def test_work_that_prints_its_own_lines_adds_none(capsys):
    with progress("training", None, "epochs", plain_lines=False) as advance:
        advance(1, "val ROC AUC 0.700")
    assert capsys.readouterr().err == ""


def test_a_training_epoch_advances_the_bar_across_ensemble_members(capsys):
    seen: list[tuple[int, str, int | None]] = []
    record = EpochRecord(epoch=3, phase="fine-tune", metrics={"val_auc": 0.8123}, seconds=12.5,
                         images=100, member=2, members=3, planned=4, seconds_left=65.0)  # fmt: skip
    _shown(lambda done, detail, total=None: seen.append((done, detail, total)), record)
    assert seen == [(7, "val ROC AUC 0.812, at most 1 min 05 s left", 12)]
    assert capsys.readouterr().out.startswith("member 2/3 epoch   3/4 fine-tune")


def test_a_flow_tells_the_watchers_of_the_command_that_runs_it_and_only_those():
    from flows.common import Watchers

    heard: list[str] = []
    events: Watchers[str] = Watchers("test events")
    events.teller()("before")  # nobody watches yet
    with events.watching(heard.append), events.watching(lambda e: heard.append(e.upper())):
        tell = events.teller()
        tell("epoch 1")
    tell("late")  # a teller keeps the watchers of where it was taken
    events.teller()("after")
    assert heard == ["epoch 1", "EPOCH 1", "late", "LATE"]


def test_the_screening_bar_counts_images_done_of_every_kind():
    from cme.cli.screening import _advanced
    from usecases.screening import BatchOutcome

    seen: list[tuple[int, str, int | None]] = []
    outcomes = [BatchOutcome(250, 6, (("x.jpg", "unreadable"),)), BatchOutcome(256, 0, ())]
    _advanced(lambda done, detail, total=None: seen.append((done, detail, total)), outcomes)
    assert seen == [(513, "506 scored now, 6 before, 1 not scored", None)]
