"""The evaluate stage as users run it: `dvc repro evaluate` registers the first challenger,
a reviewer approves it, and a second training run is judged against that champion on the
same locked test set, with the evidence logged to its MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipelines.evaluation.report import EvaluationReport
from tests.installation_support import copy_installation
from tests.integration.test_dataset_pipeline import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(evaluated_installation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's evaluated installation: 160 registered generated
    images (25 in the locked test set, 13 of them melanoma) and the whole pipeline run
    through `dvc repro evaluate` with tiny training and a lenient gate
    (tests/installation_support.py). Its later runs are served as trained, without the
    installation's test-time augmentation (test_training_run.py's concern)."""
    folder = copy_installation(
        evaluated_installation, tmp_path_factory.mktemp("evaluation-project")
    )
    params = folder / "params.yaml"
    dihedral = params.read_text()
    assert "test_time_augmentation: dihedral" in dihedral
    params.write_text(
        dihedral.replace("test_time_augmentation: dihedral", "test_time_augmentation: none")
    )
    return folder


@pytest.fixture(scope="module")
def tracking(project: Path) -> MlflowClient:
    uri = f"sqlite:///{project / '.cme' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def record(project: Path, name: str) -> dict:
    return json.loads((project / ".cme" / "pipeline" / f"{name}.json").read_text())


def report_of(tracking: MlflowClient, run_id: str) -> EvaluationReport:
    path = tracking.download_artifacts(run_id, "evaluation/evaluation.json")
    return EvaluationReport.from_json(Path(path).read_text())


def test_the_first_challenger_is_registered_and_awaits_approval(project, tracking):
    evaluated, trained = record(project, "evaluate"), record(project, "train")
    assert evaluated["run_id"] == trained["run_id"]
    assert evaluated["version"] == "1"
    assert evaluated["decision"]["promote"] is True
    assert {r["rule"] for r in evaluated["decision"]["reasons"]} == {
        "sensitivity_floor", "specificity_floor", "first_model_roc_auc", "first_model_f1",
    }  # fmt: skip
    version = tracking.get_model_version_by_alias("melanoma-resnet50", "challenger")
    assert str(version.version) == "1"
    assert version.tags["approval"] == "pending"
    assert version.tags["snapshot_id"] == record(project, "snapshot")["snapshot_id"]
    assert version.tags["run_id"] == trained["run_id"]
    assert "first_model_roc_auc" in version.tags["decision_reasons"]
    # What it is built of, from its run: the tests' small convnet, from scratch, every layer
    # but the batch normalisation's moving statistics.
    assert (version.tags["backbone"], version.tags["approach"]) == ("convnet", "convnet")
    trained_parameters, total = (int(version.tags[f"parameters_{kind}"])
                                 for kind in ("trained", "total"))  # fmt: skip
    assert 18_000 < trained_parameters < total < 20_000
    # The version page shows the evidence: decision, headline, test set, lineage, links,
    # and the history of what was done to it.
    page = version.description
    for part in ("### Decision", "pass  first_model_roc_auc", "### Headline metrics",
                 "25 images (13 melanoma", "### Lineage", f"#/runs/{trained['run_id']}",
                 f"- snapshot_id: `{version.tags['snapshot_id']}`", "### History"):  # fmt: skip
        assert part in page, part
    last = page.rstrip().splitlines()[-1]
    assert " decision by " in last and last.endswith(": promote: every rule passed"), page

    report = report_of(tracking, trained["run_id"])
    assert report.versus is None
    assert (report.test_images, report.test_melanoma) == (25, 13)
    run_ = tracking.get_run(trained["run_id"])
    assert run_.data.metrics["test_roc_auc"] == pytest.approx(report.challenger.metrics.roc_auc)
    assert run_.data.metrics["test_partial_roc_auc"] == pytest.approx(
        report.challenger.metrics.partial_roc_auc
    )
    assert run_.data.tags["gate_decision"] == "promote"
    files = {a.path for a in tracking.list_artifacts(trained["run_id"], "evaluation")}
    assert {f"evaluation/{name}" for name in (
        "evaluation.json", "summary.md", "summary.html", "roc.png", "pr.png", "reliability.png",
        "confusion.png", "subgroups.csv", "predictions.csv",
    )} <= files  # fmt: skip
    roc = tracking.download_artifacts(trained["run_id"], "evaluation/roc.png")
    assert Image.open(roc).size[0] > 300


def test_a_second_run_is_judged_against_the_approved_champion(project, tracking):
    approved = run("cme", "approve", "1", "--reviewer", "dr-okafor", cwd=project)
    assert approved.returncode == 0, approved.stderr
    assert "version 1 is now the champion (was none)" in approved.stdout

    retrained = run("cme", "train", "-S", "train.seed=7", cwd=project)
    assert retrained.returncode == 0, retrained.stderr
    evaluated = run("cme", "evaluate", "--record", "second.json", cwd=project)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "decision: " in evaluated.stdout
    second = json.loads((project / "second.json").read_text())
    assert second["version"] == "2"
    assert {r["rule"] for r in second["decision"]["reasons"]} == {
        "sensitivity_floor", "specificity_floor", "roc_auc", "f1", "subgroups",
    }  # fmt: skip

    report = report_of(tracking, second["run_id"])
    assert report.versus is not None
    assert report.versus.champion.version == "1"
    assert report.versus.auc is not None
    first = report_of(tracking, record(project, "train")["run_id"])
    # the champion's scores on the shared test set are those it had when it was judged
    assert report.versus.champion.metrics == first.challenger.metrics
    assert report.versus.auc.champion_auc == pytest.approx(first.challenger.metrics.roc_auc)
    assert report.versus.f1.resampled == "lesion"

    trail = json.loads(run("cme", "audit", "--format", "json", cwd=project).stdout)
    assert [(e["action"], e["version"]) for e in trail][:3] == [
        ("decision", "1"), ("approval", "1"), ("promotion", "1"),
    ]  # fmt: skip
    assert trail[3]["action"] == "decision" and trail[3]["version"] == "2"
    history = tracking.get_model_version("melanoma-resnet50", "1").description.split("### History")
    done_to_1 = [f"{e['action']} by {e['actor']}" for e in trail if e["version"] == "1"]
    assert done_to_1[1:] == ["approval by dr-okafor", "promotion by dr-okafor"]
    lines = history[1].strip().splitlines()
    assert [line.split(", ", 1)[1].split(":")[0] for line in lines] == done_to_1
    second_page = tracking.get_model_version("melanoma-resnet50", "2").description
    assert "### Paired statistics" in second_page
    model_page = tracking.get_registered_model("melanoma-resnet50").description
    champion = model_page.split("### Champion")[1].strip().splitlines()[0]
    assert champion.startswith("version 1, since ") and "promotion by dr-okafor" in champion
    policy = model_page.split("### The gate policy of the last decision")[1].splitlines()
    assert {"- approval: `required`", "- first_model_f1: `0.0`"} <= set(policy)  # the project's
