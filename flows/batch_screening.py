"""The batch-screening flow: a patient's images (or a whole clinic day's) scored by one
model version in batches spread over Dask workers (prefect-dask), into a ranked worklist
per patient and the prediction log.

The flow only wires: reading the source, the batches and the worklist are the use case's
(`usecases.screening`). A batch task runs on a Dask worker, which opens the platform and
loads the model once and keeps both for its next batches. Batches are handed out a few at a
time, so that a run of 100,000 images, carrying their bytes to a remote cluster, holds only
the batches in flight in memory."""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner
from prefect_dask.task_runners import DaskTaskRunner

from flows.common import Watchers, opened, step
from usecases import screening
from usecases.params import Params
from usecases.platform import Platform

THREAD_SETTINGS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
IN_FLIGHT_PER_WORKER = 2  # one batch scoring, one waiting: no worker idles between batches
REMOTE_IN_FLIGHT = 16  # a cluster's workers are its business: enough for 8 of them


@dataclass(frozen=True)
class ScreeningPlan:
    """What the flow hands every batch task: plain values a Dask worker can unpickle."""

    model: screening.ScreeningModel
    overrides: tuple[str, ...]


# The outcomes so far, each time a batch finishes (e.g. to `cme screen`'s bar).
BATCHES: Watchers[Sequence[screening.BatchOutcome]] = Watchers("screening batches")

_WORKER: dict[str, tuple[Platform, Params]] = {}
_CLOSING = ExitStack()


def _worker_platform(overrides: tuple[str, ...]) -> tuple[Platform, Params]:
    """The platform of this worker process, opened at its first batch and kept until the
    process ends."""
    key = "\n".join(overrides)
    if key not in _WORKER:
        if not _WORKER:
            atexit.register(_CLOSING.close)
        _WORKER[key] = _CLOSING.enter_context(opened(list(overrides)))
    return _WORKER[key]


@step("score batch", retries=2)
def score_batch(
    batch: list[screening.ScreeningImage], plan: ScreeningPlan
) -> screening.BatchOutcome:
    platform, params = _worker_platform(plan.overrides)
    return screening.score_batch(platform, plan.model, batch, params.intake.rules())


def _dask(**options: Any) -> TaskRunner[Any]:
    runner: TaskRunner[Any] = DaskTaskRunner(**options)
    return runner


def cluster_settings(workers: int | None) -> dict[str, Any]:
    """An embedded LocalCluster's: `workers` processes (default one per core) of one task at
    a time, each TensorFlow limited to its share of the cores so that the workers do not
    oversubscribe them."""
    count = _local_workers(workers)
    cores = max(1, (os.cpu_count() or 1) // count)
    env = dict.fromkeys(THREAD_SETTINGS, str(cores))
    return {"n_workers": count, "threads_per_worker": 1,
            "processes": True, "env": env, "dashboard_address": None}  # fmt: skip


def _local_workers(workers: int | None) -> int:
    """The processes of an embedded cluster: as asked, else one per core."""
    return workers or os.cpu_count() or 1


# Run as is (a deployment), the flow starts an embedded cluster of its own.
@flow(name="batch-screening", task_runner=_dask(cluster_kwargs=cluster_settings(None)))
def batch_screening(
    source: str,
    out: str,
    patient: str | None = None,
    model_uri: str | None = None,
    batch_size: int = screening.DEFAULT_BATCH_SIZE,
    overrides: list[str] | None = None,
    carry_images: bool = False,
    in_flight: int = REMOTE_IN_FLIGHT,
) -> dict[str, Any]:
    """Score every image of `source` (a folder of one patient's images, or a CSV manifest;
    a local path or an object-store URL) with `model_uri` (default the champion) and write
    the worklist under `out`; returns what was scored, skipped as scored before, and refused
    with the reasons. `carry_images`: the batches carry the images' bytes, for workers that
    cannot read the caller's disk; `in_flight`: batches handed to Dask at a time."""
    with opened(overrides) as (platform, params):
        images = screening.read_source(source, patient)
        model = screening.screening_model(platform, model_uri)
        plan = ScreeningPlan(model, tuple(overrides or ()))
        rules = params.intake.rules()
        prepared: Callable[[list[screening.ScreeningImage]], list[screening.ScreeningImage]] = (
            (lambda batch: screening.carried(batch, rules)) if carry_images else list
        )
        batches = (prepared(batch) for batch in screening.batches(images, batch_size))
        outcomes = _as_they_finish(_in_turn(batches, plan, in_flight), len(images))
        report = screening.screening_report(platform, model, images, outcomes, Path(out))
    return report.summary()


def on_dask(address: str) -> Any:
    """The flow on the Dask cluster at `address` (a remote one, or `warm_cluster`'s)."""
    return batch_screening.with_options(task_runner=_dask(address=address))


@contextmanager
def warm_cluster(workers: int | None, plan: ScreeningPlan) -> Iterator[str]:
    """An embedded LocalCluster (see `cluster_settings`) whose workers open the platform and
    load `plan`'s model as soon as they start, instead of at their first batch: the caller
    starts the rest (Prefect's server, the flow run) meanwhile. Yields the scheduler's
    address, for `on_dask`; the cluster closes on leaving."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(**cluster_settings(workers))  # type: ignore[no-untyped-call]
    with cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
        # Held until the cluster closes: a released future's task may be cancelled.
        warming = [client.submit(warm_up, plan, workers=[worker], allow_other_workers=False,
                                 pure=False, key=f"warm-up-{index}")
                   for index, worker in enumerate(client.scheduler_info()["workers"])]  # fmt: skip
        yield cluster.scheduler_address
        del warming


def warm_up(plan: ScreeningPlan) -> None:
    """A worker's platform and model, loaded before its first batch (an error here is met
    again, and reported, by the batch)."""
    with suppress(Exception):
        platform, _ = _worker_platform(plan.overrides)
        screening.served_model(platform, plan.model.uri)


def in_flight(address: str | None, workers: int | None = None) -> int:
    """Batches to hand Dask at a time: two per worker of a local cluster."""
    if address:
        return REMOTE_IN_FLIGHT
    return IN_FLIGHT_PER_WORKER * _local_workers(workers)


def _in_turn(
    batches: Iterator[list[screening.ScreeningImage]], plan: ScreeningPlan, in_flight: int
) -> Iterator[PrefectFuture[screening.BatchOutcome]]:
    """Each batch's task as it finishes, with at most `in_flight` handed to Dask at a time
    (a batch is read, or loaded to be carried, only when its turn comes)."""
    running: list[PrefectFuture[screening.BatchOutcome]] = []
    for batch in batches:
        running.append(score_batch.submit(batch, plan))
        if len(running) >= max(in_flight, 1):
            yield _first_done(running)
    while running:
        yield _first_done(running)


def _first_done(
    running: list[PrefectFuture[screening.BatchOutcome]],
) -> PrefectFuture[screening.BatchOutcome]:
    done = next(as_completed(running))
    running.remove(done)
    return done


def _as_they_finish(
    finished: Iterator[PrefectFuture[screening.BatchOutcome]], images: int
) -> Sequence[screening.BatchOutcome]:
    """Each batch's outcome as it finishes, with a line in the run's log: how far, and how
    fast."""
    log, tell = get_run_logger(), BATCHES.teller()
    started, outcomes = time.monotonic(), []
    for future in finished:
        outcomes.append(future.result())
        log.info(screening.progress_line(outcomes, images, time.monotonic() - started))
        tell(tuple(outcomes))
    return outcomes
