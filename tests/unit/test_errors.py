"""The platform's errors: each is of exactly one kind, the kind decides the exit status of a
command and whether a flow retries, and MLflow being down is told by the error's type."""

from __future__ import annotations

import ast
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
from prefect.states import Failed

from cme.cli.common import opened_app
from cme.demo import DemoFailed
from cme.orchestration import DeployFailed
from flows.common import is_transient
from flows.weekly_retrain import TrainingFailed
from pipelines.dataset.manifest import ManifestError
from pipelines.dataset.versioning import DataFolderError, DataRemoteUnavailable, DataVersionFailed
from pipelines.errors import (
    BadInput,
    Fault,
    PlatformError,
    Refused,
    Retryable,
    Unavailable,
    kind_of,
)
from pipelines.evaluation import EvaluationError
from pipelines.training.config import TrainConfigError, TrainingDataError
from pipelines.training.pyfunc import InvalidImage, ModelFault
from registry.database import (
    ConcurrentChange,
    SchemaOutOfDate,
    StoreFault,
    StoreUnavailable,
    StoreUrlUnusable,
    StoreValueRefused,
)
from registry.labels import (
    LesionConflict,
    MetadataFileError,
    RejectedSubmission,
    UnknownImage,
    UnknownSnapshot,
)
from registry.models import (
    ModelRegistry,
    ModelRegistryRefused,
    ModelRegistryUnavailable,
    UnknownVersion,
)
from registry.prediction_log import InvalidPrediction
from registry.promotion import PromotionRefused
from registry.run_leases import InvalidLease, LeaseHeld
from usecases.backtest_replay import BacktestFailed
from usecases.challenger_evaluation import NothingToEvaluate
from usecases.challenger_training import NoSnapshot
from usecases.inbox import ExportProblem
from usecases.params import ParamsError
from usecases.platform import TrackingRefused, TrackingUnavailable
from usecases.registry_access import AccessNotSetUp
from usecases.retrain_steps import ValidationFailed
from usecases.serving import NoModelToServe
from usecases.snapshots import SnapshotError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "registry", "usecases", "cme", "flows")

KIND_OF: dict[type[PlatformError], list[type[Exception]]] = {
    BadInput: [
        ParamsError, ManifestError, TrainConfigError, TrainingDataError, EvaluationError,
        InvalidImage, DataFolderError, RejectedSubmission, MetadataFileError, UnknownImage,
        UnknownSnapshot, LesionConflict, StoreValueRefused, StoreUrlUnusable, InvalidLease,
        InvalidPrediction, UnknownVersion, ValidationFailed, SnapshotError, NoSnapshot,
        NothingToEvaluate, BacktestFailed, ExportProblem,
    ],
    Refused: [
        PromotionRefused, ModelRegistryRefused, LeaseHeld, TrackingRefused, AccessNotSetUp,
        NoModelToServe, DeployFailed, DemoFailed, TrainingFailed,
    ],
    Retryable: [
        StoreUnavailable, SchemaOutOfDate, ConcurrentChange, ModelRegistryUnavailable,
        TrackingUnavailable, DataRemoteUnavailable,
    ],
    Fault: [StoreFault, ModelFault, DataVersionFailed],
}  # fmt: skip
EXIT_CODE = {BadInput: 2, Refused: 1, Retryable: 3, Fault: 4}
FAMILIES = {"PlatformError", "LabelRegistryError", "ModelRegistryError", "DataVersionError"}
"""Bases that group errors and add no kind: never raised themselves."""


@pytest.mark.parametrize(
    ("kind", "error"), [(kind, error) for kind, errors in KIND_OF.items() for error in errors]
)
def test_each_error_is_of_exactly_its_kind(kind: type[PlatformError], error: type) -> None:
    assert kind_of(error) is kind
    assert error.exit_code == EXIT_CODE[kind]


def test_the_kinds_map_to_the_exit_codes() -> None:
    assert {kind: kind.exit_code for kind in EXIT_CODE} == EXIT_CODE
    assert Unavailable.exit_code == 3 and issubclass(Unavailable, Retryable)
    assert kind_of(PlatformError) is None  # a family, not a kind


