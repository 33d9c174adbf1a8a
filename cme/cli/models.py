"""`cme evaluate`, `promote`, `approve`, `reject`, `rollback`, `status` and `audit`: the
champion/challenger gate and the reviewer's side of the model registry."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from cme.cli.common import OVERRIDES, OutputFormat, emit, opened_app

if TYPE_CHECKING:
    from registry.audit_trail import AuditEvent
    from registry.models import ModelVersion
    from registry.promotion import Outcome, RegistryStatus

BY = typer.Option(None, "--by", help="Who does this; default $CME_STEWARD, $USER.")
REVIEWER = typer.Option(..., "--reviewer", help="The reviewer's name, kept in the audit trail.")
AUDIT_COLUMNS = ("event_id", "occurred_at", "actor", "action", "version", "champion_after",
                 "summary")  # fmt: skip


def evaluate(
    run_id: str | None = typer.Option(
        None, "--run-id", help="Training run to evaluate; default the latest finished one."
    ),
    train_record: Path | None = typer.Option(
        None, "--train-record", help="Take the run id from `cme train --record` output."
    ),
    record_file: Path | None = typer.Option(
        None, "--record", help="Also write the decision and the version as JSON here."
    ),
    flow_run_id: str | None = typer.Option(
        None, "--flow-run-id", envvar="CME_FLOW_RUN_ID", help="Prefect flow run, for lineage."
    ),
    overrides: list[str] = OVERRIDES,
) -> None:
    """Score challenger and champion on the locked test set, apply the gate policy, log the
    evidence to the challenger's run and register it as a version with alias challenger."""
    from usecases.challenger_evaluation import evaluate_challenger

    if train_record is not None:
        run_id = json.loads(train_record.read_text())["run_id"]
    with opened_app() as cme:
        outcome = evaluate_challenger(
            cme, cme.params(overrides), run_id=run_id, flow_run_id=flow_run_id
        )
    report, decision = outcome.report, outcome.decision
    typer.echo(f"test set of snapshot {report.snapshot_id}: {report.test_images} images, "
               f"{report.test_melanoma} melanoma, {report.test_lesions} lesions")  # fmt: skip
    for line in _comparison_lines(report.headline()):
        typer.echo(line)
    for line in decision.lines():
        typer.echo(line)
    typer.echo(outcome.registration.message)
    if record_file is not None:
        record = {
            "run_id": outcome.run_id,
            "version": outcome.registration.version,
            "decision": decision.to_dict(),
            "headline": report.headline(),
        }
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.write_text(json.dumps(record, indent=2) + "\n")


def promote(
    version: str | None = typer.Argument(
        None, help="Version to promote; default every challenger reviewed in the MLflow UI."
    ),
    by: str | None = BY,
) -> None:
    """Finalize: run the alias guard, then promote challengers approved in the MLflow UI
    (tag approval=approved, reviewer=NAME) and record rejections. Evidence is checked again."""
    with opened_app() as cme:
        champions = cme.champions()
        actor = cme.steward(by)
        if version is not None:
            outcomes = [champions.promote(version, actor)]
        else:
            outcomes = champions.finalize(actor)
        champion = champions.expected_champion()
    _print_outcomes(outcomes)
    if not outcomes:
        typer.echo("nothing to promote")
    typer.echo(f"champion: {'version ' + champion if champion else 'none yet'}")


def approve(
    version: str = typer.Argument(..., help="The challenger version the reviewer approves."),
    reviewer: str = REVIEWER,
) -> None:
    """Approve a challenger that passed the gate, then promote it (as in the MLflow UI)."""
    with opened_app() as cme:
        outcome = cme.champions().approve(version, reviewer)
    _print_outcomes([outcome])


def reject(
    version: str = typer.Argument(..., help="The challenger version the reviewer rejects."),
    reviewer: str = REVIEWER,
    reason: str = typer.Option(..., "--reason", help="Why, in the reviewer's words."),
) -> None:
    """Reject a challenger: it will not serve; the reason is kept in the audit trail."""
    with opened_app() as cme:
        outcome = cme.champions().reject(version, reviewer, reason)
    _print_outcomes([outcome])


