"""The week's outcome as the Prefect UI shows it (a Markdown artifact of each weekly-retrain
run): what arrived, what the gate decided and why, and links to the evidence in MLflow."""

from __future__ import annotations

from usecases.retrain_steps import MlflowPages, RetrainSummary

REJECTED = RetrainSummary(
    status="rejected",
    message="version 4 registered as challenger: rejected by the gate",
    new_labels=120,
    snapshot_id="20261205T120000Z-ab12cd34",
    run_id="0123abcd",
    version="4",
    champion="2",
    reasons=("pass  sensitivity_floor: sensitivity 0.900", "FAIL  f1: F1 0.416 vs champion 0.459"),
    explanations=("its balance of melanomas found against false alarms (F1) is no better.",),
    initialized_from="melanoma-resnet50 version 2",
    init_reason="continued education: shrink 1, perturb 0",
)


def test_a_rejected_week_says_what_arrived_what_was_decided_and_why():
    text = REJECTED.markdown()
    assert text.startswith("# Weekly retrain: rejected\n\nversion 4 registered as challenger")
    for fact in (
        "- new labels since the champion's snapshot: 120",
        "- snapshot: `20261205T120000Z-ab12cd34`",
        "- challenger: version 4",
        "- champion now: version 2",
        "- started from melanoma-resnet50 version 2 (continued education: shrink 1, perturb 0)",
        "- `FAIL  f1: F1 0.416 vs champion 0.459`",
        "- its balance of melanomas found against false alarms (F1) is no better.",
    ):
        assert fact in text.splitlines()
    assert "## Evidence" not in text  # no MLflow UI to link to


def test_a_skipped_week_says_why_and_links_nothing():
    skipped = RetrainSummary(status="skipped", message="3 new labels since the start; 50 needed")
    assert skipped.markdown(MlflowPages.of("http://mlflow:5000", "melanoma-resnet50")) == (
        "# Weekly retrain: skipped\n\n3 new labels since the start; 50 needed\n\n"
        "- new labels since the champion's snapshot: 0\n- champion now: none\n"
    )


def test_links_point_at_the_version_page_and_the_run_of_an_http_tracking_server():
    pages = MlflowPages.of("https://mlflow.clinic.example/", "melanoma resnet50")
    assert pages is not None
    assert REJECTED.markdown(pages).splitlines()[-2:] == [
        "- [version 4 in the MLflow UI](https://mlflow.clinic.example/#/models/"
        "melanoma%20resnet50/versions/4)",
        "- [the run: report, plots, lineage](https://mlflow.clinic.example/#/runs/0123abcd)",
    ]
    assert MlflowPages.of("sqlite:///tmp/mlflow.db", "melanoma-resnet50") is None
