"""The promotion gate: a pure function of the evidence and the policy.

`decide(challenger, champion, policy)` never touches a registry; the adapter in
`registry.models` acts on the Decision it returns (TFX's blessing, not a fetch-compare-mutate
step). Every rule gives one Reason, passed or not, so a reviewer reads why.

The mission's rule is that a challenger must beat the champion on F1 and on ROC AUC. Each of
the two metrics is judged in one of three statistical modes:

- `point`: the challenger's point estimate is higher;
- `non_inferiority`: it is higher, and the one-sided lower confidence bound of the
  difference is above `-margin` (it is not plausibly worse by more than the margin);
- `superiority`: the one-sided lower confidence bound of the difference is above `margin`
  (0 by default: better beyond chance, DeLong for ROC AUC, a paired bootstrap for F1).

The partial ROC AUC above 80% sensitivity (ISIC 2024's metric, a paired bootstrap) can be
judged the same way, or not at all (`partial_roc_auc=None`, the default). Two safety floors
hold for every challenger, the first model too: the share of melanoma it finds
(`sensitivity_floor`) and the share of other lesions it leaves alone (`specificity_floor`:
a model that calls nearly every lesion melanoma finds them all and helps nobody).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # the gate itself needs no NumPy, pandas or scikit-learn
    from pipelines.evaluation.report import ChampionComparison, ModelEvaluation
    from pipelines.evaluation.stats import BootstrapDifference
    from pipelines.evaluation.subgroups import SubgroupRow


class Mode(StrEnum):
    point = "point"
    non_inferiority = "non_inferiority"
    superiority = "superiority"


SubgroupMetric = Literal["sensitivity", "specificity", "f1", "roc_auc"]
SUBGROUP_METRICS: tuple[str, ...] = get_args(SubgroupMetric)


@dataclass(frozen=True)
class MetricRule:
    mode: Mode
    margin: float = 0.0


@dataclass(frozen=True)
class GatePolicy:
    """What a challenger must show; params.yaml `gate` holds it.

    The defaults were chosen by `bench/gate_simulation.py` (docs/results.md): both metrics
    higher, and neither plausibly worse by more than 0.02 (one-sided 95% bounds). A
    challenger truly worse by 0.02 ROC AUC then passes at most 5% of the time at any
    test-set size, by construction; superiority, the earlier default, promoted a challenger
    truly better by 0.01 on HAM10000's locked test set one week in seven."""

    roc_auc: MetricRule = MetricRule(Mode.non_inferiority, 0.02)
    f1: MetricRule = MetricRule(Mode.non_inferiority, 0.02)
    alpha: float = 0.05
    sensitivity_floor: float = 0.80
    specificity_floor: float = 0.50
    partial_roc_auc: MetricRule | None = None
    """None: the partial ROC AUC is reported, not judged"""
    max_subgroup_drop: float = 0.15
    subgroup_metrics: tuple[SubgroupMetric, ...] = ("sensitivity", "roc_auc")
    first_model_roc_auc: float = 0.75
    first_model_f1: float = 0.40
    approval_required: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.subgroup_metrics) - set(SUBGROUP_METRICS))
        if unknown:
            raise ValueError(f"unknown subgroup metric(s) {unknown}; known: {SUBGROUP_METRICS}")
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")


