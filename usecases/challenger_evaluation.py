"""The evaluate stage: score challenger and champion on the challenger's locked test set,
judge the pair with the gate, log the evidence to the challenger's MLflow run and register
the challenger (promoted at once only when it passed and the policy asks no approval)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.errors import BadInput
from pipelines.training.backbones import ARCHITECTURE_TAGS, architecture_of
from registry.models import CHAMPION
from registry.promotion import ChampionLifecycle, GateRecord, Outcome
from usecases.challenger_training import (
    INIT_REASON_TAG,
    INITIALIZED_FROM_TAG,
    WARM_GENERATION_TAG,
)
from usecases.params import Params
from usecases.platform import Platform
from usecases.snapshots import snapshot_on_hand

if TYPE_CHECKING:
    from pipelines.evaluation.evaluate import ScoredModel
    from pipelines.evaluation.report import EvaluationReport
    from pipelines.gate import Decision

EVALUATION_ARTIFACTS = "evaluation"
MODEL_URI_TAG = "model_uri"
RETRAIN_TAG = "retrain_id"  # the weekly retrain (flow run) a training run belongs to
LINEAGE_TAGS = (
    "snapshot_id", "dvc_hash", "git_commit", "manifest_sha256", "labels_as_of",
    INITIALIZED_FROM_TAG, INIT_REASON_TAG, WARM_GENERATION_TAG, *ARCHITECTURE_TAGS,
)  # fmt: skip


class NothingToEvaluate(BadInput, LookupError):
    """No finished training run to evaluate; the message says what to run first."""


@dataclass(frozen=True)
class EvaluationOutcome:
    run_id: str
    report: EvaluationReport
    decision: Decision
    registration: Outcome


@dataclass(frozen=True)
class Evaluation:
    """A training run's challenger and the serving champion, scored on the same locked test
    set, with the report the gate reads."""

    run: Any
    cases: pd.DataFrame
    challenger: ScoredModel
    champion: ScoredModel | None
    report: EvaluationReport

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)


def evaluate_challenger(
    platform: Platform,
    params: Params,
    *,
    run_id: str | None = None,
    actor: str | None = None,
    flow_run_id: str | None = None,
) -> EvaluationOutcome:
    """Evaluate the training run `run_id` (default: the latest finished one) against the
    champion, decide, log the evidence and register the challenger."""
    evaluation = evaluate(platform, params, run_id=run_id)
    decision = judge(evaluation, params)
    registration = register(
        platform, params, evaluation, decision, actor=actor, flow_run_id=flow_run_id
    )
    return EvaluationOutcome(evaluation.run_id, evaluation.report, decision, registration)


def evaluate(
    platform: Platform, params: Params, *, run_id: str | None = None, retrain_id: str | None = None
) -> Evaluation:
    """Score the challenger of training run `run_id` (default: the latest finished one, of
    the weekly retrain `retrain_id` when given) and the champion on the challenger's locked
    test set."""
    from pipelines.evaluation.evaluate import evaluate_on_test_set

    champions = platform.champions()
    run = _training_run(platform, run_id, retrain_id)
    tags = run.data.tags
    snapshot = snapshot_on_hand(platform, tags["snapshot_id"])
    manifest, data_dir = snapshot.manifest, snapshot.data_dir
    cases = manifest[manifest["split"] == "test"].reset_index(drop=True)
    challenger = _scored(tags, manifest, cases, data_dir, params)
    champion = _scored_champion(champions, cases, data_dir)
    settings = params.evaluate.settings(alpha=params.gate.alpha)
    report = evaluate_on_test_set(tags["snapshot_id"], cases, challenger, champion, settings)
    return Evaluation(run, cases, challenger, champion, report)


def judge(evaluation: Evaluation, params: Params) -> Decision:
    """The gate's decision on the pair, by the policy in params."""
    from pipelines.gate import decide

    return decide(evaluation.report.challenger, evaluation.report.versus, params.gate.policy())


def register(
    platform: Platform,
    params: Params,
    evaluation: Evaluation,
    decision: Decision,
    *,
    actor: str | None = None,
    flow_run_id: str | None = None,
) -> Outcome:
    """Log the evidence to the challenger's run and register it as a model version (promoted
    at once only when it passed and the policy asks no approval)."""
    import mlflow

    from pipelines.evaluation.artifacts import write_evaluation_artifacts

    champions = platform.champions()
    platform.tracking()
    report, run = evaluation.report, evaluation.run
    with mlflow.start_run(run_id=evaluation.run_id), tempfile.TemporaryDirectory() as folder:
        write_evaluation_artifacts(
            report,
            evaluation.cases,
            evaluation.challenger,
            evaluation.champion,
            Path(folder),
            decision.lines(),
        )
        mlflow.log_artifacts(folder, EVALUATION_ARTIFACTS)
        mlflow.log_metrics(report.headline())
        mlflow.set_tags({"gate_decision": decision.verdict, "stage": "train+evaluate"})
    threshold = evaluation.challenger.threshold
    record = _gate_record(run, report, decision, params, flow_run_id, threshold)
    return champions.register_challenger(record, actor or platform.steward(None))


def score(model: Any, cases: pd.DataFrame, data_dir: Path) -> np.ndarray:
    """Probabilities of melanoma for each case's image, from a loaded pyfunc model."""
    images = [(data_dir / str(path)).read_bytes() for path in cases["path"]]
    predictions = model.predict(pd.DataFrame({"image": images}))
    return np.asarray(predictions["probability"], dtype=np.float64)


def _loaded(model_uri: str) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(model_uri)


