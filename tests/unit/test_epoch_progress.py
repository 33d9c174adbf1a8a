"""A training's progress line says how far it has come: epoch k of n and the time left at
most (early stopping may end it sooner), for a terminal and a flow run's log alike."""

from __future__ import annotations

from pipelines.training.fit import EpochRecord


def record(**values: object) -> EpochRecord:
    fields = {"epoch": 3, "phase": "fine-tune", "metrics": {"loss": 0.5, "val_auc": 0.81234},
              "seconds": 12.5, "images": 100, **values}  # fmt: skip
    return EpochRecord(**fields)  # type: ignore[arg-type]


def test_the_line_names_the_epoch_of_those_planned_and_the_time_left():
    line = record(planned=10, seconds_left=125.0).line()
    assert line == (
        "epoch   3/10 fine-tune loss 0.5000  val_auc 0.8123  (12.5 s, at most 2 min 05 s left)"
    )
    assert record(planned=10, seconds_left=40.4).line().endswith("(12.5 s, at most 40 s left)")


def test_an_ensemble_member_and_a_line_without_a_plan_still_read():
    member = record(member=2, members=3, planned=4, seconds_left=0.0).line()
    assert member.startswith("member 2/3 epoch   3/4 fine-tune")
    assert record().line() == "epoch   3 fine-tune loss 0.5000  val_auc 0.8123  (12.5 s)"
