"""The promotion gate on synthetic paired scores: how often candidate policies promote a
challenger that is truly worse, truly equal or truly better than the champion.

    uv run python bench/gate_simulation.py --replications 120     # the table behind the default
    uv run python bench/gate_simulation.py --images 1600 --differences -0.02 0.02
    uv run python bench/gate_simulation.py -S gate.max_subgroup_drop=0.2   # change every policy

A benchmark, not a test: CI never runs it (`make bench` does).

Each replication draws a locked test set and the two models' scores on it, then runs the
production code path: `evaluate_on_test_set` (DeLong, lesion bootstraps of F1 and of the
partial ROC AUC, subgroup table; evaluation settings `Params().evaluate.settings(alpha)`,
2,000 bootstrap iterations) and `decide`. Every candidate policy is judged on the very same
reports (one evaluation per alpha, since the bootstrap bounds are taken at the policy's
alpha), so the policies differ only by their rules, never by luck; and the same
(seed, replication) draws the same test set and errors in every scenario (common random
numbers). Each candidate is the params.yaml defaults (`Params()`, with any -S overrides)
with its own ROC AUC, F1, partial ROC AUC modes and alpha: the safety rules (sensitivity
and specificity floors, subgroups) always apply, and every mode keeps the mission's rule
that both point estimates must be higher. A last row is the bare point-estimate rule
(F1 and ROC AUC higher, nothing else).

Scores follow a binormal model. An image's latent score is mu * label + e, e ~ N(0, 1), so
a model's true ROC AUC is Phi(mu / sqrt(2)); the champion's and the challenger's errors
are correlated (rho: two CNNs trained on overlapping data rank cases alike), and images of
one lesion share the label and part of the error. Lesion sizes (1-4 images) follow
HAM10000's, per class; sex, age and body site follow HAM10000's shares per lesion and are
independent of the scores, so the subgroup rule runs as in production. Each model's
probability is Phi(latent - c), c set so that its true sensitivity at the operating
threshold 0.5 is --sensitivity (both models alike, well above the 0.80 floor): a better
ranking then shows as a better specificity, hence a better F1.

Targets (issue 25): a challenger truly worse by 0.02 ROC AUC is promoted at most 5% of the
time at every test-set size; among the policies that keep that bound, the default is the
one that promotes truly better challengers (by 0.01 and 0.02) most often. The defaults
are HAM10000's locked test set (1,600 images, 12% melanoma: about 194) and 2,000 images.
The bound must also hold by construction (`bounded_by_construction`): each metric judged by
a one-sided test at level 5% against a loss of 0.02. In the binormal model F1 falls
whenever ROC AUC does, so requiring both higher stops most worse challengers whatever the
ROC AUC rule says (the "AUC rule alone" column shows how many that rule passes on its own);
a real challenger can lose ranking away from its operating point, or move its threshold
and lose F1 alone, and then only its own rule stands in the way.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import special, stats

sys.path.insert(0, str(Path(__file__).parent))
from _support import Stopwatch

from pipelines.evaluation.evaluate import EvaluationSettings, ScoredModel, evaluate_on_test_set
from pipelines.evaluation.report import EvaluationReport
from pipelines.gate import Decision, GatePolicy, Mode, decide
from pipelines.monitoring import wilson_interval
from usecases.params import Params, load_params

# HAM10000 (10,015 images, 7,470 lesions), counted from its metadata.csv: lesions by number
# of images, melanoma and not, five and six images folded into four (10 lesions).
LESION_SIZES = (1, 2, 3, 4)
MELANOMA_LESIONS_BY_SIZE = (230, 278, 100, 6)
OTHER_LESIONS_BY_SIZE = (5284, 1145, 390, 37)
HAM10000_MELANOMA_SHARE = 0.111
# Per lesion: sex, body site, age (mean 51.7, sd 16.0, multiples of 5 up to 85, 0.7% missing).
SEX = {"male": 0.536, "female": 0.457, "unknown": 0.007}
LOCALIZATION = {
    "lower extremity": 0.2120, "back": 0.2054, "trunk": 0.1699, "abdomen": 0.1100,
    "upper extremity": 0.1039, "face": 0.0629, "chest": 0.0321, "foot": 0.0305,
    "unknown": 0.0272, "neck": 0.0159, "scalp": 0.0104, "hand": 0.0086, "genital": 0.0060,
    "ear": 0.0047, "acral": 0.0004,
}  # fmt: skip
AGE_MEAN, AGE_SD, AGE_MISSING = 51.7, 16.0, 0.007
THRESHOLD = 0.5


@dataclass(frozen=True)
class Design:
    images: int
    prevalence: float
    rho: float
    lesion_correlation: float
    sensitivity: float
    champion_auc: float

    def mu(self, auc: float) -> float:
        """Binormal separation giving this ROC AUC: AUC = Phi(mu / sqrt(2))."""
        return math.sqrt(2.0) * float(stats.norm.ppf(auc))

    def cut(self, auc: float) -> float:
        """Latent cut (probability 0.5) where the true sensitivity is `sensitivity`."""
        return self.mu(auc) - float(stats.norm.ppf(self.sensitivity))

    def true_metrics(self, auc: float) -> tuple[float, float, float]:
        """Population sensitivity, specificity and F1 at the operating threshold."""
        specificity = float(stats.norm.cdf(self.cut(auc)))
        p, s = self.prevalence, self.sensitivity
        true_positive, false_positive = p * s, (1 - p) * (1 - specificity)
        precision = true_positive / (true_positive + false_positive)
        return s, specificity, 2 * precision * s / (precision + s)

    def lesion_melanoma_probability(self) -> float:
        """Share of melanoma lesions giving `prevalence` melanoma images (melanoma lesions
        have more images: 1.81 against 1.30 in HAM10000)."""
        m1, m0 = _mean_size(MELANOMA_LESIONS_BY_SIZE), _mean_size(OTHER_LESIONS_BY_SIZE)
        p = self.prevalence
        return p * m0 / (p * m0 + (1 - p) * m1)


def _mean_size(counts: tuple[int, ...]) -> float:
    return float(np.dot(LESION_SIZES, counts) / sum(counts))


def _shares(table: dict[str, float]) -> tuple[list[str], npt.NDArray[np.float64]]:
    weights = np.array(list(table.values()), dtype=np.float64)
    return list(table), weights / weights.sum()


def draw_test_set(design: Design, rng: np.random.Generator) -> pd.DataFrame:
    """`images` test images grouped into lesions, with labels and patient attributes."""
    q = design.lesion_melanoma_probability()
    # More lesions than needed (every lesion has at least one image), then cut at `images`.
    lesions = design.images
    melanoma = rng.random(lesions) < q
    p1 = np.array(MELANOMA_LESIONS_BY_SIZE) / sum(MELANOMA_LESIONS_BY_SIZE)
    p0 = np.array(OTHER_LESIONS_BY_SIZE) / sum(OTHER_LESIONS_BY_SIZE)
    sizes = np.where(
        melanoma, rng.choice(LESION_SIZES, lesions, p=p1), rng.choice(LESION_SIZES, lesions, p=p0)
    )
    lesion_of_image = np.repeat(np.arange(lesions), sizes)[: design.images]
    used = int(lesion_of_image[-1]) + 1
    sexes, sex_p = _shares(SEX)
    sites, site_p = _shares(LOCALIZATION)
    age = np.clip(np.round(rng.normal(AGE_MEAN, AGE_SD, used) / 5) * 5, 0, 85)
    age[rng.random(used) < AGE_MISSING] = np.nan
    per_lesion = pd.DataFrame(
        {
            "lesion_id": [f"L{i:05d}" for i in range(used)],
            "label": melanoma[:used].astype(np.int64),
            "sex": rng.choice(sexes, used, p=sex_p),
            "age": age,
            "localization": rng.choice(sites, used, p=site_p),
        }
    )
    cases = per_lesion.iloc[lesion_of_image].reset_index(drop=True)
    cases.insert(0, "image_id", [f"I{i:05d}" for i in range(design.images)])
    return cases


def draw_latent_errors(
    design: Design, lesion_index: npt.NDArray[np.int64], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(champion, challenger) errors: unit variance, correlation rho between the models,
    lesion_correlation between two images of one lesion (same model)."""
    w, rho = design.lesion_correlation, design.rho
    pair = np.array([[1.0, rho], [rho, 1.0]])
    lesion_part = rng.multivariate_normal([0.0, 0.0], pair, int(lesion_index.max()) + 1)
    image_part = rng.multivariate_normal([0.0, 0.0], pair, len(lesion_index))
    errors = math.sqrt(w) * lesion_part[lesion_index] + math.sqrt(1 - w) * image_part
    return errors[:, 0], errors[:, 1]


