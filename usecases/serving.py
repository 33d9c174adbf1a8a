"""Real-time predictions from the champion: `cme predict` in process, and `cme serve`, a
scoring server speaking MLflow's protocol (POST /invocations, GET /ping, /health, /version)
that follows the champion alias and logs each prediction in the label registry's database.

The alias is followed by a reload, not a restart: a background thread asks the registry
which version the alias points at, loads a new version beside the serving one, then swaps
the reference. A request reads the reference once, so requests in flight finish on the
version they started with and none is dropped."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.errors import Refused
from registry.labels.service import utc_now
from registry.models import CHAMPION, ModelRegistry
from registry.prediction_log import PredictionRecord
from usecases.http_server import exit_cleanly_on_sigterm
from usecases.platform import Platform

if TYPE_CHECKING:
    from registry.prediction_log import PredictionLogRepository

_log = logging.getLogger(__name__)

SERVE_SOURCE = "serve"
CLI_SOURCE = "cli"
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
IMAGE_NAME_MAX = 255  # predictions.image_name; a long path keeps its file name


class NoModelToServe(Refused, LookupError):
    """The alias points at no version (no champion yet); the message says what to run."""


@dataclass(frozen=True)
class ServedModel:
    """One loaded copy of a model version, as the server answers with it."""

    uri: str
    version: str | None
    threshold: float
    pyfunc: Any
    loaded_at: datetime

    def describe(self) -> dict[str, Any]:
        return {
            "model_uri": self.uri,
            "model_version": self.version,
            "threshold": self.threshold,
            "loaded_at": self.loaded_at.isoformat(),
        }


@dataclass(frozen=True)
class Prediction:
    image_name: str | None
    image_sha256: str
    probability: float
    melanoma: bool
    threshold: float
    model_version: str | None

    def row(self) -> dict[str, Any]:
        return {
            "image": self.image_name,
            "probability": round(self.probability, 6),
            "decision": "melanoma" if self.melanoma else "not melanoma",
            "threshold": self.threshold,
            "model_version": self.model_version,
            "sha256": self.image_sha256,
        }

    def record(self, model_name: str, source: str, at: datetime) -> PredictionRecord:
        return PredictionRecord(
            image_sha256=self.image_sha256,
            model_name=model_name,
            model_version=self.model_version,
            probability=self.probability,
            melanoma=self.melanoma,
            threshold=self.threshold,
            predicted_at=at,
            source=source,
            image_name=None if self.image_name is None else self.image_name[-IMAGE_NAME_MAX:],
        )


@dataclass(frozen=True)
class Refusal:
    image_name: str
    reason: str


def load_served_model(uri: str) -> ServedModel:
    """Load a model URI as a pyfunc, with its registered version and operating threshold.
    A copy logged before models knew their version is looked up by its run here."""
    import mlflow

    from pipelines.training.pyfunc import registered_run

    pyfunc = mlflow.pyfunc.load_model(uri)
    classifier = pyfunc.unwrap_python_model()
    version: str | None = getattr(classifier, "model_version", None)
    threshold = float(classifier.threshold)
    if version is None and (registered := registered_run(pyfunc.metadata.run_id)) is not None:
        version = registered.version
        threshold = registered.threshold if registered.threshold is not None else threshold
    return ServedModel(uri, version, threshold, pyfunc, utc_now())


def alias_uri(model_name: str, alias: str = CHAMPION) -> str:
    return f"models:/{model_name}@{alias}"


def predictions_of(
    served: ServedModel, frame: pd.DataFrame, names: Sequence[str | None]
) -> list[Prediction]:
    """The model's answers for a frame of images, with each image's sha256 for the log; the
    decision is taken at the served threshold."""
    from pipelines.training.pyfunc import image_values

    answers = served.pyfunc.predict(frame)
    images = image_values(frame)
    return [
        Prediction(
            image_name=name,
            image_sha256=_sha256(image, row),
            probability=float(answer.probability),
            melanoma=bool(answer.probability >= served.threshold),
            threshold=served.threshold,
            model_version=served.version,
        )
        for row, (name, image, answer) in enumerate(
            zip(names, images, answers.itertuples(index=False), strict=True)
        )
    ]


def _sha256(image: Any, row: int) -> str:
    from pipelines.training.pyfunc import image_bytes

    contents = image_bytes(image, row)
    if contents is None:  # an array: hashed as its pixels, matching no registered file
        contents = np.ascontiguousarray(image).tobytes()
    return hashlib.sha256(contents).hexdigest()


def predict_files(
    served: ServedModel, images: Sequence[tuple[str, bytes]]
) -> tuple[list[Prediction], list[Refusal]]:
    """Predict every readable image; an unreadable one is set aside with its reason and the
    rest are still answered."""
    from pipelines.training.pyfunc import InvalidImage

    pending = list(images)
    refused: list[Refusal] = []
    while pending:
        frame = pd.DataFrame({"image": [contents for _, contents in pending]})
        try:
            return predictions_of(served, frame, [name for name, _ in pending]), refused
        except InvalidImage as refusal:
            if refusal.row is None:
                raise
            name, _ = pending.pop(refusal.row)
            refused.append(Refusal(name, refusal.reason))
    return [], refused


class PredictionLog:
    """Writes predictions to the label registry's database from a background thread, in
    batches, so a request never waits for the database. A database error costs those log
    rows (counted and reported), never the prediction."""

    def __init__(
        self,
        repository: PredictionLogRepository,
        flush_seconds: float = 1.0,
        capacity: int = 100_000,
    ) -> None:
        self._repository = repository
        self._flush_seconds = flush_seconds
        # Bounded: while the database is down, the oldest unwritten rows are kept and the
        # newest are dropped and counted, rather than the server running out of memory.
        self._queue: queue.Queue[PredictionRecord | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self.written = 0
        self.lost = 0

    def start(self) -> None:
        self._thread.start()

    def add(self, records: Sequence[PredictionRecord]) -> None:
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.lost += 1

    def close(self, timeout_s: float = 20.0) -> None:
        """Write what is queued (for at most `timeout_s`), then stop."""
        self._queue.put(None)
        self._thread.join(timeout=timeout_s)
        self.lost += self._queue.qsize()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[PredictionRecord] = []
            try:
                first = self._queue.get(timeout=self._flush_seconds)
            except queue.Empty:
                continue
            stopping = first is None
            if first is not None:
                batch.append(first)
            while not self._queue.empty():
                record = self._queue.get_nowait()
                if record is None:
                    stopping = True
                else:
                    batch.append(record)
            self._write(batch)

    def _write(self, batch: list[PredictionRecord]) -> None:
        if not batch:
            return
        try:
            self.written += self._repository.record_predictions(batch)
        except Exception as error:  # whatever the database did, the writer lives on
            self.lost += len(batch)
            _log.error("%d predictions not logged (%d so far): %s", len(batch), self.lost, error)


@dataclass
class ChampionFollower:
    """The model being served, following a registry alias: `check()` loads the version the
    alias points at when it moved, then swaps it in."""

    models: ModelRegistry
    alias: str
    load: Callable[[str], ServedModel] = load_served_model
    poll_seconds: float = 30.0
    _current: ServedModel | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    vouch: Callable[[str], bool] | None = None
    """Whether a version may serve (the champion of record, or one the alias guard accepts):
    a champion alias moved by hand to anything else is not followed."""
    last_error: str | None = field(default=None, init=False)
    """Why the last attempt to follow the alias failed; None once it succeeds again."""

    @property
    def current(self) -> ServedModel:
        served = self._current
        if served is None:
            raise NoModelToServe("no model loaded yet")
        return served

    def check(self) -> bool:
        """Load the aliased version if it is not the one serving; True when it swapped."""
        target = self.models.aliased(self.alias)
        if target is None:
            return self._keep(f"alias {self.alias!r} points at no version")
        if self._current is not None and self._current.version == target.version:
            self.last_error = None
            return False
        if self.vouch is not None and not self.vouch(target.version):
            return self._keep(
                f"alias {self.alias!r} points at version {target.version}, which neither the "
                "audit trail nor the gate and review back (moved by hand?)"
            )
        copy = self.load(f"models:/{self.models.model_name}/{target.version}")
        # The registry's word on what this is: the aliased version, at the operating
        # threshold its evaluation chose, whatever the copy found out for itself.
        threshold = target.tags.get("threshold")
        loaded = replace(
            copy,
            version=target.version,
            threshold=float(threshold) if threshold is not None else copy.threshold,
        )
        previous, self._current = self._current, loaded
        self.last_error = None
        _log.info("now serving %s version %s (alias %s; was %s)", self.models.model_name,
                  loaded.version, self.alias, previous.version if previous else "none")  # fmt: skip
        return True

    def _keep(self, why: str) -> bool:
        """Keep serving what is loaded, saying why; with nothing loaded, there is nothing to
        serve."""
        if self._current is None:
            raise NoModelToServe(
                f"{self.models.model_name}: {why}. Nothing to serve: run the weekly retrain "
                "(cme retrain) and approve a challenger"
            )
        self.last_error = f"{why}; still serving version {self._current.version}"
        _log.warning("%s", self.last_error)
        return False

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._follow, name="alias-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following; a download in progress is abandoned (the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def describe(self) -> dict[str, Any]:
        return {"alias": self.alias, "poll_seconds": self.poll_seconds,
                "last_follow_error": self.last_error}  # fmt: skip

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception as error:  # the registry or a download failed: keep serving
                self.last_error = f"{type(error).__name__}: {error}"[:500]
                _log.exception("could not follow alias %r; still serving version %s",
                               self.alias, self.current.version)  # fmt: skip


class FixedModel:
    """A model URI served as loaded, without following anything."""

    def __init__(self, served: ServedModel) -> None:
        self.current = served

    def describe(self) -> dict[str, Any]:
        return {"alias": None}

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


def model_source(platform: Platform, model_uri: str | None, alias: str, poll_seconds: float) -> Any:
    """What `cme serve` serves: a fixed URI when given, else the registry alias, followed."""
    platform.tracking()
    if model_uri is not None:
        return FixedModel(load_served_model(model_uri))
    vouch = platform.champions().may_serve if alias == CHAMPION else None
    return ChampionFollower(platform.models(), alias, poll_seconds=poll_seconds, vouch=vouch)


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 5001
    model_uri: str | None = None  # None: follow `alias`
    alias: str = CHAMPION
    poll_seconds: float = 30.0
    log_predictions: bool = True
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_concurrent_requests: int = 32  # beyond: 503 at once, not memory exhausted


def serve(
    platform: Platform, options: ServeOptions, announce: Callable[[str], None] = print
) -> None:
    """Load the model, then answer on host:port until interrupted (SIGINT or SIGTERM), with
    requests in flight finished and the prediction log written out."""
    import uvicorn

    from usecases.scoring_api import scoring_app

    exit_cleanly_on_sigterm()  # so that the `finally` below still runs
    source = model_source(platform, options.model_uri, options.alias, options.poll_seconds)
    source.start()
    log = PredictionLog(platform.prediction_log()) if options.log_predictions else None
    try:
        if log is not None:
            log.start()
        announce(_serving_line(platform, options, source.current))
        http = scoring_app(source, platform.workspace.model_name, log.add if log else None,
                           options.max_request_bytes)  # fmt: skip
        uvicorn.run(http, host=options.host, port=options.port, log_level="info",
                    timeout_graceful_shutdown=20,
                    limit_concurrency=options.max_concurrent_requests)  # fmt: skip
    finally:
        if log is not None:  # first: the queued rows matter more than the follower
            log.close()
            announce(f"predictions logged: {log.written}, not logged: {log.lost}")
        source.stop()


def _serving_line(platform: Platform, options: ServeOptions, served: ServedModel) -> str:
    following = (
        f"following alias {options.alias!r} every {options.poll_seconds:g} s"
        if options.model_uri is None
        else "fixed model"
    )
    logging_to = "logging predictions" if options.log_predictions else "not logging predictions"
    return (
        f"serving {platform.workspace.model_name} version {served.version or 'unregistered'} "
        f"(threshold {served.threshold:g}; {following}; {logging_to}) "
        f"on http://{options.host}:{options.port}/invocations"
    )
