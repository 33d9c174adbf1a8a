"""Great Expectations suites as code over a snapshot manifest, and drift against the last one."""

from pipelines.validation.bounds import DriftThresholds, ManifestBounds
from pipelines.validation.drift import DriftCheck, DriftReport, PreviousSnapshot, drift_report
from pipelines.validation.report import RuleResult, ValidationReport
from pipelines.validation.validate import validate_manifest

__all__ = [
    "DriftCheck",
    "DriftReport",
    "DriftThresholds",
    "ManifestBounds",
    "PreviousSnapshot",
    "RuleResult",
    "ValidationReport",
    "drift_report",
    "validate_manifest",
]