def point_rule(report: EvaluationReport) -> bool:
    """The baseline: both point estimates higher, nothing else."""
    versus = report.versus
    assert versus is not None and versus.auc is not None
    return bool(
        versus.f1.challenger_f1 > versus.f1.champion_f1
        and versus.auc.challenger_auc > versus.auc.champion_auc
    )


def judged_subgroups(report: EvaluationReport) -> int:
    assert report.versus is not None
    champion = report.versus.champion
    judged = 0
    for row in report.challenger.subgroups:
        before = champion.subgroup(row.attribute, row.group)
        judged += before is not None and not row.small and not before.small
    return judged


def failed_rules(decision: Decision) -> tuple[str, ...]:
    """The failed rules; a failed subgroup rule is named by its worst metric and attribute."""
    names = []
    for reason in decision.failed:
        found = re.search(r"\((\w+) in (\w+)=", reason.detail)
        if reason.rule == "subgroups" and found:
            names.append(f"subgroups ({found.group(1)}, {found.group(2)})")
        else:
            names.append(reason.rule)
    return tuple(names)


@dataclass(frozen=True)
class Scenario:
    name: str
    difference: float
    """true challenger ROC AUC minus the champion's"""


@dataclass(frozen=True)
class Candidate:
    name: str
    overrides: tuple[str, ...]
    """-S overrides of the gate section, on top of the defaults and the command's own -S"""


