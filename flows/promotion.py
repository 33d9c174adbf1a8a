"""The promotion flow: promote challengers a reviewer approved in the MLflow UI (checking
their evidence again), record rejections, and put a hand-moved `champion` alias back."""

from __future__ import annotations

from prefect import flow

from flows.common import opened, step
from usecases.platform import Platform


@step("finalize reviews")
def finalize(platform: Platform, actor: str) -> list[str]:
    return [outcome.message for outcome in platform.champions().finalize(actor)]


@flow(name="promotion")
def promotion(actor: str = "promotion-flow") -> list[str]:
    """What changed, one line each (nothing: an empty list)."""
    with opened(None) as (platform, _params):
        return finalize(platform, actor)
