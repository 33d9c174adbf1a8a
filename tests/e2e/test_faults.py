"""Faults the topology must survive, after the clinic's first week (a champion serves)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.clinic import (
    champion,
    drop_export,
    eventually,
    finished,
    flow_runs,
    retrain_lease_holder,
    run_deployment,
    signed_in,
    start_deployment,
    versions,
)
from tests.e2e.topology import Topology

pytestmark = [pytest.mark.e2e]

CRASH_FOUND_S = 300  # 3 missed heartbeats of 30 s, the triggers' evaluation, a margin


def test_a_gpu_worker_killed_mid_training_leaves_nothing_and_the_next_week_completes(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drop_export(topology, tmp_path, seed=4, images=90)
    assert run_deployment(topology, "label-inbox/hourly").state.is_completed()
    reviewer = signed_in(topology, "CME_REVIEWER_MLFLOW", monkeypatch)
    serving, registered = champion(topology, reviewer), len(versions(topology, reviewer))
    assert serving is not None, "the clinic's first week promoted a champion"

    weekly = start_deployment(topology, "weekly-retrain/weekly")
    experiment = reviewer.get_experiment_by_name("melanoma-retrain")
    training_started = eventually(
        lambda: reviewer.search_runs(
            [experiment.experiment_id], f"tags.retrain_id = '{weekly.id}'"
        ),
        timeout_s=300,
    )
    assert training_started, f"no training run began for {weekly.id}"
    topology.services["worker-gpu"].kill()  # the GPU machine is gone, mid-training

    ended = finished(topology, weekly.id, timeout_s=CRASH_FOUND_S)
    assert ended.state.type.value in {"FAILED", "CRASHED"}, ended.state
    (training,) = [
        run
        for run in flow_runs(topology, "train-challenger")
        if run.parameters["retrain_id"] == str(weekly.id)
    ]
    assert training.state.type.value == "CRASHED"
    assert "no heartbeat" in (training.state.message or "")
    assert len(versions(topology, reviewer)) == registered  # nothing registered
    assert champion(topology, reviewer) == serving
    assert retrain_lease_holder(topology) is None  # released by the failed retrain

    topology.start_worker("gpu", topology.gpu_machine)  # the machine back
    again = run_deployment(topology, "weekly-retrain/weekly")
    assert again.state.name == "Completed", again.state
    assert len(versions(topology, reviewer)) == registered + 1
    assert retrain_lease_holder(topology) is None
