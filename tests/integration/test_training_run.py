"""A tiny training run as users start it (`dvc repro train`, i.e. `cme train` after the
dataset stages), on generated images at 32 px, from scratch: the MLflow run carries its
lineage, per-epoch metrics and curve, and the logged pyfunc predicts like the Keras model
from JPEG bytes, base64 text and arrays."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

import pipelines.training.model  # noqa: F401 (registers the layer the .keras file names)
from pipelines.dataset.tfdata import evaluation_batches, labelled_files
from pipelines.training.pyfunc import OUTPUT_COLUMNS, InvalidImage
from tests.installation_support import copy_installation
from tests.integration.test_dataset_pipeline import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def project(evaluated_installation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's evaluated installation: a git-tracked project
    folder whose params.yaml asks for a tiny run served with dihedral test-time augmentation,
    with 160 registered generated images, after `dvc repro evaluate` (so after `dvc repro
    train`, whose per-epoch lines its build checked): tests/installation_support.py."""
    return copy_installation(evaluated_installation, tmp_path_factory.mktemp("training-project"))


@pytest.fixture(scope="module")
def tracking(project: Path) -> MlflowClient:
    uri = f"sqlite:///{project / '.cme' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def pipeline_record(project: Path, name: str) -> dict:
    return json.loads((project / ".cme" / "pipeline" / f"{name}.json").read_text())


def test_the_run_carries_its_lineage_params_and_per_epoch_metrics(project, tracking):
    trained, snapshot = pipeline_record(project, "train"), pipeline_record(project, "snapshot")
    run_ = tracking.get_run(trained["run_id"])
    head = _shell_output(("git", "rev-parse", "HEAD"), project)

    assert run_.info.status == "FINISHED"
    assert tracking.get_experiment(run_.info.experiment_id).name == "melanoma-retrain"
    assert run_.data.tags["snapshot_id"] == trained["snapshot_id"] == snapshot["snapshot_id"]
    assert run_.data.tags["dvc_hash"] == snapshot["dvc_hash"]
    assert run_.data.tags["git_commit"] == head
    assert run_.data.params["train.image_size"] == "32"
    assert run_.data.params["train.weights"] == "none"
    assert run_.data.params["train.test_time_augmentation"] == "dihedral"
    assert run_.data.params["train.approach"] == "convnet"  # the tests' small network
    assert run_.data.tags["backbone"] == "convnet" and run_.data.tags["approach"] == "convnet"
    assert int(run_.data.params["data.train_images"]) > 0
    history = tracking.get_metric_history(run_.info.run_id, "val_auc")
    assert [metric.step for metric in history] == [1, 2]
    assert run_.data.metrics["best_epoch"] in (1, 2)
    artifacts = {artifact.path for artifact in tracking.list_artifacts(run_.info.run_id)}
    assert "learning_curve.png" in artifacts
    curve = mlflow.artifacts.download_artifacts(run_id=run_.info.run_id,
                                                artifact_path="learning_curve.png")  # fmt: skip
    assert Image.open(curve).size[0] > 300


def _shell_output(command: tuple[str, ...], cwd: Path) -> str:
    import subprocess

    return subprocess.run(command, cwd=cwd, capture_output=True, text=True).stdout.strip()


def test_the_pyfunc_predicts_like_the_keras_model_from_bytes_base64_and_arrays_in_any_turn(
    project, tracking
):
    model_uri = pipeline_record(project, "train")["model_uri"]
    snapshot_id = pipeline_record(project, "snapshot")["snapshot_id"]
    data_dir = project / "data"
    manifest = pd.read_csv(data_dir / "snapshots" / snapshot_id / "manifest.csv")
    test_split = labelled_files(manifest, data_dir, "test")
    model_folder = Path(mlflow.artifacts.download_artifacts(model_uri))
    keras_file = model_folder / "artifacts" / "classifier.keras"
    keras_model = keras.saving.load_model(keras_file, compile=False)
    batches = evaluation_batches(test_split, image_size=32, batch_size=8, cache="none", name="t")
    expected = np.asarray(keras_model.predict(batches.dataset, verbose=0)).reshape(-1)

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    jpeg = [Path(f).read_bytes() for f in test_split.files]
    as_text = [base64.b64encode(b).decode() for b in jpeg]
    as_arrays = [np.asarray(Image.open(f).convert("RGB")) for f in test_split.files]

    for images in (jpeg, as_text):
        predicted = pyfunc.predict(pd.DataFrame({"image": images}))
        np.testing.assert_allclose(predicted["probability"], expected, rtol=1e-5, atol=1e-6)
        assert list(predicted["melanoma"]) == list(expected >= 0.5)
    from_arrays = pyfunc.predict(pd.DataFrame({"image": as_arrays}))
    # the served model decodes JPEG as PIL does (the accurate DCT): pixels or file, one answer
    np.testing.assert_allclose(from_arrays["probability"], expected, rtol=1e-5, atol=1e-6)
    turned = [np.rot90(array) for array in as_arrays]
    mirrored = [array[:, ::-1] for array in as_arrays]
    for views in (turned, mirrored):  # the served model averages over the 8 orientations
        answer = pyfunc.predict(pd.DataFrame({"image": views}))
        # (resizing a turned image rounds differently in the last float32 digits)
        np.testing.assert_allclose(answer["probability"], from_arrays["probability"], atol=1e-4)
    assert pyfunc.metadata.get_input_schema().input_names() == ["image"]
    assert pyfunc.metadata.get_output_schema().input_names() == list(OUTPUT_COLUMNS)


