"""New lesions are placed by a stable hash, and the test set stays locked as labels arrive."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.dataset import SplitFractions, assign_lesion_splits

lesion_ids = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=60, unique=True)
fractions = st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1)).map(
    lambda t: SplitFractions(*(share / sum(t) for share in t))
)


@given(lesion_ids, lesion_ids, fractions, fractions)
def test_earlier_assignments_survive_new_lesions_and_new_fractions(first, later, before, after):
    week1 = assign_lesion_splits(first, {}, before)
    week2 = assign_lesion_splits([*first, *later], week1, after)
    assert {lesion: week2[lesion] for lesion in first} == week1
    trained_on = {lesion for lesion, split in week1.items() if split != "test"}
    assert not {lesion for lesion, split in week2.items() if split == "test"} & trained_on


@given(lesion_ids, st.randoms())
def test_assignment_does_not_depend_on_arrival_order(lesions, random):
    shuffled = list(lesions)
    random.shuffle(shuffled)
    shares = SplitFractions()
    assert assign_lesion_splits(lesions, {}, shares) == assign_lesion_splits(shuffled, {}, shares)


def test_fractions_are_met_on_many_lesions():
    counts = Counter(
        assign_lesion_splits([f"HAM_{i:07d}" for i in range(20_000)], {}, SplitFractions()).values()
    )
    assert counts["train"] / 20_000 == pytest.approx(0.70, abs=0.015)
    assert counts["val"] / 20_000 == pytest.approx(0.15, abs=0.015)
    assert counts["test"] / 20_000 == pytest.approx(0.15, abs=0.015)


def test_another_salt_gives_another_split_and_bad_fractions_are_refused():
    lesions = [f"HAM_{i:07d}" for i in range(200)]
    assert assign_lesion_splits(lesions, {}, SplitFractions()) != assign_lesion_splits(
        lesions, {}, SplitFractions(salt="other")
    )
    with pytest.raises(ValueError, match="sum to 1"):
        SplitFractions(train=0.8, val=0.3, test=0.1)
