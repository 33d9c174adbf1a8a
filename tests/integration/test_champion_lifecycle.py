"""The champion's lifecycle against a real `mlflow server` process (SQL backend) and the
audit trail in the label registry's database (SQLite and PostgreSQL): register, approve in
the UI's way (version tags) and from the terminal, promote, reject, rollback, and the alias
guard. Versions here are small real MLflow artifacts: what a version holds does not matter
to who may serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from registry.audit_trail import AuditTrailRepository
from registry.models import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    ModelRegistry,
    ModelRegistryUnavailable,
)
from registry.promotion import ChampionLifecycle, GateRecord, PromotionRefused
from tests.mlflow_server import MlflowServer

pytestmark = pytest.mark.integration


@pytest.fixture
def lifecycle(mlflow_server: MlflowServer, database_url: str) -> Iterator[ChampionLifecycle]:
    """A fresh registered model name on the shared server, with an empty audit trail."""
    name = f"melanoma-{uuid.uuid4().hex[:12]}"
    trail = AuditTrailRepository.open(database_url, migrate=True)
    yield ChampionLifecycle(ModelRegistry.at(mlflow_server.url, name), trail)
    trail.close()


def trained_model(server: MlflowServer) -> tuple[str, str]:
    """A run with a model folder artifact: (model source URI, run id)."""
    client = MlflowClient(server.url)  # not mlflow.set_tracking_uri: it leaks to subprocesses
    run = client.create_run("0")
    client.log_text(run.info.run_id, "stand-in for a logged classifier", "model/MLmodel")
    client.set_terminated(run.info.run_id)
    return f"{run.info.artifact_uri}/model", run.info.run_id


def gate_record(
    server: MlflowServer, *, promote: bool = True, needs_approval: bool = True
) -> GateRecord:
    source, run_id = trained_model(server)
    return GateRecord(
        model_uri=source,
        run_id=run_id,
        promote=promote,
        needs_approval=promote and needs_approval,
        summary="every rule passed" if promote else "failed roc_auc",
        tags={"snapshot_id": "snap-1", "test_f1": "0.612"},
        evidence={"decision": {"promote": promote}, "run_id": run_id},
    )


def aliases(lifecycle: ChampionLifecycle) -> dict[str, str]:
    return {alias: v.version for alias, v in lifecycle.models.aliases().items()}


def actions(lifecycle: ChampionLifecycle) -> list[tuple[str, str | None]]:
    return [(e.action, e.version) for e in lifecycle.trail.events(lifecycle.model_name)]


def test_first_model_waits_for_the_reviewer_then_serves(lifecycle, mlflow_server):
    outcome = lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
    version = lifecycle.models.version(outcome.version)
    assert version.approval == "pending"
    assert version.decision == "promote"
    assert version.tags["snapshot_id"] == "snap-1"
    assert aliases(lifecycle) == {CHALLENGER: "1"}
    assert [v.version for v in lifecycle.status().pending_approval] == ["1"]

    assert lifecycle.finalize("promotion-flow") == []  # pending: nothing moves
    with pytest.raises(PromotionRefused, match="awaits a reviewer's approval"):
        lifecycle.promote("1", "someone")

    # What a reviewer does in the MLflow UI: edit the version's tags.
    lifecycle.models.set_tags("1", {"approval": "approved", "reviewer": "dr-ruiz"})
    outcomes = lifecycle.finalize("promotion-flow")
    assert [o.message for o in outcomes] == ["version 1 is now the champion (was none)"]
    assert aliases(lifecycle) == {CHAMPION: "1"}
    assert actions(lifecycle) == [("decision", "1"), ("approval", "1"), ("promotion", "1")]
    approval = lifecycle.trail.events(lifecycle.model_name)[1]
    assert approval.actor == "dr-ruiz"
    assert approval.evidence["via"] == "mlflow-ui"
    assert lifecycle.status().pending_approval == ()


def test_an_approval_naming_no_reviewer_waits_for_the_reviewer_tag(lifecycle, mlflow_server):
    """Reviewers set the two tags one at a time, in either order; a run in between (the
    webhook receiver's, told of the first tag) must neither promote nor use up the review."""
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
    lifecycle.models.set_tags("1", {"approval": "approved"})
    waiting = lifecycle.finalize("mlflow-webhook")
    assert [o.message for o in waiting] == [
        "version 1 is approved but names no reviewer: set the tag reviewer to the reviewer's name"
    ]
    assert actions(lifecycle) == [("decision", "1")]
    assert CHAMPION not in aliases(lifecycle)

    lifecycle.models.set_tags("1", {"reviewer": "dr-ruiz"})
    promoted = lifecycle.finalize("mlflow-webhook")
    assert [o.message for o in promoted] == ["version 1 is now the champion (was none)"]
    assert actions(lifecycle) == [("decision", "1"), ("approval", "1"), ("promotion", "1")]


def test_an_approval_whose_promotion_failed_on_the_way_is_promoted_by_the_next_run(
    lifecycle, mlflow_server, monkeypatch
):
    """MLflow out of reach between the review's record and the promotion: the webhook's
    retry (or the schedule) promotes it, without recording the review twice."""
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
    lifecycle.models.set_tags("1", {"approval": "approved", "reviewer": "dr-ruiz"})
    promote = lifecycle.promote
    failures = [ModelRegistryUnavailable("MLflow registry unreachable: connection refused")]

    def unreachable_once(version: str, actor: str):
        if failures:
            raise failures.pop()
        return promote(version, actor)

    monkeypatch.setattr(lifecycle, "promote", unreachable_once)
    with pytest.raises(ModelRegistryUnavailable):
        lifecycle.finalize("mlflow-webhook")
    assert actions(lifecycle) == [("decision", "1"), ("approval", "1")]

    outcomes = lifecycle.finalize("mlflow-webhook")
    assert [o.message for o in outcomes] == ["version 1 is now the champion (was none)"]
    assert actions(lifecycle) == [("decision", "1"), ("approval", "1"), ("promotion", "1")]
    assert lifecycle.finalize("promotion-flow") == []  # settled


def test_gate_rejection_cannot_be_approved(lifecycle, mlflow_server):
    lifecycle.register_challenger(gate_record(mlflow_server, needs_approval=False), "pipeline")
    assert aliases(lifecycle) == {CHAMPION: "1"}  # promoted at once: no approval asked

    outcome = lifecycle.register_challenger(gate_record(mlflow_server, promote=False), "pipeline")
    assert outcome.message == "version 2 registered as challenger: rejected by the gate"
    assert lifecycle.models.version("2").approval == "not-required"
    with pytest.raises(PromotionRefused, match="the gate rejected version 2"):
        lifecycle.approve("2", "dr-ruiz")
    lifecycle.models.set_tags("2", {"approval": "approved", "reviewer": "dr-ruiz"})
    with pytest.raises(PromotionRefused, match="the gate rejected version 2"):
        lifecycle.promote("2", "someone")
    assert aliases(lifecycle) == {CHAMPION: "1", CHALLENGER: "2"}


def test_approve_promote_and_rollback_from_the_terminal(lifecycle, mlflow_server):
    for _ in range(3):
        registered = lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
        lifecycle.approve(registered.version or "", "dr-okafor")
    assert aliases(lifecycle) == {CHAMPION: "3", PREVIOUS_CHAMPION: "2"}
    assert lifecycle.models.version("3").reviewer == "dr-okafor"

    back = lifecycle.rollback("oncall", "sensitivity complaints from the clinic")
    assert back.message == "version 2 is the champion again (was 3)"
    assert aliases(lifecycle) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    assert "sensitivity complaints" in lifecycle.models.version("3").tags["rolled_back"]

    with pytest.raises(PromotionRefused, match="version 3 was rolled back"):
        lifecycle.promote("3", "someone")  # judged against 2, the champion again, yet refused
    lifecycle.models.set_alias(CHAMPION, "3")  # nor may a hand put it back
    lifecycle.guard("alias-guard")
    assert aliases(lifecycle) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}

    lifecycle.rollback("oncall", "again")
    assert aliases(lifecycle) == {CHAMPION: "1"}
    with pytest.raises(PromotionRefused, match="no previous champion"):
        lifecycle.rollback("oncall", "once more")
    rollbacks = [e for e in lifecycle.trail.events(lifecycle.model_name)
                 if e.action == "rollback"]  # fmt: skip
    assert [(e.actor, e.version, e.evidence["demoted"]) for e in rollbacks] == [
        ("oncall", "2", "3"),
        ("oncall", "1", "2"),
    ]


