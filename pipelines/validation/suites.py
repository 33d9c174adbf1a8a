"""The Great Expectations suites a snapshot manifest must pass, built in code.

Two suites run over one manifest: `manifest` (schema, vocabularies, ranges, uniqueness,
lesion integrity, class balance) and `image_facts` (the facts measured when each image
was registered: format, colour mode, size, brightness; and that the file is there).

Rules GX has no expectation for (one diagnosis per lesion, one split per lesion, the
locked test set, label agreeing with dx) become check columns computed per row, so that a
plain value expectation names the offending images.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.dataset.manifest import MANIFEST_COLUMNS, MELANOMA
from pipelines.dataset.split import SPLITS
from pipelines.validation.bounds import ManifestBounds
from pipelines.validation.report import RuleResult

log = logging.getLogger(__name__)

MANIFEST_SUITE = "manifest"
IMAGE_FACTS_SUITE = "image_facts"
IMAGE_FORMATS = ("JPEG", "PNG")
CHECK_COLUMNS = (
    "diagnoses_in_lesion", "splits_in_lesion", "split_as_locked", "label_matches_dx",
    "image_file_present", "melanoma_lesions_in_split", "other_lesions_in_split",
)  # fmt: skip
_LESION_CHECKS = frozenset({"diagnoses_in_lesion", "splits_in_lesion", "split_as_locked"})
_SPLIT_CHECKS = frozenset({"melanoma_lesions_in_split", "other_lesions_in_split"})
NOT_NULL_COLUMNS = ("image_id", "lesion_id", "sha256", "path", "label", "split", "dx", "dx_type")


@dataclass(frozen=True)
class Expectation:
    suite: str
    rule: str
    kind: str
    kwargs: Mapping[str, Any]

    @property
    def column(self) -> str | None:
        column = self.kwargs.get("column")
        return str(column) if column is not None else None


def expectations(
    bounds: ManifestBounds, vocabulary: Mapping[str, Collection[str]]
) -> list[Expectation]:
    """Every rule, in the order the summary prints them."""
    return [*_manifest_rules(bounds, vocabulary), *_image_fact_rules(bounds)]


def _manifest_rules(
    bounds: ManifestBounds, vocabulary: Mapping[str, Collection[str]]
) -> list[Expectation]:
    def rule(name: str, kind: str, **kwargs: Any) -> Expectation:
        return Expectation(MANIFEST_SUITE, name, kind, kwargs)

    rules = [
        rule(
            "manifest columns",
            "ExpectTableColumnsToMatchSet",
            column_set=[*MANIFEST_COLUMNS, *CHECK_COLUMNS],
            exact_match=True,
        ),
        *(
            rule(f"{column} present", "ExpectColumnValuesToNotBeNull", column=column)
            for column in NOT_NULL_COLUMNS
        ),
        *(
            rule(f"{column} in vocabulary", "ExpectColumnValuesToBeInSet", column=column,
                 value_set=sorted(values))
            for column, values in vocabulary.items()
        ),
        rule("split is train, val or test", "ExpectColumnValuesToBeInSet", column="split",
             value_set=list(SPLITS)),
        rule("label is 0 or 1", "ExpectColumnValuesToBeInSet", column="label", value_set=[0, 1]),
        rule("label agrees with dx", "ExpectColumnValuesToBeInSet", column="label_matches_dx",
             value_set=[True]),
        rule("age within range", "ExpectColumnValuesToBeBetween", column="age",
             min_value=bounds.age_min, max_value=bounds.age_max),
        rule("image_id unique", "ExpectColumnValuesToBeUnique", column="image_id"),
        rule("sha256 unique", "ExpectColumnValuesToBeUnique", column="sha256"),
        rule("sha256 well formed", "ExpectColumnValuesToMatchRegex", column="sha256",
             regex=r"^[0-9a-f]{64}$"),
        rule("one diagnosis per lesion", "ExpectColumnValuesToBeInSet",
             column="diagnoses_in_lesion", value_set=[1]),
        rule("no lesion in two splits", "ExpectColumnValuesToBeInSet", column="splits_in_lesion",
             value_set=[1]),
        rule("locked splits kept", "ExpectColumnValuesToBeInSet", column="split_as_locked",
             value_set=[True]),
        rule("melanoma share within bounds", "ExpectColumnMeanToBeBetween", column="label",
             min_value=bounds.melanoma_share_min, max_value=bounds.melanoma_share_max),
        rule("enough melanoma", "ExpectColumnSumToBeBetween", column="label",
             min_value=bounds.min_melanoma),
        rule("melanoma lesions in every split", "ExpectColumnValuesToBeBetween",
             column="melanoma_lesions_in_split", min_value=bounds.min_split_lesions),
        rule("other lesions in every split", "ExpectColumnValuesToBeBetween",
             column="other_lesions_in_split", min_value=bounds.min_split_lesions),
    ]  # fmt: skip
    return rules


def _image_fact_rules(bounds: ManifestBounds) -> list[Expectation]:
    def rule(name: str, kind: str, **kwargs: Any) -> Expectation:
        return Expectation(IMAGE_FACTS_SUITE, name, kind, kwargs)

    return [
        rule("decodable JPEG or PNG", "ExpectColumnValuesToBeInSet", column="image_format",
             value_set=list(IMAGE_FORMATS)),
        rule("colour mode", "ExpectColumnValuesToBeInSet", column="mode",
             value_set=list(bounds.image_modes)),
        rule("width within bounds", "ExpectColumnValuesToBeBetween", column="width",
             min_value=bounds.min_side, max_value=bounds.max_side),
        rule("height within bounds", "ExpectColumnValuesToBeBetween", column="height",
             min_value=bounds.min_side, max_value=bounds.max_side),
        rule("not blank or saturated", "ExpectColumnValuesToBeBetween", column="brightness_mean",
             min_value=bounds.brightness_mean_min, max_value=bounds.brightness_mean_max),
        rule("not flat", "ExpectColumnValuesToBeBetween", column="brightness_std",
             min_value=bounds.brightness_std_min),
        rule("image file in the store", "ExpectColumnValuesToBeInSet",
             column="image_file_present", value_set=[True]),
    ]  # fmt: skip


def with_check_columns(
    manifest: pd.DataFrame, locked_splits: Mapping[str, str], data_dir: Path | None
) -> pd.DataFrame:
    """The manifest plus the per-row check columns the suites read. Columns the manifest
    lacks leave their checks empty; the schema rule reports the missing column."""
    frame = manifest.copy()
    has = set(frame.columns).issuperset
    if has({"lesion_id", "dx"}):
        frame["diagnoses_in_lesion"] = frame.groupby("lesion_id")["dx"].transform("nunique")
    if has({"lesion_id", "split"}):
        frame["splits_in_lesion"] = frame.groupby("lesion_id")["split"].transform("nunique")
        locked = frame["lesion_id"].map(dict(locked_splits))
        frame["split_as_locked"] = locked.isna() | (locked == frame["split"])
    if has({"lesion_id", "split", "dx"}):
        frame = _with_lesions_per_split(frame)
    if has({"label", "dx"}):
        expected = (frame["dx"] == MELANOMA).astype("int64")
        frame["label_matches_dx"] = pd.to_numeric(frame["label"], errors="coerce") == expected
    if has({"path"}):
        frame["image_file_present"] = [_present(data_dir, path) for path in frame["path"]]
    return frame


def _with_lesions_per_split(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row with the number of melanoma and other lesions in its split: a split without
    both cannot pick an epoch (val) or compare models (test)."""
    melanoma = frame["dx"] == MELANOMA
    for column, rows in (
        ("melanoma_lesions_in_split", melanoma),
        ("other_lesions_in_split", ~melanoma),
    ):
        counts = frame[rows].groupby("split")["lesion_id"].nunique()
        frame[column] = frame["split"].map(counts).fillna(0).astype("int64")
    return frame