# The candidate policies: each keeps the safety rules of the defaults. A non-inferiority
# margin of 0 is superiority at margin 0, so it is not listed twice.
CANDIDATES = (
    Candidate("point / point", ("gate.roc_auc=point", "gate.f1=point")),
    *(
        Candidate(
            f"AUC NI {margin} a{alpha} / F1 {f1}",
            (
                "gate.roc_auc=non_inferiority",
                f"gate.roc_auc_margin={margin}",
                f"gate.alpha={alpha}",
                *f1_rule,
            ),
        )
        for alpha in ("0.05", "0.20")
        for margin in ("0.005", "0.01", "0.02")
        for f1, f1_rule in (
            ("point", ("gate.f1=point",)),
            ("NI 0.02", ("gate.f1=non_inferiority", "gate.f1_margin=0.02")),
        )
    ),
    *(
        Candidate(
            f"AUC sup a{alpha} / F1 {f1}",
            ("gate.roc_auc=superiority", "gate.roc_auc_margin=0", f"gate.alpha={alpha}", *f1_rule),
        )
        for alpha in ("0.05", "0.20", "0.30")
        for f1, f1_rule in (
            ("point", ("gate.f1=point",)),
            ("NI 0.02", ("gate.f1=non_inferiority", "gate.f1_margin=0.02")),
        )
    ),
    Candidate(
        "point / point / pAUC point",
        ("gate.roc_auc=point", "gate.f1=point", "gate.partial_roc_auc=point"),
    ),
    Candidate(
        "point / point / pAUC NI 0.005 a0.20",
        (
            "gate.roc_auc=point",
            "gate.f1=point",
            "gate.alpha=0.20",
            "gate.partial_roc_auc=non_inferiority",
            "gate.partial_roc_auc_margin=0.005",
        ),
    ),
)
BARE_POINT_RULE = "bare point rule (no safety rules)"


@dataclass(frozen=True)
class Outcome:
    promoted: dict[str, bool]
    """by candidate name, and the bare point rule"""
    failed: dict[str, tuple[str, ...]]
    judged_subgroups: int
    melanoma: int
    lesions: int
    auc_difference: float
    auc_standard_error: float
    """DeLong's, by lesion"""
    f1_difference: float
    partial_auc_difference: float


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def hits(self, policy: str) -> int:
        return sum(o.promoted[policy] for o in self.outcomes)


