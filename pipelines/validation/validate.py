"""Validate a snapshot manifest: both suites, then drift against the previous snapshot."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

import pandas as pd

from pipelines.validation.bounds import DriftThresholds, ManifestBounds
from pipelines.validation.drift import PreviousSnapshot, drift_report
from pipelines.validation.report import ValidationReport
from pipelines.validation.suites import expectations, run_suites, with_check_columns


def validate_manifest(
    manifest: pd.DataFrame,
    *,
    subject: str,
    bounds: ManifestBounds,
    vocabulary: Mapping[str, Collection[str]],
    locked_splits: Mapping[str, str],
    data_dir: Path | None,
    docs_dir: Path | None,
    previous: PreviousSnapshot | None,
    drift_thresholds: DriftThresholds,
) -> ValidationReport:
    """`vocabulary` maps a column to its allowed values (dx, dx_type, sex, localization);
    `locked_splits` are the splits lesions already hold; image files are looked for under
    `data_dir` (None: not checked); Data Docs go to `docs_dir` (None: none written)."""
    rules = expectations(bounds, vocabulary)
    checked = with_check_columns(manifest, locked_splits, data_dir)
    results = run_suites(checked, rules, docs_dir, bounds.example_rows)
    drift = drift_report(previous, manifest, drift_thresholds)
    return ValidationReport(
        subject=subject,
        rows=len(manifest),
        results=tuple(results),
        drift=drift,
        data_docs=docs_dir / "index.html" if docs_dir is not None else None,
    )
