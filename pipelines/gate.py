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

    def lines(self) -> list[str]:
        approval = ", awaiting a reviewer's approval" if self.needs_approval else ""
        return [f"decision: {self.verdict}{approval}", *(r.line() for r in self.reasons)]

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
    return Reason(
        "sensitivity_floor",
        value >= policy.sensitivity_floor,
        f"sensitivity {value:.3f} at threshold {metrics.threshold:g} "
        f"(floor {policy.sensitivity_floor:.3f}; "
        f"{metrics.confusion.true_positives} of {metrics.melanoma} melanoma found)",
    )


def _specificity_floor(challenger: ModelEvaluation, policy: GatePolicy) -> Reason:
    metrics = challenger.metrics
    value = metrics.specificity
    return Reason(
        "specificity_floor",
        value >= policy.specificity_floor,
        f"specificity {value:.3f} at threshold {metrics.threshold:g} "
        f"(floor {policy.specificity_floor:.3f}; "
        f"{metrics.confusion.true_negatives} of {metrics.benign} non-melanoma "
        "called not melanoma)",
    )


def _first_model_floors(challenger: ModelEvaluation, policy: GatePolicy) -> list[Reason]:
    """No champion yet: the first model is held to absolute floors instead."""
    auc = challenger.metrics.roc_auc
    f1 = challenger.metrics.f1
    return [
        Reason(
            "first_model_roc_auc",
            auc is not None and auc >= policy.first_model_roc_auc,
            f"no champion yet; ROC AUC {_number(auc)} (floor {policy.first_model_roc_auc:.3f})",
        ),
        Reason(
            "first_model_f1",
            f1 >= policy.first_model_f1,
            f"no champion yet; F1 {f1:.3f} (floor {policy.first_model_f1:.3f})",
        ),
    ]


def _roc_auc_rule(champion: ChampionComparison, policy: GatePolicy) -> Reason:
    comparison = champion.auc
    if comparison is None:
        return Reason("roc_auc", False, "ROC AUC is undefined on this test set")
    lower = comparison.lower_bound(policy.alpha)
    measured = (
        f"ROC AUC {comparison.challenger_auc:.3f} vs champion {comparison.champion_auc:.3f} "
        f"({comparison.difference:+.3f}, one-sided {1 - policy.alpha:.0%} lower bound "
        f"{lower:+.3f}, DeLong p={comparison.p_superiority:.3g})"
    )
    return _judged("roc_auc", comparison.difference, lower, policy.roc_auc, measured)


def _f1_rule(champion: ChampionComparison, policy: GatePolicy) -> Reason:
    comparison = champion.f1
    measured = (
        f"F1 {comparison.challenger_f1:.3f} vs champion {comparison.champion_f1:.3f} "
        f"({comparison.difference:+.3f}, one-sided {1 - comparison.alpha:.0%} lower bound "
        f"{comparison.lower_bound:+.3f}, paired bootstrap over {comparison.resampled}s)"
    )
    if abs(comparison.alpha - policy.alpha) > 1e-12:
        return Reason(
            "f1",
            False,
            f"{measured}; the bound was taken at alpha {comparison.alpha:g} but the policy "
            f"asks {policy.alpha:g}: evaluate again",
        )
    return _judged("f1", comparison.difference, comparison.lower_bound, policy.f1, measured)


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
        )
    measured = (
        f"partial ROC AUC above {comparison.min_sensitivity:.0%} sensitivity "
        f"{comparison.challenger_partial_auc:.4f} vs champion "
        f"{comparison.champion_partial_auc:.4f} ({comparison.difference:+.4f}, one-sided "
        f"{1 - comparison.alpha:.0%} lower bound {comparison.lower_bound:+.4f}, paired "
        f"bootstrap over {comparison.resampled}s)"
    )
    if abs(comparison.alpha - policy.alpha) > 1e-12:
        return Reason(
            "partial_roc_auc",
            False,
            f"{measured}; the bound was taken at alpha {comparison.alpha:g} but the policy "
            f"asks {policy.alpha:g}: evaluate again",
        )
    return _judged(
        "partial_roc_auc", comparison.difference, comparison.lower_bound, judge, measured
    )


def _judged(rule: str, difference: float, lower: float, judge: MetricRule, measured: str) -> Reason:
    if judge.mode is Mode.point:
        return Reason(rule, difference > 0, f"{measured}; point mode: must be higher")
    if judge.mode is Mode.non_inferiority:
        passed = difference > 0 and lower > -judge.margin
        return Reason(
            rule,
            passed,
            f"{measured}; non-inferiority: must be higher and the bound above {-judge.margin:+.3f}",
        )
    return Reason(
        rule,
        lower > judge.margin,
        f"{measured}; superiority: the bound must be above {judge.margin:+.3f}",
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
    return Reason(
        "subgroups",
        passed,
        f"largest drop {worst:+.3f} ({where}; allowed {policy.max_subgroup_drop:.3f}){not_judged}",
    )


def _value(row: SubgroupRow, metric: str) -> float | None:
    value: float | None = getattr(row, metric)
    return value


def _number(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"