def policies(overrides: list[str], names: list[str] | None) -> dict[str, GatePolicy]:
    """The candidates' policies, validated by the params model as `cme evaluate -S` is."""
    chosen = {}
    default = Params().gate.policy() if not overrides else None
    for candidate in CANDIDATES:
        if names and candidate.name not in names:
            continue
        params = load_params(Path("<defaults>"), [*overrides, *candidate.overrides])
        chosen[candidate.name] = params.gate.policy()
    if default is not None:
        chosen = {
            (f"{name} (default)" if policy == default else name): policy
            for name, policy in chosen.items()
        }
    return chosen


def replicate(
    design: Design,
    challenger_auc: float,
    candidates: dict[str, GatePolicy],
    settings: dict[float, EvaluationSettings],
    seed: int,
    index: int,
) -> Outcome:
    """One test set through evaluate_on_test_set (once per alpha) and every candidate's
    decide. The same (seed, index) draws the same test set and errors in every scenario."""
    rng = np.random.default_rng([seed, design.images, index])
    cases = draw_test_set(design, rng)
    lesion_index = pd.factorize(cases["lesion_id"])[0].astype(np.int64)
    e_champion, e_challenger = draw_latent_errors(design, lesion_index, rng)
    label = cases["label"].to_numpy(dtype=np.float64)
    champion_auc = design.champion_auc
    champion = special.ndtr(design.mu(champion_auc) * label + e_champion - design.cut(champion_auc))
    challenger = special.ndtr(
        design.mu(challenger_auc) * label + e_challenger - design.cut(challenger_auc)
    )
    reports = {
        alpha: evaluate_on_test_set(
            f"synthetic-{index}",
            cases,
            ScoredModel("synthetic:challenger", None, THRESHOLD, challenger),
            ScoredModel("synthetic:champion", "1", THRESHOLD, champion),
            alpha_settings,
        )
        for alpha, alpha_settings in settings.items()
    }
    promoted, failed = {}, {}
    for name, policy in candidates.items():
        report = reports[policy.alpha]
        decision = decide(report.challenger, report.versus, policy)
        promoted[name], failed[name] = decision.promote, failed_rules(decision)
    report = next(iter(reports.values()))
    promoted[BARE_POINT_RULE] = point_rule(report)
    versus = report.versus
    assert versus is not None and versus.auc is not None and versus.partial_auc is not None
    return Outcome(
        promoted=promoted,
        failed=failed,
        judged_subgroups=judged_subgroups(report),
        melanoma=report.test_melanoma,
        lesions=report.test_lesions,
        auc_difference=versus.auc.difference,
        auc_standard_error=versus.auc.standard_error,
        f1_difference=versus.f1.difference,
        partial_auc_difference=versus.partial_auc.difference,
    )


def _replicate_many(
    design: Design,
    challenger_auc: float,
    candidates: dict[str, GatePolicy],
    settings: dict[float, EvaluationSettings],
    seed: int,
    indices: list[int],
) -> list[Outcome]:
    return [replicate(design, challenger_auc, candidates, settings, seed, i) for i in indices]


