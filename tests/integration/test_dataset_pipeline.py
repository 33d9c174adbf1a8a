"""The dataset stages as users run them: `cme export|validate|snapshot` and `dvc repro`,
as real processes in a fresh project folder on the embedded defaults."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # a user's clean shell: no settings of ours, of DVC, or of MLflow (whose
    # set_tracking_uri exports MLFLOW_TRACKING_URI to every later subprocess)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CME_", "DVC_", "MLFLOW_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `cme`
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with params.yaml, dvc.yaml and 120 registered generated images."""
    folder = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "params.yaml", folder)
    shutil.copy(ROOT / "dvc.yaml", folder)
    generated = run("cme", "sample-data", "lab", "--n", "120", "--seed", "5",
                    "-S", "sample_data.image_size=64", cwd=folder)  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    imported = run(
        "cme", "labels", "import", "lab/metadata.csv", "--images", "lab/images", cwd=folder
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert run("dvc", "init", "--no-scm", "--quiet", cwd=folder).returncode == 0
    return folder


def test_a_broken_manifest_fails_validation_naming_rule_and_rows(project):
    exported = run("cme", "export", "--out", "candidate.csv", cwd=project)
    assert exported.returncode == 0, exported.stderr
    manifest = pd.read_csv(project / "candidate.csv")
    manifest.loc[4, "age"] = 140
    manifest.to_csv(project / "broken.csv", index=False)

    result = run("cme", "validate", "--manifest", "broken.csv", cwd=project)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED (1 expectations)" in result.stdout
    assert "FAIL manifest    age within range: 1 offending rows" in result.stdout
    assert f"image_id {manifest.loc[4, 'image_id']}: age = 140" in result.stdout
    assert (project / ".cme" / "reports" / "data-docs" / "index.html").is_file()
    assert list((project / ".cme" / "reports").glob("validation-*.json"))


def test_dvc_repro_runs_the_dataset_stages_on_the_embedded_defaults(project):
    # The train stage needs ImageNet weights by default; test_training_run.py runs it.
    result = run("dvc", "repro", "snapshot", cwd=project)

    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((project / ".cme" / "pipeline" / "snapshot.json").read_text())
    report = json.loads((project / ".cme" / "pipeline" / "validation.json").read_text())
    assert report["success"] is True
    assert record["dvc_hash"].endswith(".dir") and record["images"] > 0
    # Off a terminal, the snapshot says each step as it begins (the DVC step names the files).
    steps = [line for line in result.stderr.splitlines() if line.startswith("snapshot: ")]
    assert [line.split(": ")[1] for line in steps] == [f"{n} of 4 steps" for n in range(5)]
    assert re.search(r"versioning data/ with DVC \(\d+ files", steps[2]), steps[2]
    listed = run("cme", "snapshot", "list", "--format", "json", cwd=project)
    assert [s["snapshot_id"] for s in json.loads(listed.stdout)] == [record["snapshot_id"]]
    assert record["dvc_hash"] in (project / "data.dvc").read_text()

    again = run("dvc", "repro", "snapshot", cwd=project)
    assert again.returncode == 0
    assert "Stage 'snapshot' didn't change, skipping" in again.stdout
