"""What a validation found, in a form the CLI prints, flows keep and JSON carries."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.validation.drift import DriftReport


@dataclass(frozen=True)
class RuleResult:
    """One expectation's outcome. `examples` names a few offending rows by image_id."""

    suite: str
    rule: str
    expectation: str
    column: str | None
    success: bool
    observed: str
    unexpected_count: int | None = None
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationReport:
    subject: str
    rows: int
    results: tuple[RuleResult, ...]
    drift: DriftReport
    data_docs: Path | None = None
    report_file: Path | None = field(default=None, compare=False)

    @property
    def success(self) -> bool:
        return all(result.success for result in self.results)

    @property
    def failed(self) -> tuple[RuleResult, ...]:
        return tuple(result for result in self.results if not result.success)

    def to_json(self) -> str:
        document = asdict(self)
        document["success"] = self.success
        document["data_docs"] = str(self.data_docs) if self.data_docs else None
        document.pop("report_file")
        return json.dumps(document, indent=2, default=str)

    def summary_lines(self) -> list[str]:
        verdict = "PASSED" if self.success else f"FAILED ({len(self.failed)} expectations)"
        lines = [f"validation of {self.subject} ({self.rows} images): {verdict}"]
        for result in self.results:
            mark = "ok  " if result.success else "FAIL"
            lines.append(f"  {mark} {result.suite:<11} {result.rule}: {result.observed}")
            lines.extend(f"         e.g. {example}" for example in result.examples)
        lines.extend(self.drift.summary_lines())
        if self.data_docs:
            lines.append(f"Data Docs: {self.data_docs}")
        return lines
