"""The other flows and the deployments: the label inbox flow files a steward's exports, and
`cme deploy` puts prefect.yaml's schedules, work pools and limits on a Prefect server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_rows, write_rows
from tests.prefect_support import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_inbox_flow_files_each_export(platform: Path, generated_set: Path) -> None:
    from flows.label_inbox import label_inbox

    inbox = platform / ".cme" / "inbox"
    shutil.copytree(generated_set, inbox / "clean-export")
    broken = shutil.copytree(generated_set, inbox / "broken-export", dirs_exist_ok=True)
    rows = read_rows(broken / "metadata.csv")
    rows[0]["dx"] = "melanoma?"
    write_rows(broken / "metadata.csv", rows)

    lines = label_inbox(steward="steward")

    assert lines[0].endswith("1 processed, 1 failed, 0 waiting")
    assert [path.name.split("-", 1)[1] for path in (inbox / "processed").iterdir()] == [
        "clean-export"
    ]
    failed = next((inbox / "failed").iterdir())
    assert "dx 'melanoma?'" in (failed / "quarantine.csv").read_text()
    assert not (inbox / "clean-export").exists() and not (inbox / "broken-export").exists()


def test_cme_deploy_schedules_the_flows_on_their_work_pools(
    prefect_harness: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CME_", "MLFLOW_"))}
    environment.update(
        PREFECT_API_URL=prefect_harness,
        CME_HOME=str(tmp_path / ".cme"),
        CME_SCHEDULE_TIMEZONE="Europe/Berlin",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}",
    )
    done = subprocess.run(
        [sys.executable, "-m", "cme", "deploy"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    with get_client(sync_client=True) as client:
        deployments = {
            f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()
        }
        pools = {pool.name: pool.type for pool in client.read_work_pools()}
    assert pools["cpu"] == pools["gpu"] == "process"
    weekly = deployments["weekly-retrain/weekly"]
    assert weekly.work_pool_name == "cpu"
    assert weekly.parameters["training_deployment"] == "train-challenger/gpu"
    assert weekly.global_concurrency_limit is not None
    assert weekly.global_concurrency_limit.limit == 1
    (schedule,) = weekly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("0 2 * * 1", "Europe/Berlin")
    assert deployments["train-challenger/gpu"].work_pool_name == "gpu"
    (every,) = deployments["promotion/every-10-minutes"].schedules
    assert every.schedule.interval.total_seconds() == 600
    (hourly,) = deployments["label-inbox/hourly"].schedules
    assert hourly.schedule.cron == "0 * * * *"
    assert weekly.pull_steps[0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(ROOT)
    }