def rollback(
    reason: str = typer.Option(..., "--reason", help="Why the champion is withdrawn."),
    by: str | None = BY,
) -> None:
    """Return alias champion to previous-champion."""
    with opened_app() as cme:
        outcome = cme.champions().rollback(cme.steward(by), reason)
    _print_outcomes([outcome])


def status(
    output: OutputFormat = typer.Option(
        OutputFormat.table, "--format", help="table or json (csv is not offered)."
    ),
) -> None:
    """Champion, challenger, previous champion, pending approvals and the last decision."""
    with opened_app() as cme:
        current = cme.champions().status()
        name = cme.settings.model_name
    if output is OutputFormat.json:
        typer.echo(json.dumps(_status_document(name, current), indent=2, default=str))
        return
    for line in _status_lines(name, current):
        typer.echo(line)


def audit(
    output: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv, json."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the newest N events."),
) -> None:
    """The append-only audit trail of the model registry, oldest first."""
    with opened_app() as cme:
        events = cme.audit_trail().events(
            cme.settings.model_name, limit=limit, newest_first=limit is not None
        )
    events.sort(key=lambda event: event.event_id or 0)
    if output is OutputFormat.json:
        emit((_event_document(event) for event in events), (), output)
    else:
        rows = ({column: getattr(event, column) for column in AUDIT_COLUMNS} for event in events)
        emit(rows, AUDIT_COLUMNS, output)


def _print_outcomes(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        typer.echo(outcome.message)


def _comparison_lines(headline: dict[str, float]) -> list[str]:
    lines = []
    for metric in ("f1", "roc_auc", "sensitivity", "specificity", "brier"):
        value = headline.get(f"test_{metric}")
        if value is None:
            continue
        champion = headline.get(f"champion_test_{metric}")
        versus = f"   champion {champion:.3f}" if champion is not None else ""
        lines.append(f"  {metric:<12} challenger {value:.3f}{versus}")
    return lines


def _status_lines(name: str, current: RegistryStatus) -> list[str]:
    lines = [f"model {name}"]
    for label, version in (
        ("champion", current.champion),
        ("challenger", current.challenger),
        ("previous-champion", current.previous_champion),
    ):
        lines.append(f"  {label:<18} {_version_line(version)}")
    pending = ", ".join(v.version for v in current.pending_approval) or "none"
    lines.append(f"  pending approval   {pending}")
    if current.last_decision is not None:
        event = current.last_decision
        lines.append(f"  last decision      version {event.version} "
                     f"({event.occurred_at:%Y-%m-%d %H:%M} UTC): {event.summary}")  # fmt: skip
    if current.guard_finding:
        lines.append(f"  WARNING            {current.guard_finding}")
    return lines


def _version_line(version: ModelVersion | None) -> str:
    if version is None:
        return "none"
    tags = version.tags
    return (
        f"version {version.version}  F1 {tags.get('test_f1', '?')}  "
        f"ROC AUC {tags.get('test_roc_auc', '?')}  snapshot {tags.get('snapshot_id', '?')}  "
        f"approval {version.approval or '?'}"
        + (f" by {version.reviewer}" if version.reviewer else "")
        + f"  initialized from {tags.get('initialized_from', '?')}"
    )


def _status_document(name: str, current: RegistryStatus) -> dict[str, Any]:
    def described(version: ModelVersion | None) -> dict[str, Any] | None:
        return None if version is None else {**asdict(version), "tags": dict(version.tags)}

    return {
        "model": name,
        "champion": described(current.champion),
        "challenger": described(current.challenger),
        "previous_champion": described(current.previous_champion),
        "pending_approval": [described(v) for v in current.pending_approval],
        "last_decision": (
            _event_document(current.last_decision) if current.last_decision else None
        ),
        "warning": current.guard_finding,
    }


def _event_document(event: AuditEvent) -> dict[str, Any]:
    return asdict(event)
