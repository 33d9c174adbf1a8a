"""Row checks of a lab export, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from registry.labels import IntakeRules, RejectedSubmission
from registry.labels.intake import SubmittedRow, check_row

NOW = datetime(2026, 11, 21, tzinfo=UTC)
GOOD = {
    "lesion_id": "HAM_0000118",
    "image_id": "ISIC_0027419",
    "dx": "bkl",
    "dx_type": "histo",
    "age": "80.0",
    "sex": "male",
    "localization": "scalp",
}


def test_a_good_row_becomes_typed_values():
    checked = check_row(SubmittedRow(2, dict(GOOD)), IntakeRules(), NOW)
    assert (checked.image_id, checked.lesion_id, checked.diagnosis.age) == (
        "ISIC_0027419",
        "HAM_0000118",
        80.0,
    )
    assert checked.confirmed_at is None


def test_vocabulary_is_case_and_space_tolerant_and_age_may_be_empty():
    row = dict(GOOD, dx=" MEL ", sex="Female", localization="Lower Extremity", age="")
    diagnosis = check_row(SubmittedRow(2, row), IntakeRules(), NOW).diagnosis
    assert (diagnosis.dx, diagnosis.sex, diagnosis.localization, diagnosis.age) == (
        "mel",
        "female",
        "lower extremity",
        None,
    )
    assert diagnosis.is_melanoma


def test_age_bounds_come_from_the_rules():
    with pytest.raises(RejectedSubmission, match=r"outside 18\.\.90"):
        check_row(SubmittedRow(2, dict(GOOD, age="95")), IntakeRules(age_min=18, age_max=90), NOW)


@given(st.text(min_size=1, max_size=40))
@example("0\n")
@example("ISIC_1\x00")
def test_no_accepted_image_id_can_leave_the_images_folder(image_id):
    try:
        checked = check_row(SubmittedRow(2, dict(GOOD, image_id=image_id)), IntakeRules(), NOW)
    except RejectedSubmission:
        return
    assert "/" not in checked.image_id and "\\" not in checked.image_id
    assert ".." not in checked.image_id and checked.image_id.strip() == checked.image_id
    assert checked.image_id.isprintable()
    assert checked.image_id not in {".", ""}
