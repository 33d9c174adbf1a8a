"""`cme monitor`: the champion's real-world sensitivity, specificity and calibration, from
its logged predictions whose histopathology label arrived afterwards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from pipelines.dataset.manifest import MELANOMA
from pipelines.monitoring import VersionPerformance, real_world_performance
from registry.models import CHAMPION
from registry.prediction_log import MatchedPrediction
from usecases.params import Params
from usecases.platform import Platform


@dataclass(frozen=True)
class RealWorldReport:
    performance: list[VersionPerformance]
    champion: str | None
    labelled_before: int
    """Matched predictions left out: the label was in the registry before the prediction, so
    the image may have been trained on and says nothing of new patients."""

    @property
    def champion_findings(self) -> list[str]:
        return [
            finding.message
            for version in self.performance
            if version.model_version == self.champion
            for finding in version.findings
        ]


def real_world_report(
    platform: Platform, params: Params, since: datetime | None = None
) -> RealWorldReport:
    name = platform.workspace.model_name
    matched = platform.prediction_log().matched_predictions(
        name, sources=list(params.snapshot.label_sources), since=since
    )
    later = [case for case in matched if case.label_arrived_at > case.prediction.predicted_at]
    policy = params.monitor.policy(params.gate, params.evaluate.confidence)
    champion = platform.models().aliased(CHAMPION)
    return RealWorldReport(
        performance=real_world_performance(cases_frame(later), policy),
        champion=champion.version if champion is not None else None,
        labelled_before=len(matched) - len(later),
    )


def cases_frame(matched: Sequence[MatchedPrediction]) -> pd.DataFrame:
    """One row per matched prediction, in the columns `real_world_performance` reads."""
    return pd.DataFrame(
        {
            "model_version": [case.prediction.model_version for case in matched],
            "image_sha256": [case.prediction.image_sha256 for case in matched],
            "probability": [case.prediction.probability for case in matched],
            "decision": [case.prediction.melanoma for case in matched],
            "truth": [case.dx == MELANOMA for case in matched],
            "predicted_at": [case.prediction.predicted_at for case in matched],
            "label_arrived_at": [case.label_arrived_at for case in matched],
        }
    )
