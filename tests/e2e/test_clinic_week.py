"""A week of the clinic through the deployed topology, through its APIs only: a steward's
export dropped into the inbox, the weekly retrain run by the `cpu` worker and its training
by the `gpu`-pool worker on another "machine", the version registered by the pipeline's
account, approved by a reviewer's, promoted, and served by the scoring service."""

from __future__ import annotations

from pathlib import Path

import pytest

from cme.orchestration import CRASH_DETECTION
from tests.e2e.clinic import (
    champion,
    drop_export,
    eventually,
    flow_runs,
    labels_registered,
    run_deployment,
    score,
    signed_in,
    versions,
)
from tests.e2e.topology import Topology

pytestmark = [pytest.mark.e2e]

FIRST_WEEK = 160  # generated images; enough histopathology-confirmed ones for a retrain


def test_the_init_ran_twice_and_built_everything_once(topology: Topology) -> None:
    first, again = topology.init_outputs
    assert "label registry at revision" in first
    assert f"registered model {topology.model_name}: created" in first
    assert f"registered model {topology.model_name}: exists" in again
    assert "webhook cme-reviews created" in first and "webhook cme-reviews updated" in again
    assert f"automation {CRASH_DETECTION!r}: created" in first
    assert f"automation {CRASH_DETECTION!r}: exists" in again


def test_a_week_of_the_clinic_from_the_inbox_to_the_scoring_service(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export = drop_export(topology, tmp_path, seed=3, images=FIRST_WEEK)

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
    (version,) = versions(topology, reviewer)
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

    # The webhook receiver promotes at once.
    assert eventually(lambda: champion(topology, reviewer), 60) == version.version
    promotion = run_deployment(topology, "promotion/every-10-minutes")  # the safety net
    assert promotion.state.is_completed(), promotion.state
    assert champion(topology, reviewer) == version.version

    # Following the alias every 2 s instead of 30, for the load test's alias moves.
    scoring = topology.start_scoring("--poll-seconds", "2")
    image = min((export / "images").iterdir())
    answer = score(scoring, image.read_bytes())
    assert answer["predictions"][0]["model_version"] == version.version