def _scored(
    tags: Mapping[str, str],
    manifest: pd.DataFrame,
    cases: pd.DataFrame,
    data_dir: Path,
    params: Params,
) -> ScoredModel:
    """The challenger (of the training run with `tags`) at its operating threshold: its
    own, or the highest threshold that reaches the policy's target sensitivity on the
    validation split."""
    from pipelines.evaluation.evaluate import ScoredModel
    from pipelines.evaluation.metrics import threshold_for_sensitivity

    model_uri = tags[MODEL_URI_TAG]
    model = _loaded(model_uri)
    probabilities = score(model, cases, data_dir)
    threshold = _configured_threshold(model)
    target = params.evaluate.target_sensitivity
    if target is not None:
        validation = manifest[manifest["split"] == "val"].reset_index(drop=True)
        val_probabilities = score(model, validation, data_dir)
        threshold = threshold_for_sensitivity(
            validation["label"].to_numpy(), val_probabilities, target
        )
    return ScoredModel(model_uri, None, threshold, probabilities, architecture_of(tags))


def _scored_champion(
    champions: ChampionLifecycle, cases: pd.DataFrame, data_dir: Path
) -> ScoredModel | None:
    """The serving champion on the same cases, at the threshold it serves with."""
    from pipelines.evaluation.evaluate import ScoredModel

    champions.guard("alias-guard")
    version = champions.models.aliased(CHAMPION)
    if version is None:
        return None
    model = _loaded(version.uri)
    probabilities = score(model, cases, data_dir)
    threshold = float(version.tags.get("threshold", _configured_threshold(model)))
    architecture = architecture_of(version.tags)
    return ScoredModel(version.uri, version.version, threshold, probabilities, architecture)


def _configured_threshold(model: Any) -> float:
    config = model.model_config or {}
    return float(config.get("threshold", 0.5))


def _training_run(platform: Platform, run_id: str | None, retrain_id: str | None = None) -> Any:
    import mlflow

    platform.tracking()
    experiment = platform.workspace.experiment
    if run_id is not None:
        run = mlflow.get_run(run_id)
        if MODEL_URI_TAG not in run.data.tags:
            raise NothingToEvaluate(f"run {run_id} logged no model to evaluate")
        return run
    wanted = f"attributes.status = 'FINISHED' and tags.{MODEL_URI_TAG} != ''"
    if retrain_id is not None:
        wanted += f" and tags.{RETRAIN_TAG} = '{retrain_id}'"
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=wanted,
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        of_retrain = f" for retrain {retrain_id}" if retrain_id else ""
        raise NothingToEvaluate(
            f"no finished training run{of_retrain} in experiment {experiment!r}: "
            "run `cme train` first"
        )
    return runs[0]


def _gate_record(
    run: Any,
    report: EvaluationReport,
    decision: Decision,
    params: Params,
    flow_run_id: str | None,
    threshold: float,
) -> GateRecord:
    tags = run.data.tags
    headline = report.headline()
    version_tags = {
        **{key: tags.get(key, "") for key in LINEAGE_TAGS},
        "run_id": run.info.run_id,
        "flow_run_id": flow_run_id or "",
        "threshold": f"{threshold:g}",
        "decision_reasons": "\n".join(reason.line() for reason in decision.reasons),
        **_headline_tags(report),
    }
    evidence = {
        "decision": decision.to_dict(),
        "headline": headline,
        "policy": params.gate.model_dump(mode="json"),
        "evaluation": params.evaluate.model_dump(mode="json"),
        "report": f"runs:/{run.info.run_id}/{EVALUATION_ARTIFACTS}/evaluation.json",
        "run_id": run.info.run_id,
        "lineage": {key: tags.get(key, "") for key in LINEAGE_TAGS},
        "flow_run_id": flow_run_id,
    }
    failed = [reason.rule for reason in decision.failed]
    summary = "every rule passed" if not failed else f"failed {', '.join(failed)}"
    from pipelines.evaluation.rendering import version_description

    lineage = {key: tags[key] for key in LINEAGE_TAGS if tags.get(key)}
    description = version_description(report, decision.lines(), lineage, run.info.run_id)
    return GateRecord(
        model_uri=tags[MODEL_URI_TAG],
        run_id=run.info.run_id,
        promote=decision.promote,
        needs_approval=decision.needs_approval,
        summary=summary,
        tags=version_tags,
        evidence=evidence,
        description=description,
    )


def _headline_tags(report: EvaluationReport) -> dict[str, str]:
    """The headline metrics with their intervals, readable on the version page."""
    metrics = report.challenger.metrics
    tags = {
        "test_sensitivity": f"{metrics.sensitivity:.3f}",
        "test_specificity": f"{metrics.specificity:.3f}",
        "test_f1": f"{metrics.f1:.3f}",
        "test_roc_auc": "undefined" if metrics.roc_auc is None else f"{metrics.roc_auc:.3f}",
        "test_partial_roc_auc": "undefined"
        if metrics.partial_roc_auc is None
        else f"{metrics.partial_roc_auc:.4f}",
        "test_images": str(report.test_images),
    }
    versus = report.versus
    if versus is not None:
        f1 = versus.f1
        tags["delta_f1"] = f"{f1.difference:+.3f} [{f1.ci_low:+.3f}, {f1.ci_high:+.3f}]"
        if versus.auc is not None:
            auc = versus.auc
            tags["delta_roc_auc"] = (
                f"{auc.difference:+.3f} [{auc.ci_low:+.3f}, {auc.ci_high:+.3f}] "
                f"p={auc.p_superiority:.3g}"
            )
        if versus.partial_auc is not None:
            partial = versus.partial_auc
            tags["delta_partial_roc_auc"] = (
                f"{partial.difference:+.4f} [{partial.ci_low:+.4f}, {partial.ci_high:+.4f}]"
            )
    return tags
