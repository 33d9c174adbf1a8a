"""The training step as a flow of its own, so that it can be deployed on the `gpu` work pool
while the rest of the weekly retrain runs on `cpu` workers."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import opened, step
from usecases import challenger_training
from usecases.challenger_evaluation import RETRAIN_TAG
from usecases.params import Params
from usecases.platform import Platform


@step("train", retries=1)
def train(platform: Platform, params: Params, snapshot_id: str, retrain_id: str) -> str:
    log = get_run_logger()
    outcome = challenger_training.train(
        platform,
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
    with opened(overrides) as (platform, params):
        return train(platform, params, snapshot_id, retrain_id)