def test_the_pyfunc_names_the_row_that_is_not_an_image(project, tracking):
    pyfunc = mlflow.pyfunc.load_model(pipeline_record(project, "train")["model_uri"])
    good = next((project / "lab" / "images").iterdir()).read_bytes()

    with pytest.raises(InvalidImage, match="row 1: not a readable image"):
        pyfunc.predict(pd.DataFrame({"image": [good, b"not an image at all"]}))
    with pytest.raises(InvalidImage, match="row 0: text is not base64"):
        pyfunc.predict(pd.DataFrame({"image": ["%%% not base64"]}))


def test_dvc_repro_skips_training_when_nothing_changed(project):
    again = run("dvc", "repro", "train", cwd=project)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Stage 'train' didn't change, skipping" in again.stdout


def test_train_before_any_snapshot_says_what_to_do(tmp_path):
    result = run("cme", "train", "-S", "train.weights=none", "-S", "train.unfreeze_from=all",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "no snapshot to train on yet: take one with `cme snapshot`" in result.stderr


@pytest.fixture(scope="module")
def ensemble(project: Path, tracking: MlflowClient) -> dict:
    """`cme train -S train.ensemble_size=2` on the same snapshot, served without TTA."""
    record = project / "ensemble.json"
    trained = run(
        "cme", "train", "--record", str(record),
        "-S", "train.ensemble_size=2", "-S", "train.test_time_augmentation=none",
        cwd=project,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "member 2/2 epoch   2/2 fine-tune" in trained.stdout
    assert "ensemble: val ROC AUC" in trained.stdout
    return json.loads(record.read_text())


def test_an_ensemble_serves_the_mean_of_members_trained_from_their_own_seeds(
    project, tracking, ensemble
):
    run_ = tracking.get_run(ensemble["run_id"])
    for member in (1, 2):  # each member's curve, epoch by epoch
        history = tracking.get_metric_history(run_.info.run_id, f"member_{member}/val_auc")
        assert [metric.step for metric in history] == [1, 2]
        assert run_.data.metrics[f"member_{member}/best_epoch"] in (1, 2)
    assert [m["best_epoch"] for m in ensemble["members"]] == [
        run_.data.metrics[f"member_{member}/best_epoch"] for member in (1, 2)
    ]

    manifest = pd.read_csv(
        project / "data" / "snapshots" / ensemble["snapshot_id"] / "manifest.csv"
    )
    val = labelled_files(manifest, project / "data", "val")
    images = np.concatenate(
        [batch for batch, _ in evaluation_batches(
            val, image_size=32, batch_size=8, cache="none", name="v"
        ).dataset.as_numpy_iterator()]
    )  # fmt: skip
    folder = Path(mlflow.artifacts.download_artifacts(ensemble["model_uri"]))
    served = keras.saving.load_model(folder / "artifacts" / "classifier.keras", compile=False)
    members = [layer for layer in served.layers if isinstance(layer, keras.Model)]
    answers = [np.asarray(member.predict(images, verbose=0)).ravel() for member in members]

    assert len(members) == 2
    assert np.abs(answers[0] - answers[1]).max() > 1e-3  # two seeds, two different models
    pyfunc = mlflow.pyfunc.load_model(ensemble["model_uri"])
    predicted = pyfunc.predict(pd.DataFrame({"image": [Path(f).read_bytes() for f in val.files]}))
    np.testing.assert_allclose(predicted["probability"], np.mean(answers, axis=0), atol=1e-5)
    from sklearn.metrics import roc_auc_score

    assert run_.data.metrics["ensemble_val_auc"] == pytest.approx(
        roc_auc_score(val.labels, predicted["probability"]), abs=1e-6
    )
