from __future__ import annotations

from pathlib import Path

import pytest

from cme.settings import Settings
from usecases.params import ParamsError, load_params

REPO_PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_repository_params_file_is_valid_and_matches_the_embedded_defaults():
    from_file = load_params(REPO_PARAMS)
    assert from_file == load_params(Path("/nonexistent/params.yaml"))


def test_gate_params_default_to_the_gate_policy_defaults():
    """params.yaml, GateParams and GatePolicy agree (the file is checked against GateParams
    above); `off` reads as off however YAML types it."""
    from pipelines.gate import GatePolicy, MetricRule, Mode

    assert load_params(REPO_PARAMS).gate.policy() == GatePolicy()
    for off in ("gate.partial_roc_auc=off", "gate.partial_roc_auc='off'"):
        assert load_params(REPO_PARAMS, [off]).gate.policy().partial_roc_auc is None
    judged = load_params(
        REPO_PARAMS, ["gate.partial_roc_auc=non_inferiority", "gate.partial_roc_auc_margin=0.005"]
    )
    assert judged.gate.policy().partial_roc_auc == MetricRule(Mode.non_inferiority, 0.005)
    with pytest.raises(ParamsError, match=r"gate\.specificity_floor"):
        load_params(REPO_PARAMS, ["gate.specificity_floor=1.5"])


def test_overrides_are_typed_like_dvc_exp_run_set():
    params = load_params(REPO_PARAMS, ["intake.batch_size=64", "sample_data.melanoma_fraction=0.5"])
    assert params.intake.batch_size == 64
    assert params.sample_data.melanoma_fraction == 0.5
    assert params.intake.rules().max_pixels == 40_000_000
    assert params.split.fractions().test == 0.15


def test_split_fractions_that_do_not_add_up_are_refused():
    with pytest.raises(ParamsError, match=r"train \+ val \+ test must be 1, got 1.2"):
        load_params(REPO_PARAMS, ["split.train=0.9"])
    shifted = load_params(REPO_PARAMS, ["split.train=0.6", "split.val=0.25"])
    assert shifted.split.fractions().val == 0.25


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("intake.batch_sise=3", "unknown key 'batch_sise'"),
        ("intake=3", "is a section"),
        ("intake.batch_size", "expected key=value"),
        ("intake.batch_size=-1", "intake.batch_size"),
        ("sample_data.n=lots", "sample_data.n"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(REPO_PARAMS, [override])


def test_a_params_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("intake:\n  max_pixel: 5\n")
    with pytest.raises(ParamsError, match=r"params.yaml: intake.max_pixel"):
        load_params(path)


def test_settings_default_to_embedded_stores_under_cme_home(monkeypatch, tmp_path):
    for name in ("CME_DATABASE_URL", "CME_AUTO_MIGRATE", "CME_IMAGE_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CME_HOME", str(tmp_path / "home"))
    settings = Settings()
    assert settings.label_database_url == f"sqlite:///{tmp_path / 'home' / 'labels.db'}"
    assert settings.migrates_automatically
    assert settings.image_store_dir == Path("data/images")

    monkeypatch.setenv("CME_DATABASE_URL", "postgresql+psycopg2://cme@db/cme")
    assert not Settings().migrates_automatically


def test_importing_the_package_has_no_side_effects(tmp_path):
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-c", "import cme, cme.cli, registry.labels, usecases.sample_data"],
        cwd=tmp_path,
        check=True,
    )
    assert list(tmp_path.iterdir()) == []
