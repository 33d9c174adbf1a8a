"""The backtest's pure parts: weekly arrivals by lesion, the week record, the report files
and the one-line verdict. No training."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import date

import pandas as pd
import pytest
from PIL import Image

from pipelines.backtest import (
    BacktestWeek,
    lesions_per_week,
    verdict,
    weekly_arrivals,
    write_backtest_report,
)

START = date(2026, 1, 5)
COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def metadata(lesions: int = 40) -> pd.DataFrame:
    """HAM10000-shaped rows: lesion n has 1 + n % 3 images."""
    rows = [
        [f"HAM_{n:07d}", f"ISIC_{n:05d}_{k}", "mel" if n % 4 == 0 else "nv", "histo", 50.0,
         "female", "back"]
        for n in range(lesions)
        for k in range(1 + n % 3)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def lesion_order(weeks: list[pd.DataFrame]) -> list[list[str]]:
    return [sorted(set(batch["lesion_id"])) for batch in weeks]


def test_each_lesion_arrives_in_a_single_week():
    weeks = weekly_arrivals(metadata(), 5, seed=3, start=START)

    arrived = pd.concat([batch.assign(week=k) for k, batch in enumerate(weeks)])
    assert (arrived.groupby("lesion_id")["week"].nunique() == 1).all()


def test_every_row_arrives_exactly_once_with_its_columns_and_date():
    rows = metadata()

    weeks = weekly_arrivals(rows, 4, start=START)

    arrived = pd.concat(weeks)
    assert sorted(arrived["image_id"]) == sorted(rows["image_id"])
    assert arrived["image_id"].is_unique
    assert all(list(batch.columns) == [*COLUMNS, "confirmed_at"] for batch in weeks)
    assert [batch["confirmed_at"].unique().tolist() for batch in weeks] == [
        ["2026-01-05"], ["2026-01-12"], ["2026-01-19"], ["2026-01-26"],
    ]  # fmt: skip
    merged = arrived.drop(columns="confirmed_at").merge(rows, on=COLUMNS, how="outer")
    assert len(merged) == len(rows)  # every value travelled unchanged


def test_lesion_counts_are_balanced():
    weeks = weekly_arrivals(metadata(40), 6, start=START)

    assert sorted(len(lesions) for lesions in lesion_order(weeks)) == [6, 6, 7, 7, 7, 7]


def test_same_seed_same_weeks_other_seed_other_order():
    rows = metadata()
    shuffled = rows.sample(frac=1.0, random_state=7)

    first = weekly_arrivals(rows, 4, seed=1, start=START)
    again = weekly_arrivals(shuffled, 4, seed=1, start=START)
    other = weekly_arrivals(rows, 4, seed=2, start=START)

    assert lesion_order(first) == lesion_order(again)  # the row order does not matter
    assert lesion_order(first) != lesion_order(other)


def test_first_week_share_is_respected_and_the_rest_spread_evenly():
    weeks = weekly_arrivals(metadata(100), 5, first_week_share=0.4, start=START)

    assert [len(lesions) for lesions in lesion_order(weeks)] == [40, 15, 15, 15, 15]
    assert lesions_per_week(10, 4, 0.99) == [7, 1, 1, 1]  # every week keeps a lesion
    assert lesions_per_week(10, 1, 0.4) == [10]


@pytest.mark.parametrize(
    ("weeks", "share", "message"),
    [
        (0, None, "weeks must be at least 1, got 0"),
        (41, None, "41 weeks need at least 41 lesions (one a week); the metadata has 40"),
        (4, 1.0, "first_week_share must be between 0 and 1, got 1.0"),
        (4, 0.0, "first_week_share must be between 0 and 1"),
    ],
)
def test_bad_week_counts_and_shares_are_refused(weeks, share, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        weekly_arrivals(metadata(40), weeks, first_week_share=share, start=START)


def test_missing_columns_and_unnamed_lesions_are_refused():
    with pytest.raises(ValueError, match="missing column"):
        weekly_arrivals(metadata().drop(columns="lesion_id"), 2, start=START)
    unnamed = metadata()
    unnamed.loc[[0, 3], "lesion_id"] = None
    with pytest.raises(ValueError, match="2 row"):
        weekly_arrivals(unnamed, 2, start=START)


# --------------------------------------------------------------------------------------
# Weeks, report and verdict
# --------------------------------------------------------------------------------------


def week(number: int, outcome: str, champion: tuple[float, float] | None, **changes):
    """A replayed week; `champion` is (ROC AUC, F1) on the final test set."""
    record = BacktestWeek(
        week=number, arrived=100, images=100 * number, outcome=outcome,
        reasons=(f"pass  rule {number}: detail",), challenger_version=str(number),
        challenger_f1=0.3 + number / 100, challenger_roc_auc=0.7 + number / 100,
        champion_version=str(number) if champion else None,
        champion_roc_auc=champion[0] if champion else None,
        champion_f1=champion[1] if champion else None, test_images=250,
    )  # fmt: skip
    return replace(record, **changes)


@pytest.fixture
def improving() -> list[BacktestWeek]:
    return [
        week(1, "promoted", (0.71, 0.31)),
        week(2, "rejected", (0.71, 0.31), reasons=("FAIL  f1: 0.30 < 0.31 <script>x</script>",)),
        week(3, "skipped", (0.71, 0.31), reasons=("only 4 new labels, fewer than 20",),
             challenger_version=None, challenger_f1=None, challenger_roc_auc=None),
        week(4, "awaiting approval", (0.71, 0.31)),
        week(5, "promoted", (0.84, 0.52)),
    ]  # fmt: skip


def test_week_round_trips_through_json_and_refuses_unknown_outcomes(improving):
    for record in improving:
        assert BacktestWeek.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    with pytest.raises(ValueError, match="unknown outcome 'won'"):
        week(1, "won", None)


def test_report_writes_chart_page_table_and_json(improving, tmp_path):
    files = write_backtest_report(
        improving, tmp_path / "report", title="HAM10000 replay", notes=["seed 0 & 5 weeks"]
    )

    with Image.open(files.chart_png) as chart:
        assert chart.format == "PNG" and chart.width > 400
    page = files.html.read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and "HAM10000 replay" in page
    assert "seed 0 &amp; 5 weeks" in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    for record in improving:
        assert all(f"<li>{reason}</li>" in page for reason in record.reasons if "<" not in reason)
    table = pd.read_csv(files.csv)
    assert table["week"].tolist() == [1, 2, 3, 4, 5]
    assert table["outcome"].tolist() == [r.outcome for r in improving]
    document = json.loads(files.json.read_text(encoding="utf-8"))
    assert [BacktestWeek.from_dict(w) for w in document["weeks"]] == improving
    assert document["verdict"] == verdict(improving)
    left = sorted(path.name for path in files.json.parent.iterdir())  # no partial files
    assert left == ["backtest.html", "backtest.json", "backtest.png", "weeks.csv"]


def test_report_without_any_champion_still_draws(tmp_path):
    weeks = [week(1, "rejected", None), week(2, "failed", None, challenger_f1=None)]

    files = write_backtest_report(weeks, tmp_path, title="no champion")

    with Image.open(files.chart_png) as chart:
        chart.verify()
    assert "no champion after 2 weeks" in files.html.read_text(encoding="utf-8")


def test_verdict_tells_the_champion_trend_and_the_decisions(improving):
    assert verdict(improving) == (
        "champion ROC AUC 0.71 (week 1) -> 0.84 (week 5), F1 0.31 -> 0.52; "
        "2 promotions, 1 rejection, 1 awaiting approval, 1 skipped week"
    )


def test_verdict_without_a_champion():
    weeks = [week(1, "skipped", None), week(2, "rejected", None), week(3, "rejected", None)]

    assert verdict(weeks) == "no champion after 3 weeks; 0 promotions, 2 rejections, 1 skipped week"
    assert verdict([]) == "no weeks replayed"


def test_verdict_with_a_champion_from_the_last_week_only():
    weeks = [week(1, "rejected", None), week(2, "promoted", (0.8, 0.5))]

    assert verdict(weeks).startswith("champion ROC AUC 0.80, F1 0.50 (week 2 only); 1 promotion")
