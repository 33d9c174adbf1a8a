"""The train / val / test split, by lesion, with a locked test set.

HAM10000 has several images of many lesions: splitting by image would put views of the same
lesion on both sides and inflate every test figure. So whole lesions are assigned, and:

- a lesion assigned once keeps its split in every later snapshot. A test lesion stays in
  test (the locked test set champion and challenger are both scored on), and a lesion a
  model trained on can never turn up in its test set;
- a new lesion is placed by a stable hash of its id (and a salt), so the assignment does not
  depend on arrival order, on the other lesions, or on the machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15
    salt: str = "cme-lesion-split-v1"

    def __post_init__(self) -> None:
        shares = (self.train, self.val, self.test)
        if any(share < 0 for share in shares) or abs(sum(shares) - 1) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {shares}")


def stable_unit_interval(lesion_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by the lesion id and the salt alone."""
    digest = hashlib.sha256(f"{salt}\0{lesion_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for_new_lesion(lesion_id: str, fractions: SplitFractions) -> Split:
    position = stable_unit_interval(lesion_id, fractions.salt)
    if position < fractions.test:
        return "test"
    if position < fractions.test + fractions.val:
        return "val"
    return "train"


def assign_lesion_splits(
    lesion_ids: Iterable[str],
    earlier: Mapping[str, Split],
    fractions: SplitFractions,
) -> dict[str, Split]:
    """The split of every lesion in `lesion_ids`: its earlier split when it has one (from the
    previous snapshot), else the stable hash's. Lesions of `earlier` that are absent now
    (say, every image relabelled away) are not brought back."""
    assigned: dict[str, Split] = {}
    for lesion_id in lesion_ids:
        previous = earlier.get(lesion_id)
        if previous is not None and previous not in SPLITS:
            raise ValueError(f"lesion {lesion_id} has unknown earlier split {previous!r}")
        assigned[lesion_id] = previous or split_for_new_lesion(lesion_id, fractions)
    return assigned
