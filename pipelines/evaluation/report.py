"""The evaluation of a challenger (and of the champion beside it) on the locked test set:
the report model, as JSON for the gate and the registry and flat metrics for MLflow. The
pages a reviewer reads are rendered from it by pipelines/evaluation/rendering.py."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.evaluation.metrics import BinaryMetrics
from pipelines.evaluation.stats import AucComparison, F1Comparison, PartialAucComparison
from pipelines.evaluation.subgroups import SubgroupRow

HEADLINE_METRICS = (
    "f1", "roc_auc", "partial_roc_auc", "sensitivity", "specificity", "precision", "accuracy",
    "brier", "threshold",
)  # fmt: skip


@dataclass(frozen=True)
class ModelEvaluation:
    """One model's calls on the test set at its own operating threshold."""

    role: str
    model_uri: str
    version: str | None
    metrics: BinaryMetrics
    subgroups: tuple[SubgroupRow, ...]
    architecture: str = ""  # e.g. "densenet201, feature_extraction"; "" when not recorded

    @property
    def name(self) -> str:
        about = [f"version {self.version}"] if self.version else []
        about += [self.architecture] if self.architecture else []
        return f"{self.role} ({'; '.join(about)})" if about else self.role

    def subgroup(self, attribute: str, group: str) -> SubgroupRow | None:
        for row in self.subgroups:
            if row.attribute == attribute and row.group == group:
                return row
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "model_uri": self.model_uri,
            "version": self.version,
            "metrics": self.metrics.to_dict(),
            "subgroups": [row.to_dict() for row in self.subgroups],
            "architecture": self.architecture,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelEvaluation:
        return cls(
            role=data["role"],
            model_uri=data["model_uri"],
            version=data["version"],
            metrics=BinaryMetrics.from_dict(data["metrics"]),
            subgroups=tuple(SubgroupRow.from_dict(row) for row in data["subgroups"]),
            architecture=str(data.get("architecture", "")),
        )


@dataclass(frozen=True)
class ChampionComparison:
    """The serving champion on the same cases, and the paired tests of the difference."""

    champion: ModelEvaluation
    auc: AucComparison | None
    f1: F1Comparison
    partial_auc: PartialAucComparison | None = None
    """None in reports written before the partial ROC AUC was compared"""

    def to_dict(self) -> dict[str, Any]:
        return {
            "champion": self.champion.to_dict(),
            "auc": self.auc.to_dict() if self.auc else None,
            "f1": self.f1.to_dict(),
            "partial_auc": self.partial_auc.to_dict() if self.partial_auc else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChampionComparison:
        return cls(
            champion=ModelEvaluation.from_dict(data["champion"]),
            auc=AucComparison.from_dict(data["auc"]) if data["auc"] is not None else None,
            f1=F1Comparison.from_dict(data["f1"]),
            partial_auc=PartialAucComparison.from_dict(data["partial_auc"])
            if data.get("partial_auc") is not None
            else None,
        )


@dataclass(frozen=True)
class EvaluationReport:
    snapshot_id: str
    test_images: int
    test_melanoma: int
    test_lesions: int
    challenger: ModelEvaluation
    versus: ChampionComparison | None
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "test_images": self.test_images,
            "test_melanoma": self.test_melanoma,
            "test_lesions": self.test_lesions,
            "challenger": self.challenger.to_dict(),
            "versus": self.versus.to_dict() if self.versus else None,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationReport:
        versus = data["versus"]
        return cls(
            snapshot_id=data["snapshot_id"],
            test_images=int(data["test_images"]),
            test_melanoma=int(data["test_melanoma"]),
            test_lesions=int(data["test_lesions"]),
            challenger=ModelEvaluation.from_dict(data["challenger"]),
            versus=ChampionComparison.from_dict(versus) if versus is not None else None,
            created_at=data["created_at"],
        )

    @classmethod
    def from_json(cls, text: str) -> EvaluationReport:
        return cls.from_dict(json.loads(text))

    @property
    def evaluations(self) -> tuple[ModelEvaluation, ...]:
        """The challenger, then the champion when there is one."""
        return (self.challenger, *([self.versus.champion] if self.versus else []))

    def headline(self) -> dict[str, float]:
        """Flat metrics for MLflow; undefined values are left out."""
        values: dict[str, float | None] = {
            "test_images": self.test_images,
            "test_melanoma": self.test_melanoma,
            "test_lesions": self.test_lesions,
            **_prefixed("test_", self.challenger.metrics),
        }
        if self.versus:
            values.update(_prefixed("champion_test_", self.versus.champion.metrics))
            values.update(_comparison_headline(self.versus))
        return {key: float(value) for key, value in values.items() if value is not None}


def _prefixed(prefix: str, metrics: BinaryMetrics) -> dict[str, float | None]:
    return {f"{prefix}{name}": getattr(metrics, name) for name in HEADLINE_METRICS}


def _comparison_headline(versus: ChampionComparison) -> dict[str, float | None]:
    values: dict[str, float | None] = {
        "delta_f1": versus.f1.difference,
        "delta_f1_ci_low": versus.f1.ci_low,
        "delta_f1_ci_high": versus.f1.ci_high,
        "delta_f1_lower_bound": versus.f1.lower_bound,
        "delta_f1_p_not_better": versus.f1.p_not_better,
    }
    if versus.auc:
        values.update(
            {
                "delta_roc_auc": versus.auc.difference,
                "delta_roc_auc_p_value": versus.auc.p_value,
                "delta_roc_auc_p_superiority": versus.auc.p_superiority,
                "delta_roc_auc_ci_low": versus.auc.ci_low,
                "delta_roc_auc_ci_high": versus.auc.ci_high,
            }
        )
    if versus.partial_auc:
        values.update(
            {
                "delta_partial_roc_auc": versus.partial_auc.difference,
                "delta_partial_roc_auc_ci_low": versus.partial_auc.ci_low,
                "delta_partial_roc_auc_ci_high": versus.partial_auc.ci_high,
                "delta_partial_roc_auc_lower_bound": versus.partial_auc.lower_bound,
                "delta_partial_roc_auc_p_not_better": versus.partial_auc.p_not_better,
            }
        )
    return values
