"""The promotion gate: every rule, every statistical mode, the first model and approval."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scipy import stats

from pipelines.evaluation.metrics import BinaryMetrics, ConfusionMatrix
from pipelines.evaluation.report import ChampionComparison, ModelEvaluation
from pipelines.evaluation.stats import AucComparison, F1Comparison, PartialAucComparison
from pipelines.evaluation.subgroups import SubgroupRow
from pipelines.gate import Decision, GatePolicy, MetricRule, Mode, decide


def metrics(
    sensitivity: float = 0.85,
    f1: float = 0.6,
    roc_auc: float | None = 0.88,
    specificity: float = 0.9,
) -> BinaryMetrics:
    melanoma, other = 100, 900
    found, cleared = round(sensitivity * melanoma), round(specificity * other)
    return BinaryMetrics(
        threshold=0.5, images=1000, melanoma=melanoma, accuracy=0.9, precision=0.5,
        sensitivity=sensitivity, specificity=specificity, f1=f1, roc_auc=roc_auc, brier=0.1,
        confusion=ConfusionMatrix(cleared, other - cleared, melanoma - found, found),
        partial_roc_auc=0.1,
    )  # fmt: skip


def group(
    name: str, sensitivity: float, roc_auc: float = 0.85, *, small: bool = False
) -> SubgroupRow:
    return SubgroupRow(
        attribute="sex", group=name, images=400, melanoma=40, sensitivity=sensitivity,
        specificity=0.9, f1=0.6, roc_auc=roc_auc, small=small,
    )  # fmt: skip


def evaluation(
    role: str, subgroups: tuple[SubgroupRow, ...] = (), **values: float
) -> ModelEvaluation:
    return ModelEvaluation(role, f"models:/{role}", None, metrics(**values), subgroups)


def auc(difference: float, standard_error: float = 0.01) -> AucComparison:
    z = difference / standard_error
    return AucComparison(
        challenger_auc=0.85 + difference, champion_auc=0.85, difference=difference,
        standard_error=standard_error, z=z, p_value=float(2 * stats.norm.sf(abs(z))),
        p_superiority=float(stats.norm.sf(z)), ci_low=difference - 1.96 * standard_error,
        ci_high=difference + 1.96 * standard_error, confidence=0.95,
    )  # fmt: skip


def f1(difference: float, lower_bound: float, alpha: float = 0.05) -> F1Comparison:
    return F1Comparison(
        challenger_f1=0.6 + difference, champion_f1=0.6, difference=difference,
        ci_low=lower_bound - 0.01, ci_high=difference + 0.05, confidence=0.95, alpha=alpha,
        lower_bound=lower_bound, p_not_better=0.3, iterations=2000, resampled="lesion",
    )  # fmt: skip


def partial(difference: float, lower_bound: float, alpha: float = 0.05) -> PartialAucComparison:
    return PartialAucComparison(
        challenger_partial_auc=0.1 + difference, champion_partial_auc=0.1,
        difference=difference, ci_low=lower_bound - 0.002, ci_high=difference + 0.01,
        confidence=0.95, alpha=alpha, lower_bound=lower_bound, p_not_better=0.2,
        iterations=2000, resampled="lesion",
    )  # fmt: skip


def versus(
    auc_difference: float = 0.04,
    f1_difference: float = 0.03,
    f1_lower: float = -0.01,
    champion_groups: tuple[SubgroupRow, ...] = (),
) -> ChampionComparison:
    champion = evaluation("champion", champion_groups)
    return ChampionComparison(
        champion, auc(auc_difference), f1(f1_difference, f1_lower), partial(0.01, 0.002)
    )


def reason(decision: Decision, rule: str) -> bool:
    (found,) = [r for r in decision.reasons if r.rule == rule]
    return found.passed


def test_a_clearly_better_challenger_is_promoted_pending_approval():
    decision = decide(evaluation("challenger"), versus(), GatePolicy())
    assert decision.promote
    assert decision.needs_approval
    assert [r.rule for r in decision.reasons] == [
        "sensitivity_floor", "specificity_floor", "roc_auc", "f1", "subgroups",
    ]  # fmt: skip
    assert all(r.passed and r.detail for r in decision.reasons)


def test_no_approval_needed_when_the_policy_says_so():
    decision = decide(evaluation("challenger"), versus(), GatePolicy(approval_required=False))
    assert decision.promote and not decision.needs_approval


def test_a_rejected_challenger_never_needs_approval():
    decision = decide(evaluation("challenger", sensitivity=0.5), versus(), GatePolicy())
    assert not decision.promote and not decision.needs_approval
    assert not reason(decision, "sensitivity_floor")
    assert "0.500" in decision.failed[0].detail and "0.800" in decision.failed[0].detail


@pytest.mark.parametrize(
    ("mode", "difference", "standard_error", "promoted"),
    [
        (Mode.point, 0.001, 0.05, True),  # higher is enough
        (Mode.point, -0.001, 0.0001, False),
        (Mode.superiority, 0.01, 0.01, False),  # z = 1 < 1.645
        (Mode.superiority, 0.02, 0.01, True),  # z = 2 > 1.645
        (Mode.non_inferiority, 0.001, 0.01, True),  # bound -0.0154 > -0.02
        (Mode.non_inferiority, 0.001, 0.02, False),  # bound -0.032 < -0.02
        (Mode.non_inferiority, -0.001, 0.0001, False),  # must still be higher
    ],
)
def test_roc_auc_modes(mode, difference, standard_error, promoted):
    policy = GatePolicy(roc_auc=MetricRule(mode, 0.02 if mode is Mode.non_inferiority else 0))
    comparison = replace(versus(), auc=auc(difference, standard_error))
    decision = decide(evaluation("challenger"), comparison, policy)
    assert reason(decision, "roc_auc") is promoted
    assert decision.promote is promoted


def test_the_default_policy_is_the_one_the_simulation_chose():
    """bench/gate_simulation.py (docs/results.md): both metrics higher, and neither
    plausibly worse by more than 0.02 at one-sided 95%; the partial ROC AUC reported."""
    policy = GatePolicy()
    assert policy.roc_auc == MetricRule(Mode.non_inferiority, 0.02)
    assert policy.f1 == MetricRule(Mode.non_inferiority, 0.02)
    assert policy.alpha == 0.05
    assert policy.partial_roc_auc is None
    assert (policy.sensitivity_floor, policy.specificity_floor) == (0.80, 0.50)


@pytest.mark.parametrize(
    ("difference", "standard_error", "promoted"),
    [
        (0.010, 0.016, True),  # HAM10000's test set: bound 0.010 - 1.645 * 0.016 = -0.0163
        (0.003, 0.016, False),  # bound -0.0233: plausibly worse by more than 0.02
        (0.003, 0.010, True),  # the same gain measured more tightly: bound -0.0134
        (-0.001, 0.0001, False),  # lower is never enough
    ],
)
def test_default_roc_auc_rule_by_hand(difference, standard_error, promoted):
    comparison = replace(versus(), auc=auc(difference, standard_error))
    decision = decide(evaluation("challenger"), comparison, GatePolicy())
    assert reason(decision, "roc_auc") is promoted
    superiority = GatePolicy(roc_auc=MetricRule(Mode.superiority))  # the earlier default
    assert not reason(decide(evaluation("challenger"), comparison, superiority), "roc_auc")


def test_superiority_margin_raises_the_bar():
    comparison = replace(versus(), auc=auc(0.03, 0.01))  # one-sided bound 0.0136
    assert decide(evaluation("challenger"), comparison, GatePolicy()).promote
    stricter = GatePolicy(roc_auc=MetricRule(Mode.superiority, 0.02))
    assert not decide(evaluation("challenger"), comparison, stricter).promote


@pytest.mark.parametrize(
    ("mode", "difference", "lower", "promoted"),
    [
        (Mode.point, 0.01, -0.2, True),
        (Mode.point, 0.0, 0.0, False),  # a tie is not a win
        (Mode.non_inferiority, 0.01, -0.015, True),
        (Mode.non_inferiority, 0.01, -0.03, False),
        (Mode.superiority, 0.03, 0.001, True),
        (Mode.superiority, 0.03, -0.001, False),
    ],
)
def test_f1_modes(mode, difference, lower, promoted):
    policy = GatePolicy(f1=MetricRule(mode, 0.02 if mode is Mode.non_inferiority else 0))
    comparison = replace(versus(), f1=f1(difference, lower))
    assert reason(decide(evaluation("challenger"), comparison, policy), "f1") is promoted


def test_f1_bound_taken_at_another_alpha_is_not_trusted():
    comparison = replace(versus(), f1=f1(0.03, 0.01, alpha=0.10))
    decision = decide(evaluation("challenger"), comparison, GatePolicy(alpha=0.05))
    assert not reason(decision, "f1")
    assert "evaluate again" in decision.failed[0].detail


def test_undefined_roc_auc_fails_the_rule():
    comparison = replace(versus(), auc=None)
    assert not reason(decide(evaluation("challenger"), comparison, GatePolicy()), "roc_auc")


def test_subgroup_drop_beyond_the_limit_blocks_promotion():
    before = (group("female", 0.90), group("male", 0.90))
    after = (group("female", 0.91), group("male", 0.70))  # male sensitivity drops 0.20
    decision = decide(evaluation("challenger", after), versus(champion_groups=before), GatePolicy())
    assert not reason(decision, "subgroups")
    assert "sex=male" in decision.failed[0].detail
    lenient = GatePolicy(max_subgroup_drop=0.25)
    assert decide(evaluation("challenger", after), versus(champion_groups=before), lenient).promote


def test_small_subgroups_are_reported_but_not_judged():
    before = (group("female", 0.90), group("unknown", 0.90, small=True))
    after = (group("female", 0.90), group("unknown", 0.20, small=True))
    decision = decide(evaluation("challenger", after), versus(champion_groups=before), GatePolicy())
    assert reason(decision, "subgroups")
    assert "1 small group(s) not judged" in decision.reasons[-1].detail


def test_subgroup_metrics_are_a_policy_choice():
    before = (group("female", 0.90, roc_auc=0.90),)
    after = (group("female", 0.90, roc_auc=0.70),)  # ROC AUC drops 0.2, sensitivity holds
    comparison = versus(champion_groups=before)
    assert not decide(evaluation("challenger", after), comparison, GatePolicy()).promote
    only_sensitivity = GatePolicy(subgroup_metrics=("sensitivity",))
    assert decide(evaluation("challenger", after), comparison, only_sensitivity).promote


@pytest.mark.parametrize(
    ("roc_auc", "f1_value", "promoted"),
    [(0.80, 0.5, True), (0.70, 0.5, False), (0.80, 0.3, False), (None, 0.5, False)],
)
def test_first_model_needs_only_the_absolute_floors(roc_auc, f1_value, promoted):
    challenger = evaluation("challenger", roc_auc=roc_auc, f1=f1_value)
    decision = decide(challenger, None, GatePolicy())
    assert decision.promote is promoted
    rules = {r.rule for r in decision.reasons}
    assert rules == {
        "sensitivity_floor", "specificity_floor", "first_model_roc_auc", "first_model_f1",
    }  # fmt: skip


def test_decision_round_trips_through_json_ready_dicts():
    decision = decide(evaluation("challenger"), versus(), GatePolicy())
    assert Decision.from_dict(decision.to_dict()) == decision
    assert decision.lines()[0] == "decision: promote, awaiting a reviewer's approval"


def test_policy_refuses_nonsense():
    with pytest.raises(ValueError, match="alpha"):
        GatePolicy(alpha=0.7)


# --------------------------------------------------------------------------------------
# The specificity floor
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specificity", "floor", "passed"),
    [
        (0.5, 0.5, True),  # 450 of 900 cleared: exactly at the floor passes
        (0.5, 0.501, False),  # a floor just above fails
        (0.5, 0.499, True),  # a floor just below passes
        (449 / 900, 0.5, False),  # one false alarm more
    ],
)
def test_specificity_floor_against_hand_computed_values(specificity, floor, passed):
    challenger = evaluation("challenger", specificity=specificity)
    policy = GatePolicy(specificity_floor=floor)
    for champion in (versus(), None):  # every decision, the first model's too
        decision = decide(challenger, champion, policy)
        assert reason(decision, "specificity_floor") is passed
        assert decision.promote is passed


def test_a_challenger_that_calls_every_lesion_melanoma_is_rejected():
    """Sensitivity 1.000 at threshold 0.011 and specificity 0.000: it finds every melanoma
    and refers every patient, which the sensitivity floor alone let through."""
    referrer = replace(
        metrics(sensitivity=1.0, specificity=0.0), threshold=0.011, accuracy=0.1, precision=0.1
    )
    challenger = ModelEvaluation("challenger", "models:/challenger", None, referrer, ())
    for champion in (versus(), None):
        decision = decide(challenger, champion, GatePolicy())
        assert not decision.promote
        assert reason(decision, "sensitivity_floor")
        assert [r.rule for r in decision.failed] == ["specificity_floor"]
        assert decision.failed[0].detail == (
            "specificity 0.000 at threshold 0.011 (floor 0.500; 0 of 900 non-melanoma called "
            "not melanoma)"
        )


def test_specificity_reason_reads_like_the_sensitivity_one():
    decision = decide(evaluation("challenger", specificity=0.75), versus(), GatePolicy())
    (line,) = [line for line in decision.lines() if "specificity_floor" in line]
    assert line == (
        "pass  specificity_floor: specificity 0.750 at threshold 0.5 (floor 0.500; "
        "675 of 900 non-melanoma called not melanoma)"
    )


# --------------------------------------------------------------------------------------
# The partial ROC AUC as a gate metric
# --------------------------------------------------------------------------------------


def test_partial_roc_auc_is_reported_not_judged_by_default():
    comparison = replace(versus(), partial_auc=partial(-0.05, -0.06))
    decision = decide(evaluation("challenger"), comparison, GatePolicy())
    assert GatePolicy().partial_roc_auc is None
    assert "partial_roc_auc" not in {r.rule for r in decision.reasons}


@pytest.mark.parametrize(
    ("mode", "difference", "lower", "promoted"),
    [
        (Mode.point, 0.001, -0.05, True),
        (Mode.point, 0.0, 0.0, False),  # a tie is not a win
        (Mode.non_inferiority, 0.002, -0.004, True),  # margin 0.005
        (Mode.non_inferiority, 0.002, -0.006, False),
        (Mode.non_inferiority, -0.001, 0.0, False),  # must still be higher
        (Mode.superiority, 0.01, 0.006, True),  # margin 0.005
        (Mode.superiority, 0.01, 0.004, False),
    ],
)
def test_partial_roc_auc_modes(mode, difference, lower, promoted):
    policy = GatePolicy(partial_roc_auc=MetricRule(mode, 0.005 if mode is not Mode.point else 0))
    comparison = replace(versus(), partial_auc=partial(difference, lower))
    decision = decide(evaluation("challenger"), comparison, policy)
    assert reason(decision, "partial_roc_auc") is promoted
    assert decision.promote is promoted
    assert [r.rule for r in decision.reasons][-2:] == ["partial_roc_auc", "subgroups"]


def test_partial_roc_auc_rule_without_the_comparison_or_at_another_alpha_fails():
    policy = GatePolicy(partial_roc_auc=MetricRule(Mode.point))
    old_report = replace(versus(), partial_auc=None)
    decision = decide(evaluation("challenger"), old_report, policy)
    assert not reason(decision, "partial_roc_auc")
    assert "evaluate again" in decision.failed[0].detail
    other_alpha = replace(versus(), partial_auc=partial(0.01, 0.002, alpha=0.2))
    decision = decide(evaluation("challenger"), other_alpha, policy)
    assert not reason(decision, "partial_roc_auc")
    assert "alpha 0.2" in decision.failed[0].detail


# --------------------------------------------------------------------------------------
# The decision in plain words, for reviewers
# --------------------------------------------------------------------------------------


def explanation(decision: Decision, rule: str) -> str:
    (found,) = [r for r in decision.reasons if r.rule == rule]
    return found.explanation


def test_a_promoted_challenger_needs_no_explanation():
    decision = decide(evaluation("challenger"), versus(), GatePolicy())
    assert decision.explanations() == ()
    assert all(r.explanation == "" for r in decision.reasons)
    assert not any(line.startswith("in plain words") for line in decision.lines())


def test_missed_melanomas_and_needless_biopsies_are_said_in_counts():
    challenger = evaluation("challenger", sensitivity=0.7, specificity=0.4)
    decision = decide(challenger, versus(), GatePolicy())
    assert decision.explanations() == (
        "it would miss too many melanomas: it found 70 of the 100 in the test set (70%), and "
        "the policy asks for at least 80%.",
        "it would send too many harmless lesions to biopsy: it cleared only 360 of the 900 "
        "non-melanoma lesions in the test set (40%), and the policy asks for at least 50%.",
    )
    assert decision.lines()[-2:] == [f"in plain words: {s}" for s in decision.explanations()]


def test_a_challenger_no_better_is_told_it_must_beat_the_champion():
    decision = decide(evaluation("challenger"), versus(auc_difference=-0.01), GatePolicy())
    assert explanation(decision, "roc_auc") == (
        "how well it ranks melanoma above other lesions (ROC AUC) is no better than the "
        "champion's: 0.840 against the champion's 0.850; a challenger must beat the champion "
        "to replace it."
    )


def test_an_uncertain_gain_says_how_much_worse_it_could_be_and_what_is_tolerated():
    # +0.01 with a standard error of 0.03: the one-sided 95% bound is 0.01 - 1.645 * 0.03,
    # below the default non-inferiority margin of 0.02.
    decision = decide(
        evaluation("challenger"),
        ChampionComparison(evaluation("champion"), auc(0.01, 0.03), f1(0.03, -0.01), None),
        GatePolicy(),
    )
    worst = 0.01 - stats.norm.ppf(0.95) * 0.03
    assert explanation(decision, "roc_auc") == (
        "how well it ranks melanoma above other lesions (ROC AUC) is higher (0.860 against "
        f"the champion's 0.850), but on this test set the gain is too uncertain: the "
        f"challenger could be as much as {-worst:.3f} worse than the champion, and the policy "
        "accepts at most 0.020 worse. A larger gain or more test images would settle it."
    )


def test_superiority_explains_the_proof_it_asks_for():
    policy = GatePolicy(f1=MetricRule(Mode.superiority, 0.0))
    decision = decide(evaluation("challenger"), versus(f1_difference=0.03, f1_lower=-0.01), policy)
    assert explanation(decision, "f1") == (
        "its balance of melanomas found against false alarms (F1) is higher (0.630 against the "
        "champion's 0.600), but the policy asks for proof that it is better by more than "
        "0.000, and on this test set the gain could be as small as -0.010."
    )


def test_a_subgroup_drop_names_the_group():
    champion_groups = (group("female", 0.9), group("male", 0.9))
    challenger = evaluation("challenger", (group("female", 0.7), group("male", 0.9)))
    decision = decide(challenger, versus(champion_groups=champion_groups), GatePolicy())
    assert explanation(decision, "subgroups").startswith(
        "it does worse than the champion for one group of patients: sensitivity in "
        "sex=female drops by 0.200"
    )


def test_old_decisions_without_explanations_still_read():
    decision = decide(evaluation("challenger", sensitivity=0.5), versus(), GatePolicy())
    stored = decision.to_dict()
    for row in stored["reasons"]:
        del row["explanation"]  # a report written before reviewers had plain words
    assert Decision.from_dict(stored).explanations() == ()
