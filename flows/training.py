"""The training step as a flow of its own, so that it can be deployed on the `gpu` work pool
while the rest of the weekly retrain runs on `cpu` workers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import flow, get_run_logger

from flows.common import Watchers, opened, step
from usecases import challenger_training
from usecases.challenger_evaluation import RETRAIN_TAG
from usecases.params import Params
from usecases.platform import Platform

if TYPE_CHECKING:
    from pipelines.training.fit import EpochRecord

# Each epoch the train step runs in this process, as it ends (e.g. to `cme retrain`'s bar).
EPOCHS: Watchers[EpochRecord] = Watchers("epochs")


@step("train", retries=1)
def train(platform: Platform, params: Params, snapshot_id: str, retrain_id: str) -> str:
    log, tell = get_run_logger(), EPOCHS.teller()

    def logged(epoch: EpochRecord) -> None:
        log.info(epoch.line())
        tell(epoch)

    outcome = challenger_training.train(
        platform,
        params,
        snapshot_id=snapshot_id,
        tags={RETRAIN_TAG: retrain_id},
        on_epoch=logged,
    )
    return outcome.run_id


@flow(name="train-challenger")
def train_challenger(snapshot_id: str, retrain_id: str, overrides: list[str] | None = None) -> str:
    """Fine-tune a challenger on a recorded snapshot; returns the MLflow run id (tagged
    with `retrain_id`, by which the weekly retrain finds it when a GPU worker trained it)."""
    with opened(overrides) as (platform, params):
        return train(platform, params, snapshot_id, retrain_id)
