"""Faults the topology must survive, after the clinic's first week (a champion serves)."""

from __future__ import annotations

from functools import partial
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
    task_states,
    versions,
)
from tests.e2e.topology import Topology, answers

pytestmark = [pytest.mark.e2e]

CRASH_FOUND_S = 300  # 3 missed heartbeats of 30 s, the triggers' evaluation, a margin


def labels_arrived(topology: Topology, folder: Path, seed: int, images: int) -> None:
    """A steward's export in the inbox and the inbox deployment run: a week's new labels."""
    drop_export(topology, folder, seed=seed, images=images)
    assert run_deployment(topology, "label-inbox/hourly").state.is_completed()


def test_a_gpu_worker_killed_mid_training_leaves_no_version_no_lease_and_the_champion(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels_arrived(topology, tmp_path, seed=4, images=90)
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
    topology.start_worker("gpu", topology.gpu_machine)  # the machine back: the week is
    # trained again below, with MLflow restarted as it registers


def test_the_prefect_server_restarted_while_the_workers_poll(topology: Topology) -> None:
    topology.restart("prefect")
    health = f"{topology.prefect_api}/health"
    topology.wait_for("Prefect back", lambda: answers(health, topology.prefect_headers()), None)
    for name in ("worker-cpu", "worker-gpu"):  # a worker that gave up polling exits, and
        # compose's `restart: unless-stopped` starts it again
        polling = partial(answers, topology.services[name].health_url)
        topology.wait_for(f"{name} polling again", polling, None)
    promotion = run_deployment(topology, "promotion/every-10-minutes")
    assert promotion.state.is_completed(), promotion.state  # a worker picked it up


def test_the_crashed_week_completes_once_registered_with_mlflow_restarted_as_it_registers(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next trigger after the gpu worker came back trains the week the crash lost (its
    labels are still new); MLflow restarts as the challenger is being registered."""
    reviewer = signed_in(topology, "CME_REVIEWER_MLFLOW", monkeypatch)
    registered = len(versions(topology, reviewer))

    weekly = start_deployment(topology, "weekly-retrain/weekly")
    judged = eventually(lambda: task_states(topology, weekly.id).get("gate") == "Completed",
                        timeout_s=600)  # fmt: skip
    assert judged, task_states(topology, weekly.id)
    topology.restart("mlflow")  # as the register step begins
    mlflow_health = f"{topology.mlflow_url}/health"
    topology.wait_for("MLflow back", lambda: answers(mlflow_health), topology.services["mlflow"])

    ended = finished(topology, weekly.id)
    assert ended.state.name == "Completed", (ended.state, task_states(topology, weekly.id))
    new = [v for v in versions(topology, reviewer) if int(v.version) > registered]
    assert len(new) == 1, [(v.version, v.run_id) for v in new]  # once, whatever the retries
    assert retrain_lease_holder(topology) is None