@dataclass(frozen=True)
class Reason:
    rule: str
    passed: bool
    detail: str
    # What a failed rule means, in words a reviewer without statistics understands.
    explanation: str = ""

    def line(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'}  {self.rule}: {self.detail}"


@dataclass(frozen=True)
class Decision:
    promote: bool
    needs_approval: bool
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        return "promote" if self.promote else "reject"

    @property
    def failed(self) -> tuple[Reason, ...]:
        return tuple(reason for reason in self.reasons if not reason.passed)

    def explanations(self) -> tuple[str, ...]:
        """Why the challenger was rejected, one plain sentence per failed rule."""
        return tuple(reason.explanation for reason in self.failed if reason.explanation)

    def lines(self) -> list[str]:
        approval = ", awaiting a reviewer's approval" if self.needs_approval else ""
        plain = [f"in plain words: {sentence}" for sentence in self.explanations()]
        return [f"decision: {self.verdict}{approval}", *(r.line() for r in self.reasons), *plain]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        reasons = tuple(Reason(**reason) for reason in data["reasons"])
        return cls(bool(data["promote"]), bool(data["needs_approval"]), reasons)


def decide(
    challenger: ModelEvaluation, champion: ChampionComparison | None, policy: GatePolicy
) -> Decision:
    """Promote the challenger only when every rule of the policy passes."""
    reasons = [_sensitivity_floor(challenger, policy), _specificity_floor(challenger, policy)]
    if champion is None:
        reasons += _first_model_floors(challenger, policy)
    else:
        reasons += [_roc_auc_rule(champion, policy), _f1_rule(champion, policy)]
        if policy.partial_roc_auc is not None:
            reasons.append(_partial_roc_auc_rule(champion, policy, policy.partial_roc_auc))
        reasons.append(_subgroup_rule(challenger, champion.champion, policy))
    promote = all(reason.passed for reason in reasons)
    return Decision(promote, promote and policy.approval_required, tuple(reasons))


def _sensitivity_floor(challenger: ModelEvaluation, policy: GatePolicy) -> Reason:
    metrics = challenger.metrics
    value = metrics.sensitivity
    return _reason(
        "sensitivity_floor",
        value >= policy.sensitivity_floor,
        f"sensitivity {value:.3f} at threshold {metrics.threshold:g} "
        f"(floor {policy.sensitivity_floor:.3f}; "
        f"{metrics.confusion.true_positives} of {metrics.melanoma} melanoma found)",
        f"it would miss too many melanomas: it found {metrics.confusion.true_positives} of "
        f"the {metrics.melanoma} in the test set ({value:.0%}), and the policy asks for at "
        f"least {policy.sensitivity_floor:.0%}.",
    )


def _specificity_floor(challenger: ModelEvaluation, policy: GatePolicy) -> Reason:
    metrics = challenger.metrics
    value = metrics.specificity
    return _reason(
        "specificity_floor",
        value >= policy.specificity_floor,
        f"specificity {value:.3f} at threshold {metrics.threshold:g} "
        f"(floor {policy.specificity_floor:.3f}; "
        f"{metrics.confusion.true_negatives} of {metrics.benign} non-melanoma "
        "called not melanoma)",
        f"it would send too many harmless lesions to biopsy: it cleared only "
        f"{metrics.confusion.true_negatives} of the {metrics.benign} non-melanoma lesions in "
        f"the test set ({value:.0%}), and the policy asks for at least "
        f"{policy.specificity_floor:.0%}.",
    )


def _first_model_floors(challenger: ModelEvaluation, policy: GatePolicy) -> list[Reason]:
    """No champion yet: the first model is held to absolute floors instead."""
    auc = challenger.metrics.roc_auc
    f1 = challenger.metrics.f1
    return [
        _reason(
            "first_model_roc_auc",
            auc is not None and auc >= policy.first_model_roc_auc,
            f"no champion yet; ROC AUC {_number(auc)} (floor {policy.first_model_roc_auc:.3f})",
            f"as the first model it must tell melanoma from other lesions with a ROC AUC of at "
            f"least {policy.first_model_roc_auc:.2f} (0.5 is a coin toss); it reached "
            f"{_number(auc)}.",
        ),
        _reason(
            "first_model_f1",
            f1 >= policy.first_model_f1,
            f"no champion yet; F1 {f1:.3f} (floor {policy.first_model_f1:.3f})",
            f"as the first model its balance of melanomas found against false alarms (F1) must "
            f"reach {policy.first_model_f1:.2f}; it reached {f1:.2f}.",
        ),
    ]


def _roc_auc_rule(champion: ChampionComparison, policy: GatePolicy) -> Reason:
    comparison = champion.auc
    if comparison is None:
        return Reason(
            "roc_auc",
            False,
            "ROC AUC is undefined on this test set",
            "the test set holds one class only, so the two models cannot be compared.",
        )
    lower = comparison.lower_bound(policy.alpha)
    measured = (
        f"ROC AUC {comparison.challenger_auc:.3f} vs champion {comparison.champion_auc:.3f} "
        f"({comparison.difference:+.3f}, one-sided {1 - policy.alpha:.0%} lower bound "
        f"{lower:+.3f}, DeLong p={comparison.p_superiority:.3g})"
    )
    plain = Compared(ROC_AUC_IN_WORDS, comparison.challenger_auc, comparison.champion_auc)
    return _judged("roc_auc", plain, comparison.difference, lower, policy.roc_auc, measured)


def _f1_rule(champion: ChampionComparison, policy: GatePolicy) -> Reason:
    comparison = champion.f1
    plain = Compared(F1_IN_WORDS, comparison.challenger_f1, comparison.champion_f1)
    return _bootstrap_rule("f1", "F1", plain, comparison, policy.f1, policy.alpha)


def _partial_roc_auc_rule(
    champion: ChampionComparison, policy: GatePolicy, judge: MetricRule
) -> Reason:
    comparison = champion.partial_auc
    if comparison is None:
        return Reason(
            "partial_roc_auc",
            False,
            "the partial ROC AUC was not compared (a report from before it was, or one "
            "class only): evaluate again",
            "the evaluation did not compare the models where screening works; evaluate again.",
        )
    above = comparison.min_sensitivity
    plain = Compared(
        partial_roc_auc_in_words(above),
        comparison.challenger_partial_auc,
        comparison.champion_partial_auc,
        digits=4,
    )
    label = f"partial ROC AUC above {above:.0%} sensitivity"
    return _bootstrap_rule("partial_roc_auc", label, plain, comparison, judge, policy.alpha)


def _bootstrap_rule(
    rule: str,
    label: str,
    plain: Compared,
    comparison: BootstrapDifference,
    judge: MetricRule,
    alpha: float,
) -> Reason:
    """A rule on a metric compared by paired bootstrap, whose bound must have been taken at
    the policy's alpha."""
    digits = plain.digits
    measured = (
        f"{label} {plain.challenger:.{digits}f} vs champion {plain.champion:.{digits}f} "
        f"({comparison.difference:+.{digits}f}, one-sided {1 - comparison.alpha:.0%} lower "
        f"bound {comparison.lower_bound:+.{digits}f}, paired bootstrap over "
        f"{comparison.resampled}s)"
    )
    if abs(comparison.alpha - alpha) > 1e-12:
        return _stale_alpha(rule, measured, comparison.alpha, alpha)
    return _judged(rule, plain, comparison.difference, comparison.lower_bound, judge, measured)


def _stale_alpha(rule: str, measured: str, measured_at: float, asked: float) -> Reason:
    return Reason(
        rule,
        False,
        f"{measured}; the bound was taken at alpha {measured_at:g} but the policy asks "
        f"{asked:g}: evaluate again",
        "the comparison was computed at another confidence level than the policy's; "
        "evaluate again.",
    )


@dataclass(frozen=True)
class Compared:
    """A metric of both models, for the plain-words explanation of a comparison."""

    what: str
    challenger: float
    champion: float
    digits: int = 3

    def values(self) -> str:
        ours, theirs = f"{self.challenger:.{self.digits}f}", f"{self.champion:.{self.digits}f}"
        return f"{ours} against the champion's {theirs}"


ROC_AUC_IN_WORDS = "how well it ranks melanoma above other lesions (ROC AUC)"
F1_IN_WORDS = "its balance of melanomas found against false alarms (F1)"


def partial_roc_auc_in_words(min_sensitivity: float) -> str:
    return (
        "how well it ranks lesions where screening operates, above "
        f"{min_sensitivity:.0%} sensitivity (partial ROC AUC)"
    )


def _judged(
    rule: str,
    plain: Compared,
    difference: float,
    lower: float,
    judge: MetricRule,
    measured: str,
) -> Reason:
    if judge.mode is Mode.point:
        passed = difference > 0
        detail = f"{measured}; point mode: must be higher"
    elif judge.mode is Mode.non_inferiority:
        passed = difference > 0 and lower > -judge.margin
        detail = (
            f"{measured}; non-inferiority: must be higher and the bound above {-judge.margin:+.3f}"
        )
    else:
        passed = lower > judge.margin
        detail = f"{measured}; superiority: the bound must be above {judge.margin:+.3f}"
    return _reason(rule, passed, detail, _comparison_in_words(plain, difference, lower, judge))


def _reason(rule: str, passed: bool, detail: str, explanation: str) -> Reason:
    """A rule's outcome; only a failed rule needs explaining."""
    return Reason(rule, passed, detail, "" if passed else explanation)


def _comparison_in_words(
    plain: Compared, difference: float, lower: float, judge: MetricRule
) -> str:
    if difference <= 0:
        return (
            f"{plain.what} is no better than the champion's: {plain.values()}; a challenger "
            "must beat the champion to replace it."
        )
    if judge.mode is Mode.superiority:
        return (
            f"{plain.what} is higher ({plain.values()}), but the policy asks for proof that it "
            f"is better by more than {judge.margin:.3f}, and on this test set the gain could "
            f"be as small as {lower:+.3f}."
        )
    return (
        f"{plain.what} is higher ({plain.values()}), but on this test set the gain is too "
        f"uncertain: the challenger could be as much as {-lower:.3f} worse than the champion, "
        f"and the policy accepts at most {judge.margin:.3f} worse. A larger gain or more "
        "test images would settle it."
    )


def _subgroup_rule(
    challenger: ModelEvaluation, champion: ModelEvaluation, policy: GatePolicy
) -> Reason:
    """The largest drop in any reported subgroup; small groups are listed, not judged."""
    drops: list[tuple[float, str]] = []
    small = 0
    for row in challenger.subgroups:
        before = champion.subgroup(row.attribute, row.group)
        if before is None or row.small or before.small:
            small += 1
            continue
        for metric in policy.subgroup_metrics:
            now, then = _value(row, metric), _value(before, metric)
            if now is not None and then is not None:
                drops.append((then - now, f"{metric} in {row.attribute}={row.group}"))
    not_judged = f"; {small} small group(s) not judged" if small else ""
    if not drops:
        return Reason("subgroups", True, f"no subgroup large enough to judge{not_judged}")
    worst, where = max(drops)
    passed = worst <= policy.max_subgroup_drop
    return _reason(
        "subgroups",
        passed,
        f"largest drop {worst:+.3f} ({where}; allowed {policy.max_subgroup_drop:.3f}){not_judged}",
        f"it does worse than the champion for one group of patients: {where} drops by "
        f"{worst:.3f}, and the policy allows at most {policy.max_subgroup_drop:.3f}.",
    )


def _value(row: SubgroupRow, metric: str) -> float | None:
    value: float | None = getattr(row, metric)
    return value


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
