"""The weekly retrain's own steps, between the stages it chains: which labels are new since
the champion's snapshot and whether that is enough to retrain, validation as a stop, one
retrain at a time, and the week's outcome as its users read it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote

import pandas as pd

from pipelines.dataset.manifest import manifest_digest
from pipelines.errors import BadInput
from registry.run_leases import LeaseHeld, exclusive
from usecases import snapshots
from usecases.challenger_training import INIT_REASON_TAG, INITIALIZED_FROM_TAG
from usecases.params import Params
from usecases.platform import Platform

if TYPE_CHECKING:
    from pipelines.gate import Decision
    from pipelines.validation import ValidationReport
    from registry.promotion import ChampionLifecycle, Outcome
    from usecases.challenger_evaluation import Evaluation

RETRAIN_LEASE = "weekly-retrain"


class ValidationFailed(BadInput):
    """This week's labels failed validation: the retrain stops before training."""

    def __init__(self, report: ValidationReport) -> None:
        kept = [line for line in report.summary_lines() if not line.lstrip().startswith("ok ")]
        super().__init__("validation failed, nothing was trained:\n" + "\n".join(kept))
        self.report = report


@dataclass(frozen=True)
class LabelPull:
    """The labels a snapshot taken now would freeze, against those the champion learnt."""

    manifest: pd.DataFrame
    new_labels: int
    champion: str | None
    champion_snapshot: str | None
    already_evaluated: str | None = None
    """The version already trained on exactly these labels, if any."""

    def skip_reason(self, min_new_labels: int) -> str | None:
        """Why this week needs no retrain, or None when it does."""
        if self.already_evaluated is not None:
            return (
                "the labels have not changed since the last retrain, evaluated as version "
                f"{self.already_evaluated}"
            )
        if self.new_labels < min_new_labels:
            since = (
                f"the champion's snapshot {self.champion_snapshot} (version {self.champion})"
                if self.champion
                else "the start (no champion yet)"
            )
            return f"{self.new_labels} new labels since {since}; {min_new_labels} needed"
        return None


@dataclass(frozen=True)
class RetrainSummary:
    """One weekly retrain, as the flow returns it and the demo and backtest report it."""

    status: str  # skipped | rejected | awaiting approval | promoted
    message: str
    new_labels: int = 0
    snapshot_id: str | None = None
    run_id: str | None = None
    version: str | None = None
    champion: str | None = None
    reasons: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    initialized_from: str | None = None
    init_reason: str | None = None
    # Why a rejected challenger was rejected, in a reviewer's words (one per failed rule).
    explanations: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        head = f"{self.status}: {self.message}"
        start = (
            [f"  the challenger started from {self.initialized_from} ({self.init_reason})"]
            if self.initialized_from
            else []
        )
        why = [f"  why, in plain words: {sentence}" for sentence in self.explanations]
        return [head, *start, *(f"  {reason}" for reason in self.reasons), *why]

    def markdown(self, pages: MlflowPages | None = None) -> str:
        """The week's outcome for the Prefect UI: what arrived, what was decided and why,
        and where the evidence is."""
        facts = [
            f"- new labels since the champion's snapshot: {self.new_labels}",
            *([f"- snapshot: `{self.snapshot_id}`"] if self.snapshot_id else []),
            *([f"- challenger: version {self.version}"] if self.version else []),
            f"- champion now: {f'version {self.champion}' if self.champion else 'none'}",
        ]
        if self.initialized_from:
            facts.append(f"- started from {self.initialized_from} ({self.init_reason})")
        lines = [f"# Weekly retrain: {self.status}", "", self.message, "", *facts]
        if self.reasons:
            lines += ["", "## The gate's decision", "", *(f"- `{r}`" for r in self.reasons)]
        if self.explanations:
            lines += ["", "In plain words:", "", *(f"- {s}" for s in self.explanations)]
        links = pages.links(self.version, self.run_id) if pages else []
        if links:
            lines += ["", "## Evidence", "", *links]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MlflowPages:
    """Links into the MLflow UI of an installation whose tracking server speaks HTTP."""

    base_url: str
    model_name: str

    @classmethod
    def of(cls, tracking_uri: str, model_name: str) -> MlflowPages | None:
        if not tracking_uri.startswith(("http://", "https://")):
            return None  # a file or database store has no UI to link to
        return cls(tracking_uri.rstrip("/"), model_name)

    def links(self, version: str | None, run_id: str | None) -> list[str]:
        links = []
        if version:
            page = f"{self.base_url}/#/models/{quote(self.model_name, safe='')}/versions/{version}"
            links.append(f"- [version {version} in the MLflow UI]({page})")
        if run_id:
            links.append(f"- [the run: report, plots, lineage]({self.base_url}/#/runs/{run_id})")
        return links


