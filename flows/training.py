"""The training step as a flow of its own, so that it can be deployed on the `gpu` work pool
while the rest of the weekly retrain runs on `cpu` workers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger

from flows.common import opened, step
from usecases import challenger_training
from usecases.challenger_evaluation import RETRAIN_TAG
from usecases.params import Params
from usecases.platform import Platform

if TYPE_CHECKING:
    from pipelines.training.fit import EpochRecord, OnEpoch

# Who else hears of each epoch trained in this process: a flow takes no callback as a
# parameter (its parameters are stored by the orchestrator), so `cme retrain` hands its
# progress bar over this way.
_EPOCH_WATCHERS: ContextVar[tuple[OnEpoch, ...]] = ContextVar("epoch_watchers", default=())


@contextmanager
def epochs_watched(on_epoch: OnEpoch) -> Iterator[None]:
    """While open, every epoch the train step runs in this process (and thread) is also
    told to `on_epoch`, after the run's log; one trained on a worker elsewhere is not."""
    token = _EPOCH_WATCHERS.set((*_EPOCH_WATCHERS.get(), on_epoch))
    try:
        yield
    finally:
        _EPOCH_WATCHERS.reset(token)


@step("train", retries=1)
def train(platform: Platform, params: Params, snapshot_id: str, retrain_id: str) -> str:
    log = get_run_logger()
    watchers = _EPOCH_WATCHERS.get()

    def logged(epoch: EpochRecord) -> None:
        log.info(epoch.line())
        for watcher in watchers:
            watcher(epoch)

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