def wilson(hits: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion, 95%."""
    rate = wilson_interval(hits, n, 0.95)
    return (0.0, 1.0) if rate.low is None or rate.high is None else (rate.low, rate.high)


def rate_text(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits / n:5.1%} [{low:4.1%},{high:5.1%}]"


def run_scenario(
    design: Design,
    scenario: Scenario,
    candidates: dict[str, GatePolicy],
    settings: dict[float, EvaluationSettings],
    args: argparse.Namespace,
) -> Tally:
    challenger_auc = design.champion_auc + scenario.difference
    indices = list(range(args.replications))
    tally = Tally()
    if args.workers == 1:
        tally.outcomes = _replicate_many(
            design, challenger_auc, candidates, settings, args.seed, indices
        )
        return tally
    chunks = [indices[k :: args.workers] for k in range(args.workers)]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [
            pool.submit(
                _replicate_many, design, challenger_auc, candidates, settings, args.seed, chunk
            )
            for chunk in chunks
        ]
        for future in futures:
            tally.outcomes += future.result()
    return tally


def print_design(
    designs: list[Design],
    scenarios: list[Scenario],
    base: GatePolicy,
    settings: EvaluationSettings,
    args: argparse.Namespace,
) -> None:
    design = designs[0]
    print("design")
    print(f"  test images per replication     {', '.join(str(d.images) for d in designs)}")
    print(
        f"  melanoma share of images        {design.prevalence:.3f} "
        f"(HAM10000: {HAM10000_MELANOMA_SHARE:.3f})"
    )
    print(
        f"  lesions                         1-4 images each, HAM10000's sizes per class "
        f"(mean {_mean_size(MELANOMA_LESIONS_BY_SIZE):.2f} melanoma, "
        f"{_mean_size(OTHER_LESIONS_BY_SIZE):.2f} other)"
    )
    print(f"  error correlation, two models   rho = {design.rho:.2f}")
    print(f"  error correlation, one lesion   {design.lesion_correlation:.2f} (same model)")
    print("  subgroups                       sex, age, body site at HAM10000's shares, per")
    print("                                  lesion, independent of label and scores")
    print(f"  operating threshold             {THRESHOLD} on Phi(latent - c), c per model")
    print("  true metrics at the threshold   sensitivity  specificity  F1     ROC AUC")
    for name, auc in [("champion", design.champion_auc)] + [
        (f"challenger, {s.name}", design.champion_auc + s.difference) for s in scenarios
    ]:
        sens, spec, f1 = design.true_metrics(auc)
        print(f"    {name:<29} {sens:11.3f}  {spec:11.3f}  {f1:.3f}  {auc:.3f}")
    print(
        f"  safety rules (every candidate)  sensitivity floor {base.sensitivity_floor:g}, "
        f"specificity floor {base.specificity_floor:g}, subgroup drop <= "
        f"{base.max_subgroup_drop:g} in {'/'.join(base.subgroup_metrics)}"
    )
    print(
        f"  evaluation                      {settings.bootstrap_iterations} bootstrap "
        f"iterations over lesions; subgroups judged from {settings.min_subgroup_images} "
        f"images and {settings.min_subgroup_melanoma} melanoma"
    )
    print(
        "  parameters                      "
        + ("; ".join(args.overrides) if args.overrides else "the defaults (Params())")
    )
    print(
        f"  replications                    {args.replications} per scenario and size, "
        f"seed {args.seed}, {args.workers} worker process(es); each policy judged on the "
        "same replications"
    )


def print_table(design: Design, scenarios: list[Scenario], tallies: list[Tally]) -> None:
    """Promotion rate of each policy in each scenario, with its 95% Wilson interval."""
    n = len(tallies[0].outcomes)
    print()
    print(
        f"{design.images} test images ({np.mean([o.melanoma for o in tallies[0].outcomes]):.0f} "
        f"melanoma, {np.mean([o.lesions for o in tallies[0].outcomes]):.0f} lesions on "
        f"average): share of {n} replications promoted [95% Wilson interval]"
    )
    width = max(len(name) for name in tallies[0].outcomes[0].promoted) + 2
    print(" " * width + "".join(f"{s.name:>22}" for s in scenarios))
    for name in tallies[0].outcomes[0].promoted:
        cells = "".join(f"{rate_text(t.hits(name), n):>22}" for t in tallies)
        print(f"{name:<{width}}{cells}")
    for label, key in [
        ("ROC AUC difference, mean (sd)", "auc_difference"),
        ("F1 difference, mean (sd)", "f1_difference"),
        ("partial AUC difference, mean (sd)", "partial_auc_difference"),
    ]:
        cells = ""
        for tally in tallies:
            values = [getattr(o, key) for o in tally.outcomes]
            spread = float(np.std(values, ddof=1)) if n > 1 else float("nan")
            cells += f"{f'{np.mean(values):+.4f} ({spread:.4f})':>22}"
        print(f"{label:<{width}}{cells}")
    errors = "".join(
        f"{np.mean([o.auc_standard_error for o in t.outcomes]):>22.4f}" for t in tallies
    )
    print(f"{'DeLong SE by lesion, mean':<{width}}{errors}")


def print_failures(
    name: str, design: Design, scenarios: list[Scenario], tallies: list[Tally]
) -> None:
    print(f"  rules failed by {name}, {design.images} images (share of replications)")
    for scenario, tally in zip(scenarios, tallies, strict=True):
        failures = Counter(rule for o in tally.outcomes for rule in o.failed.get(name, ()))
        n = len(tally.outcomes)
        listed = ", ".join(f"{rule} {count / n:.0%}" for rule, count in failures.most_common())
        print(f"    {scenario.name:<16} {listed or 'none'}")


@dataclass(frozen=True)
class Ranked:
    name: str
    better: float
    """mean promotion rate over the better scenarios and every size"""
    equal: float | None
    worse: float
    """the highest promotion rate of the worst scenario over the sizes"""
    worse_high: float
    """the highest upper end of its 95% Wilson interval"""
    worse_auc_rule: float
    """the highest share of the worst scenario's replications that passed the ROC AUC rule"""
    by_construction: bool
    """each metric rule is a one-sided test at level <= bound against the worst loss"""

    def keeps(self, bound: float) -> bool:
        return self.worse <= bound and self.by_construction


def _rate(tally: Tally, name: str) -> float:
    return tally.hits(name) / len(tally.outcomes)


def _auc_rule_rate(tally: Tally, name: str) -> float:
    return sum("roc_auc" not in o.failed[name] for o in tally.outcomes) / len(tally.outcomes)


def bounded_by_construction(policy: GatePolicy, loss: float, bound: float) -> bool:
    """Whether each of ROC AUC and F1 is judged by a one-sided test at level <= bound that a
    challenger worse by `loss` passes at most `bound` of the time whatever the test set's
    size and whatever the other metric does: superiority, or non-inferiority with a margin
    of at most `loss`. A point rule guarantees nothing on its own."""
    rules = (policy.roc_auc, policy.f1)
    return policy.alpha <= bound and all(
        rule.mode is Mode.superiority
        or (rule.mode is Mode.non_inferiority and rule.margin <= loss + 1e-12)
        for rule in rules
    )


def recommend(
    scenarios: list[Scenario],
    results: dict[int, list[Tally]],
    candidates: dict[str, GatePolicy],
    bound: float,
    worst: Scenario,
) -> str | None:
    """The policy that promotes truly better challengers most often (their mean rate over
    sizes and better scenarios) among those that keep the target: the worst challenger
    promoted at most `bound` of the time at every size, measured, and by construction
    (`bounded_by_construction`). The second matters because the binormal model lets F1 fall
    whenever ROC AUC does, so requiring both higher stops most worse challengers whatever
    the ROC AUC rule says (the "AUC rule alone" column); a model whose ROC curve loses away
    from the operating point, or whose threshold moves, would meet the point rule's ROC AUC
    rule alone."""
    better = [k for k, s in enumerate(scenarios) if s.difference > 0]
    equal = [k for k, s in enumerate(scenarios) if s.difference == 0]
    at_worst = [tallies[scenarios.index(worst)] for tallies in results.values()]
    ranked = [
        Ranked(
            name=name,
            better=float(np.mean([_rate(t[k], name) for t in results.values() for k in better])),
            equal=float(np.mean([_rate(t[k], name) for t in results.values() for k in equal]))
            if equal
            else None,
            worse=max(_rate(t, name) for t in at_worst),
            worse_high=max(wilson(t.hits(name), len(t.outcomes))[1] for t in at_worst),
            worse_auc_rule=max(_auc_rule_rate(t, name) for t in at_worst),
            by_construction=bounded_by_construction(policy, -worst.difference, bound),
        )
        for name, policy in candidates.items()
    ]
    ranked.sort(key=lambda row: -row.better)
    print()
    print(
        f"ranking: promoted when truly better (mean over "
        f"{', '.join(scenarios[k].name for k in better)} and every size); kept when "
        f"{worst.name} is promoted at most {bound:.0%} at every size, measured and by "
        "construction (each metric rule a one-sided test at that level against that loss)"
    )
    print(
        f"  {'':6} {'policy':<40} {'better':>7} {'equal':>7} {'worse':>7} {'(high)':>7}  "
        "worse, AUC rule alone"
    )
    for row in ranked:
        equal_text = "" if row.equal is None else f"{row.equal:.1%}"
        construction = "" if row.by_construction else "  not bounded by construction"
        print(
            f"  {'keeps ' if row.keeps(bound) else 'BREAKS'} {row.name:<40} {row.better:7.1%} "
            f"{equal_text:>7} {row.worse:7.1%} {row.worse_high:7.1%}  "
            f"{row.worse_auc_rule:7.1%}{construction}"
        )
    measured = [row for row in ranked if row.worse <= bound]
    if measured:
        print(f"  most promotions within the measured bound alone: {measured[0].name}")
    kept = [row for row in ranked if row.keeps(bound)]
    return kept[0].name if kept else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=120, help="per scenario and size")
    parser.add_argument(
        "--images", type=int, nargs="+", default=[1600, 2000], help="test images per replication"
    )
    parser.add_argument(
        "--prevalence", type=float, default=0.12, help="melanoma share of the test images"
    )
    parser.add_argument("--rho", type=float, default=0.7, help="error correlation, two models")
    parser.add_argument(
        "--lesion-correlation",
        type=float,
        default=0.8,
        help="error correlation of two images of one lesion",
    )
    parser.add_argument(
        "--sensitivity", type=float, default=0.86, help="true sensitivity of both models"
    )
    parser.add_argument("--champion-auc", type=float, default=0.85)
    parser.add_argument(
        "--differences",
        type=float,
        nargs="+",
        default=[-0.02, 0.0, 0.01, 0.02],
        help="true challenger ROC AUC minus the champion's, one scenario each",
    )
    parser.add_argument(
        "--bound", type=float, default=0.05, help="most promotions allowed when truly worse"
    )
    parser.add_argument(
        "--policy", dest="policies", action="append", help="only this candidate (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "-S",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a gate./evaluate. parameter of every candidate, as `cme evaluate -S`",
    )
    args = parser.parse_args()
    if args.replications < 2 or args.workers < 1 or min(args.images) < 20:
        parser.error("--replications must be >= 2, --workers >= 1, --images >= 20")
    if not (0 < args.prevalence < 1 and -1 < args.rho < 1 and 0 <= args.lesion_correlation < 1):
        parser.error("--prevalence in (0, 1), --rho in (-1, 1), --lesion-correlation in [0, 1)")
    # Without overrides: the embedded defaults, Params(); params.yaml holds the same values.
    params = load_params(Path("<defaults>"), args.overrides) if args.overrides else Params()
    candidates = policies(args.overrides, args.policies)
    if not candidates:
        parser.error(f"no such candidate; known: {[c.name for c in CANDIDATES]}")
    settings = {
        alpha: params.evaluate.settings(alpha=alpha)
        for alpha in sorted({policy.alpha for policy in candidates.values()})
    }
    designs = [
        Design(
            images=images,
            prevalence=args.prevalence,
            rho=args.rho,
            lesion_correlation=args.lesion_correlation,
            sensitivity=args.sensitivity,
            champion_auc=args.champion_auc,
        )
        for images in args.images
    ]
    scenarios = [
        Scenario("truly equal" if d == 0 else f"{'better' if d > 0 else 'worse'} by {abs(d):g}", d)
        for d in sorted(args.differences)
    ]
    print_design(designs, scenarios, params.gate.policy(), next(iter(settings.values())), args)
    results: dict[int, list[Tally]] = {}
    with Stopwatch() as total:
        for design in designs:
            results[design.images] = [
                run_scenario(design, scenario, candidates, settings, args) for scenario in scenarios
            ]
            print_table(design, scenarios, results[design.images])
            sys.stdout.flush()
    names = list(candidates)
    worst = scenarios[0]
    judged = worst.difference < 0 and any(s.difference > 0 for s in scenarios)
    chosen = recommend(scenarios, results, candidates, args.bound, worst) if judged else None
    print()
    for name in dict.fromkeys(
        [n for n in names if n.endswith("(default)")] + ([chosen] if chosen else [])
    ):
        for design in designs:
            print_failures(name, design, scenarios, results[design.images])
    if chosen:
        print(f"\nrecommended default: {chosen}")
    evaluations = len(designs) * len(scenarios) * args.replications * len(settings)
    print(
        f"total                             {total.seconds:.1f} s "
        f"({evaluations} evaluations, {total.seconds / evaluations * args.workers:.2f} s each "
        "per process)"
    )


if __name__ == "__main__":
    main()
