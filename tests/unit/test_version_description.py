"""The version page's description stays within MLflow's 5,000 characters: the evidence is
cut, never the history of what reviewers and the platform did to the version."""

from __future__ import annotations

from registry.models import DESCRIPTION_LIMIT, HISTORY_HEADING, _fitting


def test_a_description_within_the_limit_is_kept_whole():
    text = f"### Decision\n\n- pass\n\n{HISTORY_HEADING}\n\n- approved"
    assert _fitting(text) == text


def test_a_long_report_is_cut_and_the_history_kept():
    history = f"{HISTORY_HEADING}\n" + "".join(f"\n- line {n}" for n in range(20))
    text = "x" * 6000 + "\n\n" + history
    fitted = _fitting(text)
    assert len(fitted) <= DESCRIPTION_LIMIT
    assert fitted.endswith(history)
    assert "cut to fit MLflow's limit: the full report is on the run" in fitted
    assert fitted.startswith("x" * 1000)


def test_a_history_longer_than_the_limit_keeps_its_newest_lines():
    history = f"{HISTORY_HEADING}\n" + "".join(f"\n- event {n:05d}" for n in range(600))
    fitted = _fitting("evidence\n\n" + history)
    assert len(fitted) <= DESCRIPTION_LIMIT
    assert fitted.endswith("- event 00599")
    assert "- event 00000" not in fitted