def test_reviewer_rejection_is_recorded_and_the_champion_stays(lifecycle, mlflow_server):
    lifecycle.register_challenger(gate_record(mlflow_server, needs_approval=False), "pipeline")
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
    lifecycle.reject("2", "dr-ruiz", "lesions on acral sites look worse")
    version = lifecycle.models.version("2")
    assert (version.approval, version.reviewer) == ("rejected", "dr-ruiz")
    with pytest.raises(PromotionRefused, match="rejected by dr-ruiz"):
        lifecycle.promote("2", "someone")
    assert lifecycle.finalize("promotion-flow") == []
    assert aliases(lifecycle)[CHAMPION] == "1"
    rejection = lifecycle.trail.events(lifecycle.model_name)[-1]
    assert (rejection.action, rejection.actor) == ("rejection", "dr-ruiz")
    assert "acral" in rejection.summary

    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")  # rejected in the UI
    lifecycle.models.set_tags("3", {"approval": "rejected", "reviewer": "dr-ruiz"})
    (outcome,) = lifecycle.finalize("promotion-flow")
    assert outcome.message == "version 3 rejected by dr-ruiz"
    assert aliases(lifecycle)[CHAMPION] == "1"


def test_a_stale_decision_must_be_evaluated_again(lifecycle, mlflow_server):
    lifecycle.register_challenger(gate_record(mlflow_server, needs_approval=False), "pipeline")
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")  # judged against 1
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")  # judged against 1
    lifecycle.approve("3", "dr-okafor")
    with pytest.raises(
        PromotionRefused, match="judged against champion 1, but the champion is now 3"
    ):
        lifecycle.approve("2", "dr-okafor")
    assert aliases(lifecycle)[CHAMPION] == "3"


