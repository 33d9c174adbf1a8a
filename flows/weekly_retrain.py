"""The weekly retrain: pull new accepted labels -> validate -> snapshot -> train -> evaluate
-> gate -> register / promote. Each task calls one domain function."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from cme import datasets, evaluation, retrain
from cme.bootstrap import App
from cme.datasets import SnapshotOutcome
from cme.params import Params
from cme.retrain import LabelPull, RetrainSummary
from flows.common import opened, skipped, step
from flows.training import train_challenger
from pipelines.gate import Decision
from pipelines.validation import ValidationReport
from registry.promotion import Outcome


class TrainingFailed(RuntimeError):
    """The training flow run on a worker did not complete; its state says why."""


@step("pull new labels")
def pull_new_labels(app: App, params: Params) -> LabelPull:
    return retrain.pull_new_labels(app, params)


@step("validate")
def validate(app: App, params: Params, pull: LabelPull) -> ValidationReport:
    return retrain.validate_new_labels(app, params, pull)


@step("snapshot")
def snapshot(app: App, params: Params, pull: LabelPull, steward: str) -> SnapshotOutcome:
    return datasets.take_snapshot(app, params, steward=steward, manifest=pull.manifest)


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
def evaluate(app: App, params: Params, retrain_id: str) -> evaluation.Evaluation:
    return evaluation.evaluate(app, params, retrain_id=retrain_id)


@step("gate", retries=0)
def gate(result: evaluation.Evaluation, params: Params) -> Decision:
    return evaluation.judge(result, params)


@step("register")
def register(
    app: App,
    params: Params,
    result: evaluation.Evaluation,
    decision: Decision,
    steward: str,
    retrain_id: str,
) -> Outcome:
    return evaluation.register(app, params, result, decision, actor=steward, flow_run_id=retrain_id)


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
        opened(overrides) as (app, params),
        retrain.one_retrain_at_a_time(app, params, retrain.lease_holder(retrain_id)) as busy,
    ):
        if busy:
            return skipped(retrain.skipped(busy), busy)
        pull = pull_new_labels(app, params)
        reason = pull.skip_reason(params.retrain.min_new_labels)
        if reason:
            return skipped(retrain.skipped(reason, pull), reason)
        validate(app, params, pull)
        frozen = snapshot(app, params, pull, steward)
        snapshot_id = frozen.record.snapshot_id
        if training_deployment:
            train_on_worker(training_deployment, snapshot_id, retrain_id, overrides)
        else:
            train_challenger(snapshot_id, retrain_id, overrides)
        result = evaluate(app, params, retrain_id)
        decision = gate(result, params)
        registration = register(app, params, result, decision, steward, retrain_id)
        summary: RetrainSummary = retrain.concluded(
            app, pull, snapshot_id, result, decision, registration
        )
        return summary
