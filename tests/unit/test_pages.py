"""The shared kit of the reviewer pages (pipelines/pages.py and pipelines/templates): one
layout and stylesheet for the evaluation page and the backtest page, every value escaped."""

from __future__ import annotations

import base64

from pipelines.backtest import BacktestWeek, backtest_html
from pipelines.evaluation.metrics import binary_metrics
from pipelines.evaluation.rendering import summary_html
from pipelines.evaluation.report import EvaluationReport, ModelEvaluation
from pipelines.evaluation.subgroups import SubgroupRow
from pipelines.pages import image_source, number, signed

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def evaluation_page(tmp_path) -> str:
    row = SubgroupRow(
        attribute="sex", group=SCRIPT, images=6, melanoma=3, sensitivity=1.0,
        specificity=0.5, f1=0.8, roc_auc=0.9, small=True,
    )  # fmt: skip
    metrics = binary_metrics([1, 1, 1, 0, 0, 0], [0.9, 0.6, 0.7, 0.2, 0.8, 0.1], 0.5)
    report = EvaluationReport(
        snapshot_id=SCRIPT, test_images=6, test_melanoma=3, test_lesions=5,
        challenger=ModelEvaluation("challenger", f"runs:/{SCRIPT}", None, metrics, (row,)),
        versus=None, created_at="2026-11-02T10:00:00+00:00",
    )  # fmt: skip
    (tmp_path / "roc.png").write_bytes(b"\x89PNG")
    return summary_html(report, [SCRIPT], {f'ROC "{SCRIPT}"': "roc.png"}, image_folder=tmp_path)


def backtest_page(tmp_path) -> str:
    week = BacktestWeek(
        week=1, arrived=10, images=10, outcome="rejected", reasons=(SCRIPT,),
        challenger_version=SCRIPT, challenger_f1=0.5, challenger_roc_auc=0.7,
        champion_version=None, champion_f1=None, champion_roc_auc=None, test_images=6,
    )  # fmt: skip
    (tmp_path / "backtest.png").write_bytes(b"\x89PNG")
    return backtest_html([week], f"replay {SCRIPT}", [SCRIPT], tmp_path)


def test_both_pages_escape_every_value_they_show(tmp_path):
    evaluation, backtest = evaluation_page(tmp_path), backtest_page(tmp_path)

    assert "<script" not in evaluation and "<script" not in backtest
    # snapshot, model URI, decision, subgroup group, caption (alt and text)
    assert evaluation.count(ESCAPED) == 6
    assert f'alt="ROC &#34;{ESCAPED}&#34;"' in evaluation
    # title (head, heading and alt), note, challenger version, reason
    assert backtest.count(ESCAPED) == 6


def test_both_pages_share_one_layout_and_stylesheet(tmp_path):
    evaluation, backtest = evaluation_page(tmp_path), backtest_page(tmp_path)

    for page in (evaluation, backtest):
        assert page.startswith('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">')
        assert page.endswith("</body></html>\n")
        assert "td.worse { background: #fbd5d5;" in page
        assert 'src="data:image/png;base64,' + base64.b64encode(b"\x89PNG").decode() in page
    assert "figure.backtest img" in backtest and "figure.backtest img" not in evaluation
    assert '<tr><th class="text">week</th><th>arrived</th>' in backtest
    assert '<tr><th class="text">metric</th><th>challenger</th>' in evaluation


def test_numbers_and_figures(tmp_path):
    assert (number(0.12345), number(0.5, 2), number(None)) == ("0.123", "0.50", "n/a")
    assert (signed(0.1), signed(-0.02, 2), signed(None)) == ("+0.100", "-0.02", "n/a")
    (tmp_path / "roc.png").write_bytes(b"png")
    assert image_source("roc.png", None) == "roc.png"
    assert image_source("roc.png", tmp_path) == "data:image/png;base64,cG5n"