def test_every_error_class_of_ours_is_a_platform_error() -> None:
    """An exception class in our packages derives from a kind (or an error of ours), never
    from builtins alone: the AST of every module, so a new error cannot slip by."""
    assert errors_of_no_kind(ROOT) == []


def errors_of_no_kind(root: Path) -> list[str]:
    classes = list(error_classes(root))
    ours = {"PlatformError", "BadInput", "Refused", "Retryable", "Unavailable", "Fault"}
    while True:  # every class deriving, directly or not, from one of ours
        more = {name for name, bases, _ in classes if bases & ours} - ours
        if not more:
            break
        ours |= more
    return [where for name, _, where in classes if name not in ours and name not in FAMILIES]


def error_classes(root: Path) -> Iterator[tuple[str, set[str], str]]:
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ClassDef):
                    bases = {_name(base) for base in node.bases}
                    if any(base.endswith(("Error", "Exception")) for base in bases) or (
                        node.name.endswith(("Error", "Failed", "Unavailable", "Refused"))
                    ):
                        yield node.name, bases, f"{path.relative_to(root)}: {node.name}"


def _name(base: ast.expr) -> str:
    if isinstance(base, ast.Attribute):
        return base.attr
    return base.id if isinstance(base, ast.Name) else ""


@pytest.mark.parametrize("kind", list(EXIT_CODE))
def test_a_command_ends_with_its_errors_kind(kind, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CME_HOME", str(tmp_path))
    with pytest.raises(typer.Exit) as ended, opened_app():
        raise kind("what went wrong")
    assert ended.value.exit_code == EXIT_CODE[kind]
    assert "error: what went wrong" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (StoreUnavailable("label registry database error: connection refused"), True),
        (ConcurrentChange("another writer was first"), True),
        (ModelRegistryUnavailable("MLflow registry unreachable"), True),
        (ConnectionError("reset"), True),
        (TimeoutError("slow"), True),
        (StoreFault('relation "no_such_table" does not exist'), False),
        (ModelRegistryRefused("MLflow registry refused: permission denied"), False),
        (BadInput("no such file"), False),
        (RuntimeError("a bug"), False),
    ],
)
def test_the_flows_retry_only_what_may_pass_by_itself(error: Exception, retried: bool) -> None:
    assert is_transient(None, None, Failed(data=error)) is retried  # type: ignore[arg-type]


# -- MLflow unavailability, by type --------------------------------------------------------


class FailingClient:
    """An MlflowClient whose every call raises `error`."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise self.error

        return call


def test_an_mlflow_server_that_does_not_answer_is_unavailable(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    models = ModelRegistry.at(f"http://127.0.0.1:{closed_port()}", "melanoma-resnet50")
    with pytest.raises(ModelRegistryUnavailable, match="unreachable") as raised:
        models.versions()
    assert isinstance(raised.value, Unavailable)


def test_mlflow_answering_503_is_unavailable_and_a_refusal_naming_a_connection_is_not() -> None:
    busy = MlflowException("the registry is restarting", error_code=TEMPORARILY_UNAVAILABLE)
    with pytest.raises(ModelRegistryUnavailable):
        ModelRegistry(FailingClient(busy), "m").versions()  # type: ignore[arg-type]
    worded = MlflowException("Connection string refused", error_code=INVALID_PARAMETER_VALUE)
    with pytest.raises(ModelRegistryRefused) as refused:
        ModelRegistry(FailingClient(worded), "m").versions()  # type: ignore[arg-type]
    assert not isinstance(refused.value, Unavailable)


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_check_names_an_error_of_no_kind(tmp_path: Path) -> None:
    for package in PACKAGES:
        (tmp_path / package).mkdir()
    (tmp_path / "usecases" / "screening.py").write_text(
        "from pipelines.errors import Refused\n"
        "class WorklistFull(Refused): ...\n"
        "class QueueLost(RuntimeError): ...\n"
    )
    assert errors_of_no_kind(tmp_path) == ["usecases/screening.py: QueueLost"]
