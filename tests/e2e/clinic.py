"""What the schedules and the people of the clinic do to the topology, through its APIs."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import create_engine, text

from tests.e2e.topology import LOOPBACK, Topology, prefect_api
from tests.webhook_support import eventually
from usecases.sample_data import SampleSpec, write_sample_data

RUN_TIMEOUT_S = 600


def run_deployment(topology: Topology, name: str) -> Any:
    """Start a deployment's run as its schedule would, and wait for its final state."""
    from prefect.deployments import run_deployment as start

    with prefect_api(topology):
        return start(name=name, timeout=RUN_TIMEOUT_S)


def flow_runs(topology: Topology, flow_name: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with prefect_api(topology), get_client(sync_client=True) as client:
        flows = FlowFilter(name=FlowFilterName(any_=[flow_name]))
        return list(client.read_flow_runs(flow_filter=flows))


def signed_in(topology: Topology, prefix: str, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    username, password = topology.account(prefix)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    return MlflowClient(topology.mlflow_url)


def label_registry_url(topology: Topology) -> str:
    """The label registry as the workers reach it (their database user)."""
    variables = topology.variables
    return (f"postgresql+psycopg2://{variables['CME_DB_USER']}@{LOOPBACK}:5432/"
            f"{variables['CME_DB_NAME']}")  # fmt: skip


def labels_registered(topology: Topology) -> int:
    engine = create_engine(label_registry_url(topology))
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM images")).scalar_one())
    finally:
        engine.dispose()


def score(url: str, image: bytes) -> dict[str, Any]:
    rows = [[base64.b64encode(image).decode()]]
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def drop_export(topology: Topology, folder: Path, seed: int, images: int) -> Path:
    """A steward's lab export of generated images, dropped into the inbox."""
    export = folder / f"lab-export-{seed}"
    write_sample_data(export, SampleSpec(n=images, seed=seed, image_size=64))
    shutil.copytree(export, topology.inbox / export.name)
    return export


def champion(topology: Topology, client: MlflowClient) -> str | None:
    try:
        return str(client.get_model_version_by_alias(topology.model_name, "champion").version)
    except MlflowException:  # no champion yet
        return None


def versions(topology: Topology, client: MlflowClient) -> list[Any]:
    return list(client.search_model_versions(f"name='{topology.model_name}'"))


def start_deployment(topology: Topology, name: str) -> Any:
    """Start a deployment's run and return at once (the run goes on on a worker)."""
    from prefect.deployments import run_deployment as start

    with prefect_api(topology):
        return start(name=name, timeout=0)


def flow_run(topology: Topology, flow_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with prefect_api(topology), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def finished(topology: Topology, flow_run_id: Any, timeout_s: float = RUN_TIMEOUT_S) -> Any:
    """The flow run once in a final state (or as it is when the time is up)."""
    return eventually(
        lambda: (run := flow_run(topology, flow_run_id)).state.is_final() and run,
        timeout_s=timeout_s,
    ) or flow_run(topology, flow_run_id)


def retrain_lease_holder(topology: Topology) -> str | None:
    from registry.run_leases import RunLeaseRepository
    from usecases.retrain_steps import RETRAIN_LEASE

    leases = RunLeaseRepository.open(label_registry_url(topology), migrate=False)
    try:
        lease = leases.current(RETRAIN_LEASE)
        return lease.holder if lease is not None else None
    finally:
        leases.close()


def task_states(topology: Topology, flow_run_id: Any) -> dict[str, str]:
    """The flow run's tasks by name, each with its latest state's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_api(topology), get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs if run.state}
