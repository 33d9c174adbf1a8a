"""The same weeks replayed two ways (the loop, warm-started from the champion, against
restarting every week): read back from their reports and set side by side. No training."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from pipelines.backtest import (
    BacktestWeek,
    arms_markdown,
    arms_verdict,
    read_backtest,
    write_arms_report,
    write_backtest_report,
)


def week(number: int, auc: float, *, started: str, minutes: float) -> BacktestWeek:
    return BacktestWeek(
        week=number, arrived=100, images=100 * number, outcome="promoted", reasons=("ok",),
        challenger_version=str(number), challenger_f1=0.5, challenger_roc_auc=auc,
        champion_version=str(number), champion_f1=0.5, champion_roc_auc=auc, test_images=300,
        train_minutes=minutes, initialized_from=started, champion_partial_roc_auc=auc / 10,
        champion_sensitivity=0.9, champion_specificity=0.6,
    )  # fmt: skip


LOOP = [
    week(1, 0.80, started="base:none", minutes=30.0),
    week(2, 0.84, started="melanoma-resnet50 version 1", minutes=6.0),
]
RESTART = [
    week(1, 0.80, started="base:none", minutes=30.0),
    week(2, 0.78, started="base:none", minutes=6.0),
]


def test_a_written_backtest_reads_back_week_for_week(tmp_path: Path) -> None:
    files = write_backtest_report(LOOP, tmp_path / "report", title="loop")
    assert read_backtest(files.json) == LOOP
    page = files.html.read_text()
    assert "melanoma-resnet50 version 1" in page and "champion pAUC&gt;80%" in page


def test_a_report_written_before_warm_starts_reads_with_the_new_fields_empty(
    tmp_path: Path,
) -> None:
    old = {key: value for key, value in LOOP[0].to_dict().items() if key != "train_minutes"}
    old.pop("initialized_from")
    path = tmp_path / "backtest.json"
    path.write_text(json.dumps({"weeks": [old]}))
    (read,) = read_backtest(path)
    assert (read.train_minutes, read.initialized_from) == (None, None)
    assert read.champion_roc_auc == 0.80


def test_the_arms_end_where_their_last_champions_stand() -> None:
    assert arms_verdict({"loop": LOOP, "restart": RESTART}) == (
        "loop: ROC AUC 0.840, pAUC 0.084 after week 2 (36 training min); "
        "restart: ROC AUC 0.780, pAUC 0.078 after week 2 (36 training min)"
    )


def test_the_table_sets_each_week_of_each_arm_side_by_side(tmp_path: Path) -> None:
    table = arms_markdown({"loop": LOOP, "restart": RESTART}, "t").splitlines()
    assert table[4].startswith("| week | loop: started from | loop: train min |")
    assert table[7] == (
        "| 2 | melanoma-resnet50 version 1 | 6.0 | promoted | 0.840 | 0.084 | 0.500 | 0.900 "
        "| 0.600 | base:none | 6.0 | promoted | 0.780 | 0.078 | 0.500 | 0.900 | 0.600 |"
    )
    chart, written = write_arms_report({"loop": LOOP, "restart": RESTART}, tmp_path, title="t")
    assert written.read_text().splitlines() == table
    assert Image.open(chart).size[0] > 600
