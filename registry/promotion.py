"""Who serves: the champion's lifecycle across the two systems of record.

The MLflow registry holds versions, aliases and the tags reviewers edit; the label
registry's database holds the append-only audit trail. The trail is the truth about the
champion: every promotion and rollback records `champion_after` *before* the alias moves,
so a crash between the two is completed by the alias guard, and an alias moved by hand to a
version that never earned it is put back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipelines.errors import Refused
from registry.audit_trail import AuditAction, AuditEvent
from registry.models import (
    APPROVAL,
    APPROVED,
    CHALLENGER,
    CHAMPION,
    DECISION,
    MODEL_SUMMARY,
    NOT_REQUIRED,
    PENDING,
    PREVIOUS_CHAMPION,
    REJECTED,
    REVIEWER,
    ModelRegistry,
    ModelRegistryError,
    ModelVersion,
)

log = logging.getLogger(__name__)

GUARD = "alias-guard"
CHAMPION_CHANGES = ("promotion", "rollback")


def _when(event: AuditEvent) -> str:
    return event.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _done(event: AuditEvent) -> str:
    return f"{event.action} by {event.actor}: {event.summary}"


class PromotionRefused(ModelRegistryError, Refused):
    """The evidence does not allow what was asked; the message says what is missing."""


class AuditTrail(Protocol):
    """What the lifecycle needs of the audit trail (`registry.audit_trail`): a model's
    events, oldest first, and appending one."""

    def events(self, model_name: str) -> list[AuditEvent]: ...

    def record(self, event: AuditEvent) -> AuditEvent: ...


@dataclass(frozen=True)
class GateRecord:
    """What `cme evaluate` hands over for registration: the model, the gate's verdict and
    the evidence behind it (headline metrics, lineage, policy, report location)."""

    model_uri: str
    run_id: str
    promote: bool
    needs_approval: bool
    summary: str
    tags: Mapping[str, str]
    evidence: Mapping[str, Any]
    description: str = ""
    """Markdown for the version page: the decision, the headline, the lineage, links."""


@dataclass(frozen=True)
class Outcome:
    """What an action did, in one line for the terminal, with the audit event it wrote."""

    message: str
    version: str | None = None
    event: AuditEvent | None = None


@dataclass(frozen=True)
class RegistryStatus:
    champion: ModelVersion | None
    challenger: ModelVersion | None
    previous_champion: ModelVersion | None
    pending_approval: tuple[ModelVersion, ...]
    last_decision: AuditEvent | None
    guard_finding: str | None


class ChampionLifecycle:
    """Registration, approval, rejection, promotion, rollback and the alias guard."""

    def __init__(
        self,
        models: ModelRegistry,
        trail: AuditTrail,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.models = models
        self.trail = trail
        self._clock = clock

    @property
    def model_name(self) -> str:
        return self.models.model_name

    # -- registration ----------------------------------------------------------------------

    def register_challenger(self, record: GateRecord, actor: str) -> Outcome:
        """A new version with alias `challenger`, its decision in the audit trail; promoted
        at once when it passed and the policy asks no approval.

        Safe to run again for the same training run (a retry after a lost connection): the
        version registered before is completed, never registered twice."""
        self.guard(GUARD)
        version = self._version_of_run(record.run_id) or self._new_version(record)
        event = self._decision_if_recorded(version.version) or self._record(
            "decision",
            actor,
            version.version,
            f"{version.decision}: {record.summary}",
            {**record.evidence, "champion_at_decision": self.expected_champion(),
             "tags": version.tags},
        )  # fmt: skip
        self.models.set_alias(CHALLENGER, version.version)
        if record.promote and not record.needs_approval:
            return self.promote(version.version, actor)
        verdict = "awaiting approval" if record.promote else "rejected by the gate"
        return Outcome(f"version {version.version} registered as challenger: {verdict}",
                       version.version, event)  # fmt: skip

    def _new_version(self, record: GateRecord) -> ModelVersion:
        tags = {
            **record.tags,
            DECISION: "promote" if record.promote else "reject",
            APPROVAL: PENDING if record.needs_approval else NOT_REQUIRED,
            "champion_at_decision": self.expected_champion() or "none",
        }
        return self.models.register(record.model_uri, record.run_id, tags, record.description)

    def _version_of_run(self, run_id: str) -> ModelVersion | None:
        return next((v for v in self.models.versions() if v.run_id == run_id), None)

    def _decision_if_recorded(self, version: str) -> AuditEvent | None:
        events = self.trail.events(self.model_name)
        return next((e for e in events if e.action == "decision" and e.version == version), None)

    # -- reviewers -------------------------------------------------------------------------

    def approve(self, version: str, reviewer: str) -> Outcome:
        """A reviewer's approval from the terminal; the version is then promoted."""
        self._decision_allowing_review(version)
        # Recorded before the tags are set: a webhook receiver told of the tags then finds the
        # review done, and does not record it a second time as one made in the MLflow UI.
        self._record("approval", reviewer, version, f"approved by {reviewer}", {"via": "cme"})
        self.models.set_tags(version, {APPROVAL: APPROVED, REVIEWER: reviewer})
        return self.promote(version, reviewer)

    def reject(self, version: str, reviewer: str, reason: str) -> Outcome:
        self._decision_allowing_review(version)
        if version == self.expected_champion():
            raise PromotionRefused(f"version {version} is the champion: use `cme rollback`")
        event = self._record(  # before the tags, as in `approve`
            "rejection", reviewer, version, f"rejected by {reviewer}: {reason}", {"via": "cme"}
        )
        self.models.set_tags(
            version, {APPROVAL: REJECTED, REVIEWER: reviewer, "rejection_reason": reason}
        )
        return Outcome(f"version {version} rejected by {reviewer}", version, event)

    # -- promotion -------------------------------------------------------------------------

    def finalize(self, actor: str) -> list[Outcome]:
        """What the promotion flow runs: the alias guard, then every challenger a reviewer
        approved or rejected in the MLflow UI since it was registered."""
        outcomes: list[Outcome] = []
        corrected = self.guard(actor)
        if corrected is not None:
            outcomes.append(corrected)
        for version in self.pending_approval():
            if version.approval == APPROVED and not version.reviewer:
                # Not recorded yet: the reviewer may be typing the `reviewer` tag right now.
                message = (f"version {version.version} is approved but names no reviewer: "
                           "set the tag reviewer to the reviewer's name")  # fmt: skip
                outcomes.append(Outcome(message, version.version))
            elif version.approval == APPROVED:
                if version.version not in self._approved():
                    self._record_ui_review(version, "approval")
                outcomes.append(self._promote_or_explain(version.version, actor))
            elif version.approval == REJECTED:
                event = self._record_ui_review(version, "rejection")
                reviewer = version.reviewer or "a reviewer"
                message = f"version {version.version} rejected by {reviewer}"
                outcomes.append(Outcome(message, version.version, event))
        return outcomes

    def _promote_or_explain(self, version: str, actor: str) -> Outcome:
        try:
            return self.promote(version, actor)
        except PromotionRefused as refusal:
            return Outcome(f"version {version} approved but not promoted: {refusal}", version)

    def promote(self, version: str, actor: str) -> Outcome:
        """Check the evidence again and make `version` the champion."""
        decision = self._decision_event(version)
        current = self.expected_champion()
        if version == current:
            return Outcome(f"version {version} is already the champion", version)
        self._check_evidence(self.models.version(version), decision, current)
        event = self._record(
            "promotion",
            actor,
            version,
            f"champion {current or 'none'} -> {version}",
            {"previous_champion": current, "decision_event": decision.event_id},
            champion_after=version,
        )
        self._apply_aliases(version, current)
        return Outcome(f"version {version} is now the champion (was {current or 'none'})",
                       version, event)  # fmt: skip

    def rollback(self, actor: str, reason: str) -> Outcome:
        """Return `champion` to `previous-champion`."""
        self.guard(GUARD)
        current = self.expected_champion()
        previous = self._previous_of(current)
        if current is None or previous is None:
            raise PromotionRefused("no previous champion to return to")
        before_previous = self._previous_of(previous, before=current)
        event = self._record(
            "rollback",
            actor,
            previous,
            f"champion {current} -> {previous}: {reason}",
            {"demoted": current, "previous_champion": before_previous, "reason": reason},
            champion_after=previous,
        )
        self.models.set_tags(current, {"rolled_back": f"{self._clock().isoformat()} {reason}"})
        self._apply_aliases(previous, before_previous)
        return Outcome(f"version {previous} is the champion again (was {current})",
                       previous, event)  # fmt: skip

    # -- the alias guard -------------------------------------------------------------------

    def guard(self, actor: str) -> Outcome | None:
        """Put `champion` back where the audit trail says it is, unless it was moved by hand
        to a version that passed the gate and the review: that move is accepted and
        recorded as a promotion."""
        expected = self.expected_champion()
        found = self.models.aliased(CHAMPION)
        found_version = found.version if found is not None else None
        if found_version == expected:
            self._settle_previous_alias(expected)
            return None
        if found_version is not None and self._is_valid_candidate(found_version, expected):
            outcome = self.promote(found_version, f"{actor} (alias set in MLflow)")
            return Outcome(f"champion alias set by hand on {found_version} accepted: "
                           f"{outcome.message}", found_version, outcome.event)  # fmt: skip
        event = self._record(
            "guard_correction",
            actor,
            found_version,
            f"champion alias found on {found_version or 'nothing'}, put back to "
            f"{expected or 'nothing'}",
            {"found": found_version, "restored": expected},
            champion_after=expected,
        )
        self._apply_aliases(expected, self._previous_of(expected))
        return Outcome(f"alias guard: {event.summary}", expected, event)

    # -- reading ---------------------------------------------------------------------------

    def expected_champion(self) -> str | None:
        """The champion according to the audit trail."""
        last = self._last_champion_change()
        return last.champion_after if last is not None else None

    def may_serve(self, version: str) -> bool:
        """Whether `version` is the champion of record, or one the alias guard would accept
        as champion (passed the gate, and the review where the policy asks for one)."""
        expected = self.expected_champion()
        return version == expected or self._is_valid_candidate(version, expected)

    def pending_approval(self) -> list[ModelVersion]:
        """Versions the gate passed that await (or just got) a reviewer's verdict, or were
        approved and not promoted yet (a promotion that failed on the way is tried again)."""
        reviewed = {
            event.version
            for event in self.trail.events(self.model_name)
            if event.action in ("rejection", "promotion")
        }
        return [
            version
            for version in self.models.versions()
            if version.decision == "promote"
            and version.tags.get("champion_at_decision") is not None
            and version.version not in reviewed
            and version.approval in (PENDING, APPROVED, REJECTED)
        ]

    def status(self) -> RegistryStatus:
        aliases = self.models.aliases()
        expected = self.expected_champion()
        found = aliases.get(CHAMPION)
        finding = None
        if (found.version if found else None) != expected:
            finding = (
                f"champion alias is on {found.version if found else 'nothing'} but the audit "
                f"trail says {expected or 'nothing'}: `cme promote` will settle it"
            )
        decisions = [e for e in self.trail.events(self.model_name) if e.action == "decision"]
        return RegistryStatus(
            champion=found,
            challenger=aliases.get(CHALLENGER),
            previous_champion=aliases.get(PREVIOUS_CHAMPION),
            pending_approval=tuple(v for v in self.pending_approval() if v.approval == PENDING),
            last_decision=decisions[-1] if decisions else None,
            guard_finding=finding,
        )

    # -- private ---------------------------------------------------------------------------

    def _check_evidence(
        self, version: ModelVersion, decision: AuditEvent, current: str | None
    ) -> None:
        verdict = decision.evidence.get("tags", {}).get(DECISION)
        if verdict != "promote":
            raise PromotionRefused(
                f"the gate rejected version {version.version}: {decision.summary}"
            )
        if version.decision != verdict:
            raise PromotionRefused(
                f"version {version.version}'s decision tag reads {version.decision!r} but the "
                f"audit trail recorded {verdict!r}: the tags were edited, evaluate again"
            )
        if version.approval == REJECTED:
            raise PromotionRefused(
                f"version {version.version} was rejected by {version.reviewer or 'a reviewer'}"
            )
        if self._was_rolled_back(version.version):
            raise PromotionRefused(
                f"version {version.version} was rolled back: it does not serve again; "
                "evaluate a new challenger"
            )
        at_decision = decision.evidence.get("champion_at_decision")
        if at_decision != current:
            raise PromotionRefused(
                f"version {version.version} was judged against champion {at_decision or 'none'}"
                f", but the champion is now {current or 'none'}: evaluate it again"
            )
        required = decision.evidence.get("tags", {}).get(APPROVAL) == PENDING
        if required and version.approval != APPROVED:
            raise PromotionRefused(
                f"version {version.version} awaits a reviewer's approval (approval="
                f"{version.approval}): set the tag approval=approved in the MLflow UI, or "
                f"`cme approve {version.version} --reviewer NAME`"
            )
        if required and not version.reviewer:
            raise PromotionRefused(
                f"version {version.version} is approved but names no reviewer: set the tag "
                "reviewer to the reviewer's name"
            )

    def _approved(self) -> set[str | None]:
        events = self.trail.events(self.model_name)
        return {event.version for event in events if event.action == "approval"}

    def _was_rolled_back(self, version: str) -> bool:
        return any(
            event.action == "rollback" and event.evidence.get("demoted") == version
            for event in self.trail.events(self.model_name)
        )

    def _is_valid_candidate(self, version: str, current: str | None) -> bool:
        try:
            self._check_evidence(self.models.version(version), self._decision_event(version),
                                 current)  # fmt: skip
        except PromotionRefused:
            return False
        return True

    def _decision_allowing_review(self, version: str) -> AuditEvent:
        decision = self._decision_event(version)
        if decision.evidence.get("tags", {}).get(DECISION) != "promote":
            raise PromotionRefused(
                f"the gate rejected version {version}; there is nothing to review "
                f"({decision.summary})"
            )
        return decision

    def _decision_event(self, version: str) -> AuditEvent:
        event = self._decision_if_recorded(version)
        if event is not None:
            return event
        raise PromotionRefused(
            f"version {version} of {self.model_name} has no gate decision in the audit trail: "
            "only versions registered by `cme evaluate` can serve"
        )

    def _record_ui_review(self, version: ModelVersion, action: AuditAction) -> AuditEvent:
        reviewer = version.reviewer or "unnamed reviewer"
        verb = "approved" if action == "approval" else "rejected"
        return self._record(action, reviewer, version.version, f"{verb} by {reviewer} in MLflow",
                            {"via": "mlflow-ui", "tags": dict(version.tags)})  # fmt: skip

    def _last_champion_change(self) -> AuditEvent | None:
        for event in reversed(self.trail.events(self.model_name)):
            if event.action in CHAMPION_CHANGES:
                return event
        return None

    def _previous_of(self, champion: str | None, before: str | None = None) -> str | None:
        """The champion that `champion` replaced, as the audit trail remembers it."""
        if champion is None:
            return None
        for event in reversed(self.trail.events(self.model_name)):
            if event.action in CHAMPION_CHANGES and event.champion_after == champion:
                previous = event.evidence.get("previous_champion")
                return str(previous) if previous and previous != before else None
        return None

    def _settle_previous_alias(self, champion: str | None) -> None:
        previous = self._previous_of(champion)
        found = self.models.aliased(PREVIOUS_CHAMPION)
        if (found.version if found else None) != previous:
            self.models.set_alias(PREVIOUS_CHAMPION, previous)

    def _apply_aliases(self, champion: str | None, previous: str | None) -> None:
        self.models.set_alias(CHAMPION, champion)
        self.models.set_alias(PREVIOUS_CHAMPION, previous)
        challenger = self.models.aliased(CHALLENGER)
        if challenger is not None and challenger.version == champion:
            self.models.set_alias(CHALLENGER, None)  # it serves now; no longer a challenger

    def _record(
        self,
        action: AuditAction,
        actor: str,
        version: str | None,
        summary: str,
        evidence: Mapping[str, Any],
        champion_after: str | None = None,
    ) -> AuditEvent:
        if action not in (*CHAMPION_CHANGES, "guard_correction"):
            champion_after = self.expected_champion()  # who served when it happened
        event = self.trail.record(
            AuditEvent(
                occurred_at=self._clock(),
                actor=actor,
                action=action,
                model_name=self.model_name,
                version=version,
                summary=summary,
                evidence=json.loads(json.dumps(evidence, default=str)),
                champion_after=champion_after,
            )
        )
        self._show_on_the_model_pages(event)
        return event

    def _show_on_the_model_pages(self, event: AuditEvent) -> None:
        """The event on the MLflow UI's pages: a history line on its version's page, and,
        when the champion or the policy may have changed, the model page's summary. The
        audit trail is the record: a registry that fails here costs the page's update, not
        the action (the next event writes the page again)."""
        try:
            if event.version is not None:
                self.models.add_to_history(event.version, f"{_when(event)}, {_done(event)}")
            if event.action in (*CHAMPION_CHANGES, "decision"):
                self.models.describe_model(self._model_page())
        except ModelRegistryError as error:
            log.warning("the MLflow pages miss %s (%s)", _done(event), error)

    def _model_page(self) -> str:
        """The champion of record and the gate policy the last decision was taken under."""
        change = self._last_champion_change()
        champion = (
            f"version {change.champion_after}, since {_when(change)} ({_done(change)})"
            if change
            else "none yet"
        )
        events = self.trail.events(self.model_name)
        decision = next((e for e in reversed(events) if e.action == "decision"), None)
        policy = decision.evidence.get("policy", {}) if decision else {}
        lines = [MODEL_SUMMARY, "", "### Champion", "", champion]
        if policy:
            lines += ["", "### The gate policy of the last decision", ""]
            lines += [f"- {key}: `{value}`" for key, value in policy.items()]
        return "\n".join(lines) + "\n"