def test_alias_guard_puts_a_hand_set_champion_back(lifecycle, mlflow_server):
    lifecycle.register_challenger(gate_record(mlflow_server, needs_approval=False), "pipeline")
    lifecycle.register_challenger(gate_record(mlflow_server, promote=False), "pipeline")
    lifecycle.models.set_alias(CHAMPION, "2")  # by hand, on a version the gate rejected
    assert lifecycle.status().guard_finding is not None

    corrected = lifecycle.guard("alias-guard")
    assert corrected is not None
    assert aliases(lifecycle)[CHAMPION] == "1"
    event = lifecycle.trail.events(lifecycle.model_name)[-1]
    assert event.action == "guard_correction"
    assert event.evidence == {"found": "2", "restored": "1"}
    assert lifecycle.guard("alias-guard") is None  # nothing more to correct

    lifecycle.models.set_alias(CHAMPION, None)  # removed by hand: restored too
    lifecycle.guard("alias-guard")
    assert aliases(lifecycle)[CHAMPION] == "1"


def test_alias_guard_accepts_a_hand_move_the_evidence_allows(lifecycle, mlflow_server):
    lifecycle.register_challenger(gate_record(mlflow_server, needs_approval=False), "pipeline")
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
    lifecycle.models.set_tags("2", {"approval": "approved", "reviewer": "dr-ruiz"})
    lifecycle.models.set_alias(CHAMPION, "2")  # the reviewer moved the alias in the UI too

    outcome = lifecycle.guard("alias-guard")
    assert outcome is not None and "accepted" in outcome.message
    assert aliases(lifecycle) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    assert actions(lifecycle)[-1] == ("promotion", "2")


class AliasMoveFails(ModelRegistry):
    """The registry connection drops right after the audit trail recorded a promotion."""

    def set_alias(self, alias: str, version: str | None) -> None:
        if alias == CHAMPION and version == "2":
            raise ConnectionError("MLflow went away")
        super().set_alias(alias, version)


def test_a_crash_between_the_trail_and_the_alias_is_completed_by_the_guard(
    lifecycle, mlflow_server
):
    lifecycle.register_challenger(gate_record(mlflow_server, needs_approval=False), "pipeline")
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
    flaky = ChampionLifecycle(
        AliasMoveFails(lifecycle.models.client, lifecycle.model_name), lifecycle.trail
    )
    with pytest.raises(ConnectionError):
        flaky.approve("2", "dr-ruiz")
    assert aliases(lifecycle)[CHAMPION] == "1"  # the alias did not move...
    assert lifecycle.expected_champion() == "2"  # ...but the promotion was recorded

    lifecycle.guard("alias-guard")
    assert aliases(lifecycle) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}


def test_only_versions_with_a_gate_decision_can_serve(lifecycle, mlflow_server):
    source, run_id = trained_model(mlflow_server)
    stray = lifecycle.models.register(source, run_id, {"decision": "promote"})
    with pytest.raises(PromotionRefused, match="no gate decision in the audit trail"):
        lifecycle.promote(stray.version, "someone")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_status_and_audit_commands(lifecycle, mlflow_server, database_url, tmp_path):
    lifecycle.register_challenger(gate_record(mlflow_server, needs_approval=False), "pipeline")
    lifecycle.register_challenger(gate_record(mlflow_server), "pipeline")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "CME_MODEL_NAME": lifecycle.model_name,
        "CME_DATABASE_URL": database_url,
        "CME_HOME": str(tmp_path / "home"),
        "CME_AUTO_MIGRATE": "false",
    }

    def cme(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cme", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    status = cme("status", "--format", "json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["champion"]["version"] == "1"
    assert document["challenger"]["version"] == "2"
    assert [v["version"] for v in document["pending_approval"]] == ["2"]
    assert document["last_decision"]["version"] == "2"

    approved = cme("approve", "2", "--reviewer", "dr-okafor")
    assert approved.returncode == 0, approved.stderr
    assert "version 2 is now the champion (was 1)" in approved.stdout
    refused = cme("approve", "7", "--reviewer", "dr-okafor")
    assert refused.returncode == 1
    assert "no gate decision" in refused.stderr

    trail = json.loads(cme("audit", "--format", "json").stdout)
    assert [(e["action"], e["version"], e["actor"]) for e in trail] == [
        ("decision", "1", "pipeline"),
        ("promotion", "1", "pipeline"),
        ("decision", "2", "pipeline"),
        ("approval", "2", "dr-okafor"),
        ("promotion", "2", "dr-okafor"),
    ]
    table = cme("audit").stdout
    assert "promotion" in table and "champion 1 -> 2" in table
    rolled = cme("rollback", "--reason", "drill", "--by", "oncall")
    assert "version 1 is the champion again (was 2)" in rolled.stdout
    assert "version 1" in cme("status").stdout.splitlines()[1]
