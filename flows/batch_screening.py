"""The batch-screening flow: a patient's images (or a whole clinic day's) scored by one
model version in batches spread over Dask workers (prefect-dask), into a ranked worklist
per patient and the prediction log.

The flow only wires: reading the source, the batches and the worklist are the use case's
(`usecases.screening`). A batch task runs on a Dask worker, which opens the platform and
loads the model once and keeps both for its next batches."""

from __future__ import annotations

import atexit
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, unmapped
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner
from prefect_dask.task_runners import DaskTaskRunner

from flows.common import opened, step
from usecases import screening
from usecases.params import Params
from usecases.platform import Platform

THREAD_SETTINGS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")


@dataclass(frozen=True)
class ScreeningPlan:
    """What the flow hands every batch task: plain values a Dask worker can unpickle."""

    model: screening.ScreeningModel
    overrides: tuple[str, ...]


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


@flow(name="batch-screening", task_runner=_dask())
def batch_screening(
    source: str,
    out: str,
    patient: str | None = None,
    model_uri: str | None = None,
    batch_size: int = screening.DEFAULT_BATCH_SIZE,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Score every image of `source` (a folder of one patient's images, or a CSV manifest)
    with `model_uri` (default the champion) and write the worklist under `out`; returns
    what was scored, skipped as scored before, and refused with the reasons."""
    with opened(overrides) as (platform, _params):
        images = screening.read_source(Path(source), patient)
        model = screening.screening_model(platform, model_uri)
        plan = ScreeningPlan(model, tuple(overrides or ()))
        futures = score_batch.map(screening.batches(images, batch_size), unmapped(plan))
        outcomes = _as_they_finish(futures, len(images))
        report = screening.screening_report(platform, model, images, outcomes, Path(out))
    return report.summary()


def on_dask(address: str | None, workers: int | None = None) -> Any:
    """The flow on an existing Dask cluster (`address`), or on an embedded LocalCluster of
    `workers` processes (default: one per core), each TensorFlow limited to its share of
    the cores so that the workers do not oversubscribe them."""
    if address:
        return batch_screening.with_options(task_runner=_dask(address=address))
    count = workers or os.cpu_count() or 1
    cores = max(1, (os.cpu_count() or 1) // count)
    env = dict.fromkeys(THREAD_SETTINGS, str(cores))
    cluster = {"n_workers": count, "threads_per_worker": 1,
               "processes": True, "env": env, "dashboard_address": None}  # fmt: skip
    return batch_screening.with_options(task_runner=_dask(cluster_kwargs=cluster))


def _as_they_finish(futures: list[Any], images: int) -> list[screening.BatchOutcome]:
    """Each batch's outcome as it finishes, with a line in the run's log: how far, and how
    fast."""
    log = get_run_logger()
    started, outcomes = time.monotonic(), []
    for future in as_completed(futures):
        outcomes.append(future.result())
        log.info(screening.progress_line(outcomes, images, time.monotonic() - started))
    return outcomes
