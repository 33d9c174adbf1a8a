"""A week of the clinic through the deployed topology, through its APIs only: a steward's
export dropped into the inbox, the weekly retrain run by the `cpu` worker and its training
by the `gpu`-pool worker on another "machine", the version registered by the pipeline's
account, approved by a reviewer's, promoted, and served by the scoring service."""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import create_engine, text

from tests.e2e.topology import LOOPBACK, Topology, prefect_api
from usecases.sample_data import SampleSpec, write_sample_data

pytestmark = [pytest.mark.e2e]

FIRST_WEEK = 160  # generated images; enough histopathology-confirmed ones for a retrain
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


def eventually(check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def labels_registered(topology: Topology) -> int:
    url = (f"postgresql+psycopg2://{topology.variables['CME_DB_USER']}@{LOOPBACK}:5432/"
           f"{topology.variables['CME_DB_NAME']}")  # fmt: skip
    engine = create_engine(url)
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


def test_the_init_ran_twice_and_built_everything_once(topology: Topology) -> None:
    first, again = topology.init_outputs
    assert "label registry at revision" in first
    assert f"registered model {topology.model_name}: created" in first
    assert f"registered model {topology.model_name}: exists" in again
    assert "webhook cme-reviews created" in first and "webhook cme-reviews updated" in again


def test_a_week_of_the_clinic_from_the_inbox_to_the_scoring_service(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = tmp_path / "lab-week-1"
    write_sample_data(export, SampleSpec(n=FIRST_WEEK, seed=3, image_size=64))
    shutil.copytree(export, topology.inbox / export.name)  # the steward's drop

    inbox = run_deployment(topology, "label-inbox/hourly")
    assert inbox.state.is_completed(), inbox.state
    assert labels_registered(topology) == FIRST_WEEK

    weekly = run_deployment(topology, "weekly-retrain/weekly")
    assert weekly.state.is_completed() and weekly.state.name == "Completed", weekly.state
    (training,) = flow_runs(topology, "train-challenger")
    assert training.state.is_completed() and training.work_pool_name == "gpu"
    assert training.parameters["retrain_id"] == str(weekly.id)

    # The gpu worker shares no data folder: it restored the snapshot from the DVC remote.
    reviewer = signed_in(topology, "CME_REVIEWER_MLFLOW", monkeypatch)
    (version,) = reviewer.search_model_versions(f"name='{topology.model_name}'")
    run = reviewer.get_run(version.run_id)
    assert run.data.tags["data_restored"] == "true"
    assert run.data.tags["initialized_from"] == "base:none"
    cache = topology.gpu_machine.home / "snapshot-cache"
    assert [p.parent.name for p in cache.glob("*/.cme-verified")] == [
        run.data.tags["dvc_hash"].removesuffix(".dir")
    ]
    assert not (topology.gpu_machine.data_dir / "snapshots").exists()
    assert version.tags["approval"] == "pending"

    reviewer.set_model_version_tag(topology.model_name, version.version, "reviewer", "dr-e2e")
    reviewer.set_model_version_tag(topology.model_name, version.version, "approval", "approved")

    def champion() -> str | None:
        try:
            return str(reviewer.get_model_version_by_alias(topology.model_name, "champion").version)
        except MlflowException:  # no champion yet
            return None

    assert eventually(champion) == version.version  # the webhook receiver promoted it
    promotion = run_deployment(topology, "promotion/every-10-minutes")  # the safety net
    assert promotion.state.is_completed(), promotion.state
    assert champion() == version.version

    scoring = topology.start_scoring()
    image = min((export / "images").iterdir())
    answer = score(scoring, image.read_bytes())
    assert answer["predictions"][0]["model_version"] == version.version