def _present(data_dir: Path | None, path: object) -> bool:
    if data_dir is None:
        return True
    return isinstance(path, str) and (data_dir / path).is_file()


def run_suites(
    frame: pd.DataFrame,
    rules: list[Expectation],
    docs_dir: Path | None,
    example_rows: int,
) -> list[RuleResult]:
    """Validate `frame` with Great Expectations (in memory; Data Docs HTML under
    `docs_dir` when given) and translate each expectation's result."""
    from pipelines.validation import gx_context

    results = gx_context.validate(frame, rules, docs_dir, example_rows)
    return [
        _rule_result(rule, outcome, example_rows)
        for rule, outcome in zip(rules, results, strict=True)
    ]


def _rule_result(rule: Expectation, outcome: Mapping[str, Any], example_rows: int) -> RuleResult:
    result = outcome.get("result") or {}
    success = bool(outcome.get("success"))
    failed_to_run = outcome.get("exception")
    unexpected = result.get("unexpected_count")
    if failed_to_run:
        observed = f"could not run: {failed_to_run}"
    elif mismatched := (result.get("details") or {}).get("mismatched"):
        observed = "; ".join(
            f"{kind} {_readable(sorted(columns))}"
            for kind, columns in mismatched.items()
            if columns
        )
    elif rule.kind == "ExpectTableColumnsToMatchSet" and success:
        observed = f"the {len(rule.kwargs['column_set'])} expected columns"
    elif unexpected is not None:
        share = result.get("unexpected_percent") or 0.0
        observed = f"{unexpected} offending rows ({share:.2f}%)" if unexpected else "all rows"
    else:
        observed = f"observed {_readable(result.get('observed_value'))}"
    return RuleResult(
        suite=rule.suite,
        rule=rule.rule,
        expectation=rule.kind,
        column=rule.column,
        success=success,
        observed=observed,
        unexpected_count=int(unexpected) if unexpected is not None else None,
        examples=() if success else _examples(rule, result, example_rows),
    )


def _examples(rule: Expectation, result: Mapping[str, Any], limit: int) -> tuple[str, ...]:
    rows = result.get("partial_unexpected_index_list") or []
    examples = []
    for row in rows[:limit]:
        image_id = row.get("image_id", "?")
        lesion = f" (lesion {row['lesion_id']})" if rule.column in _LESION_CHECKS else ""
        if rule.column in _SPLIT_CHECKS:
            lesion = f" (split {row.get('split')})"
        value = row.get(rule.column) if rule.column else None
        examples.append(f"image_id {image_id}{lesion}: {rule.column} = {_readable(value)}")
    return tuple(examples)


def _readable(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "item"):
        return _readable(value.item())
    if isinstance(value, list):
        return ", ".join(_readable(v) for v in value[:8]) + (" ..." if len(value) > 8 else "")
    return str(value)
