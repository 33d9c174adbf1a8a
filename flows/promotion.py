"""The promotion flow: promote challengers a reviewer approved in the MLflow UI (checking
their evidence again), record rejections, and put a hand-moved `champion` alias back."""

from __future__ import annotations

from prefect import flow

from cme.bootstrap import App
from cme.evaluation import lifecycle
from flows.common import opened, step


@step("finalize reviews")
def finalize(app: App, actor: str) -> list[str]:
    return [outcome.message for outcome in lifecycle(app).finalize(actor)]


@flow(name="promotion")
def promotion(actor: str = "promotion-flow") -> list[str]:
    """What changed, one line each (nothing: an empty list)."""
    with opened(None) as (app, _params):
        return finalize(app, actor)