def pull_new_labels(platform: Platform, params: Params) -> LabelPull:
    """The current labels from the policy's sources, and how many of them the champion has
    not learnt (new images, or images whose diagnosis changed)."""
    manifest = snapshots.current_manifest(platform, params)
    champions = platform.champions()
    champion = champions.expected_champion()
    snapshot_id = champions.models.version(champion).tags.get("snapshot_id") if champion else None
    learnt = snapshots.snapshot_manifest(platform, snapshot_id) if snapshot_id else None
    return LabelPull(
        manifest=manifest,
        new_labels=count_new_labels(manifest, learnt),
        champion=champion,
        champion_snapshot=snapshot_id,
        already_evaluated=_version_trained_on(platform, champions, manifest),
    )


def count_new_labels(current: pd.DataFrame, learnt: pd.DataFrame | None) -> int:
    """Images of `current` absent from `learnt` or diagnosed differently there."""
    if learnt is None:
        return len(current)
    earlier = dict(zip(learnt["image_id"], learnt["dx"], strict=True))
    now = zip(current["image_id"], current["dx"], strict=True)
    return sum(1 for image_id, dx in now if earlier.get(image_id) != dx)


def _version_trained_on(
    platform: Platform, champions: ChampionLifecycle, manifest: pd.DataFrame
) -> str | None:
    snapshots = platform.label_registry().snapshots()
    if not snapshots or snapshots[-1].manifest_sha256 != manifest_digest(manifest):
        return None
    latest = snapshots[-1].snapshot_id
    versions = champions.models.versions()
    return next((v.version for v in versions if v.tags.get("snapshot_id") == latest), None)


def validate_new_labels(platform: Platform, params: Params, pull: LabelPull) -> ValidationReport:
    """Great Expectations over this week's manifest; the report is kept either way."""
    report = snapshots.validate(
        platform, params, pull.manifest, "the labels of this week's retrain"
    )
    if not report.success:
        raise ValidationFailed(report)
    return report


@contextmanager
def one_retrain_at_a_time(platform: Platform, params: Params, holder: str) -> Iterator[str | None]:
    """Hold the retrain lease for the block; yields None, or, when another retrain holds
    it, why this one must not run (the block then runs without the lease)."""
    ttl = timedelta(minutes=params.retrain.lease_minutes)
    with ExitStack() as stack:
        try:
            stack.enter_context(exclusive(platform.run_leases(), RETRAIN_LEASE, holder, ttl))
        except LeaseHeld as held:
            yield f"another retrain is running: {held}"
            return
        yield None


def lease_holder(flow_run_id: str | None) -> str:
    run = f"flow run {flow_run_id}" if flow_run_id else "a retrain"
    return f"{run} on {socket.gethostname()} (pid {os.getpid()})"


def skipped(reason: str, pull: LabelPull | None = None) -> RetrainSummary:
    return RetrainSummary(
        status="skipped",
        message=reason,
        new_labels=pull.new_labels if pull else 0,
        champion=pull.champion if pull else None,
    )


def concluded(
    platform: Platform,
    pull: LabelPull,
    snapshot_id: str,
    evaluation: Evaluation,
    decision: Decision,
    registration: Outcome,
) -> RetrainSummary:
    """The week's outcome once its challenger was judged and registered."""
    champion = platform.champions().expected_champion()
    run_tags = evaluation.run.data.tags
    if registration.version is not None and registration.version == champion:
        status = "promoted"
    elif decision.promote:
        status = "awaiting approval"
    else:
        status = "rejected"
    return RetrainSummary(
        status=status,
        message=registration.message,
        new_labels=pull.new_labels,
        snapshot_id=snapshot_id,
        run_id=evaluation.run_id,
        version=registration.version,
        champion=champion,
        reasons=tuple(reason.line() for reason in decision.reasons),
        explanations=decision.explanations(),
        metrics=evaluation.report.headline(),
        initialized_from=run_tags.get(INITIALIZED_FROM_TAG),
        init_reason=run_tags.get(INIT_REASON_TAG),
    )
