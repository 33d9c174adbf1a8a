"""When the weekly retrain runs: labels are new when the champion never learnt them (a new
image, or an image whose diagnosis changed since), and a week with too few is skipped."""

from __future__ import annotations

import pandas as pd

from usecases.retrain_steps import LabelPull, count_new_labels


def manifest(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """As read_manifest returns it: Arrow-backed strings."""
    frame = pd.DataFrame(rows, columns=["image_id", "dx"])
    return frame.astype("string[pyarrow]")


def pull(new_labels: int, champion: str | None = "3", evaluated: str | None = None) -> LabelPull:
    snapshot = "20261116T020000Z-1a2b3c4d" if champion else None
    return LabelPull(manifest([]), new_labels, champion, snapshot, evaluated)


def test_without_a_champion_every_label_is_new() -> None:
    assert count_new_labels(manifest([("a", "nv"), ("b", "mel")]), None) == 2


def test_new_images_and_changed_diagnoses_count_unchanged_ones_do_not() -> None:
    learnt = manifest([("a", "nv"), ("b", "nv"), ("c", "mel")])
    now = manifest([("a", "nv"), ("b", "mel"), ("c", "mel"), ("d", "bkl"), ("e", "mel")])
    assert count_new_labels(now, learnt) == 3  # b relabelled, d and e new


def test_an_image_withdrawn_since_is_not_a_new_label() -> None:
    learnt = manifest([("a", "nv"), ("b", "mel")])
    assert count_new_labels(manifest([("a", "nv")]), learnt) == 0


def test_a_week_below_the_minimum_is_skipped_with_the_numbers() -> None:
    reason = pull(12).skip_reason(30)
    assert reason == (
        "12 new labels since the champion's snapshot 20261116T020000Z-1a2b3c4d (version 3); "
        "30 needed"
    )
    assert pull(12, champion=None).skip_reason(30) == (
        "12 new labels since the start (no champion yet); 30 needed"
    )


def test_enough_new_labels_retrain() -> None:
    assert pull(30).skip_reason(30) is None


def test_labels_already_trained_on_are_not_trained_on_again() -> None:
    reason = pull(80, evaluated="4").skip_reason(30)
    assert reason is not None and "evaluated as version 4" in reason
