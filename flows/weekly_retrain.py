"""The weekly retrain: pull new accepted labels -> validate -> snapshot -> train -> evaluate
-> gate -> register / promote. Each task calls one domain function."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from flows.common import opened, skipped, step
from flows.training import train_challenger
from pipelines.errors import Refused
from pipelines.gate import Decision
from pipelines.validation import ValidationReport
from registry.promotion import Outcome
from usecases import challenger_evaluation, retrain_steps, snapshots
from usecases.params import Params
from usecases.platform import Platform
from usecases.retrain_steps import LabelPull, MlflowPages, RetrainSummary
from usecases.snapshots import SnapshotOutcome

WEEKLY_OUTCOME_ARTIFACT = "weekly-retrain-outcome"


class TrainingFailed(Refused):
    """The training flow run on a worker did not complete; its state says why."""


@step("pull new labels")
def pull_new_labels(platform: Platform, params: Params) -> LabelPull:
    return retrain_steps.pull_new_labels(platform, params)


@step("validate")
def validate(platform: Platform, params: Params, pull: LabelPull) -> ValidationReport:
    return retrain_steps.validate_new_labels(platform, params, pull)


@step("snapshot")
def snapshot(platform: Platform, params: Params, pull: LabelPull, steward: str) -> SnapshotOutcome:
    return snapshots.take_snapshot(platform, params, steward=steward, manifest=pull.manifest)


@step("train on a worker", retries=0)
def train_on_worker(
    deployment: str, snapshot_id: str, retrain_id: str, overrides: list[str] | None
) -> None:
    """Run the training flow's deployment (on the `gpu` work pool) and wait for it."""
    parameters = {"snapshot_id": snapshot_id, "retrain_id": retrain_id, "overrides": overrides}
    # Called from a sync task, run_deployment runs synchronously and returns the run.
    run: FlowRun = run_deployment(  # type: ignore[assignment]
        name=deployment, parameters=parameters, timeout=None
    )
    state = run.state
    if state is None or not state.is_completed():
        name = state.name if state else "unknown"
        raise TrainingFailed(f"training run {run.name} on {deployment} ended {name}")


@step("evaluate")
def evaluate(
    platform: Platform, params: Params, retrain_id: str
) -> challenger_evaluation.Evaluation:
    return challenger_evaluation.evaluate(platform, params, retrain_id=retrain_id)


@step("gate", retries=0)
def gate(result: challenger_evaluation.Evaluation, params: Params) -> Decision:
    return challenger_evaluation.judge(result, params)


@step("register")
def register(
    platform: Platform,
    params: Params,
    result: challenger_evaluation.Evaluation,
    decision: Decision,
    steward: str,
    retrain_id: str,
) -> Outcome:
    return challenger_evaluation.register(
        platform, params, result, decision, actor=steward, flow_run_id=retrain_id
    )


@flow(name="weekly-retrain")
def weekly_retrain(
    overrides: list[str] | None = None,
    steward: str = "weekly-retrain",
    training_deployment: str | None = None,
) -> Any:
    """Retrain when enough new confirmed labels arrived; at most one retrain at a time.

    `overrides` are params.yaml `key=value` overrides; `training_deployment` (e.g.
    `train-challenger/gpu`) trains on that deployment's work pool instead of in this run.
    """
    retrain_id = str(flow_run.get_id() or "local")
    with (
        opened(overrides) as (platform, params),
        retrain_steps.one_retrain_at_a_time(
            platform, params, retrain_steps.lease_holder(retrain_id)
        ) as busy,
    ):
        if busy:
            return skipped(publish(platform, retrain_steps.skipped(busy)), busy)
        pull = pull_new_labels(platform, params)
        reason = pull.skip_reason(params.retrain.min_new_labels)
        if reason:
            return skipped(publish(platform, retrain_steps.skipped(reason, pull)), reason)
        validate(platform, params, pull)
        frozen = snapshot(platform, params, pull, steward)
        snapshot_id = frozen.record.snapshot_id
        if training_deployment:
            train_on_worker(training_deployment, snapshot_id, retrain_id, overrides)
        else:
            train_challenger(snapshot_id, retrain_id, overrides)
        result = evaluate(platform, params, retrain_id)
        decision = gate(result, params)
        registration = register(platform, params, result, decision, steward, retrain_id)
        summary: RetrainSummary = retrain_steps.concluded(
            platform, pull, snapshot_id, result, decision, registration
        )
        return publish(platform, summary)


def publish(platform: Platform, summary: RetrainSummary) -> RetrainSummary:
    """The week's outcome as a Markdown artifact of the flow run, for the Prefect UI."""
    workspace = platform.workspace
    pages = MlflowPages.of(workspace.tracking_uri, workspace.model_name)
    create_markdown_artifact(
        markdown=summary.markdown(pages),
        key=WEEKLY_OUTCOME_ARTIFACT,
        description=f"weekly retrain: {summary.status}",
    )
    return summary
