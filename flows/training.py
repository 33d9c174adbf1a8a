"""The training step as a flow of its own, so that it can be deployed on the `gpu` work pool
while the rest of the weekly retrain runs on `cpu` workers."""

from __future__ import annotations

from prefect import flow, get_run_logger

from cme import training
from cme.bootstrap import App
from cme.evaluation import RETRAIN_TAG
from cme.params import Params
from flows.common import opened, step


@step("train", retries=1)
def train(app: App, params: Params, snapshot_id: str, retrain_id: str) -> str:
    log = get_run_logger()
    outcome = training.train(
        app,
        params,
        snapshot_id=snapshot_id,
        tags={RETRAIN_TAG: retrain_id},
        on_epoch=lambda epoch: log.info(epoch.line()),
    )
    return outcome.run_id


@flow(name="train-challenger")
def train_challenger(snapshot_id: str, retrain_id: str, overrides: list[str] | None = None) -> str:
    """Fine-tune a challenger on a recorded snapshot; returns the MLflow run id (tagged
    with `retrain_id`, by which the weekly retrain finds it when a GPU worker trained it)."""
    with opened(overrides) as (app, params):
        return train(app, params, snapshot_id, retrain_id)
