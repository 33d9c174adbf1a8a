"""The promotion gate on synthetic paired scores: how often it promotes a challenger that is
truly worse, and how often one that is truly better, beside a plain point-estimate rule.

    uv run python bench/gate_simulation.py [--replications 400] [--images 2000]
    uv run python bench/gate_simulation.py -S gate.max_subgroup_drop=0.15   # explore a policy

Each replication draws a locked test set and the two models' scores on it, then runs the
production code path: `evaluate_on_test_set` (DeLong, lesion bootstrap of F1, subgroup
table) and `decide` with the default policy (`Params().gate.policy()`, evaluation settings
`Params().evaluate.settings(alpha=policy.alpha)`, 2,000 bootstrap iterations). The baseline,
judged on the very same reports, is a plain point-estimate rule: promote when the
challenger's F1 and ROC AUC are both higher, nothing else.

Scores follow a binormal model. An image's latent score is mu * label + e, e ~ N(0, 1), so
a model's true ROC AUC is Phi(mu / sqrt(2)); the champion's and the challenger's errors
are correlated (rho: two CNNs trained on overlapping data rank cases alike), and images of
one lesion share the label and part of the error. Lesion sizes (1-4 images) follow
HAM10000's, per class; sex, age and body site follow HAM10000's shares per lesion and are
independent of the scores, so the subgroup rule runs as in production. Each model's
probability is Phi(latent - c), c set so that its true sensitivity at the operating
threshold 0.5 is --sensitivity (both models alike, well above the 0.80 floor): a better
ranking then shows as a better specificity, hence a better F1.

Targets (the issue): truly worse by 0.02 ROC AUC, the default policy promotes at most 5% of
the time; truly better by 0.03 with 2,000 test images, at least 80% of the time.
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
from pipelines.gate import Decision, GatePolicy, decide
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


@dataclass(frozen=True)
class Scenario:
    name: str
    challenger_auc: float
    target: str
    bound: float
    """the default policy's promotion rate must be <= bound ("at most") or >= ("at least")"""


@dataclass(frozen=True)
class Outcome:
    promoted: bool
    point_promoted: bool
    failed: tuple[str, ...]
    judged_subgroups: int
    melanoma: int
    lesions: int
    auc_difference: float
    auc_standard_error: float
    """DeLong's, which takes the images as independent"""
    f1_difference: float
    f1_standard_error: float
    """the bootstrap interval's half-width over z (lesions resampled)"""


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)

    def rate(self, point: bool = False) -> tuple[int, int]:
        hits = sum(o.point_promoted if point else o.promoted for o in self.outcomes)
        return hits, len(self.outcomes)


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


def replicate(
    design: Design,
    challenger_auc: float,
    policy: GatePolicy,
    settings: EvaluationSettings,
    seed: int,
    index: int,
) -> Outcome:
    """One test set through evaluate_on_test_set and decide. The same (seed, index) draws
    the same test set and errors in every scenario (common random numbers)."""
    rng = np.random.default_rng([seed, index])
    cases = draw_test_set(design, rng)
    lesion_index = pd.factorize(cases["lesion_id"])[0].astype(np.int64)
    e_champion, e_challenger = draw_latent_errors(design, lesion_index, rng)
    label = cases["label"].to_numpy(dtype=np.float64)
    champion_auc = design.champion_auc
    champion = special.ndtr(design.mu(champion_auc) * label + e_champion - design.cut(champion_auc))
    challenger = special.ndtr(
        design.mu(challenger_auc) * label + e_challenger - design.cut(challenger_auc)
    )
    report = evaluate_on_test_set(
        f"synthetic-{index}",
        cases,
        ScoredModel("synthetic:challenger", None, THRESHOLD, challenger),
        ScoredModel("synthetic:champion", "1", THRESHOLD, champion),
        settings,
    )
    decision = decide(report.challenger, report.versus, policy)
    versus = report.versus
    assert versus is not None and versus.auc is not None
    return Outcome(
        promoted=decision.promote,
        point_promoted=point_rule(report),
        failed=failed_rules(decision),
        judged_subgroups=judged_subgroups(report),
        melanoma=report.test_melanoma,
        lesions=report.test_lesions,
        auc_difference=versus.auc.difference,
        auc_standard_error=versus.auc.standard_error,
        f1_difference=versus.f1.difference,
        f1_standard_error=(versus.f1.ci_high - versus.f1.ci_low)
        / (2 * float(stats.norm.ppf(0.5 + versus.f1.confidence / 2))),
    )


def _replicate_many(
    design: Design,
    challenger_auc: float,
    policy: GatePolicy,
    settings: EvaluationSettings,
    seed: int,
    indices: list[int],
) -> list[Outcome]:
    return [replicate(design, challenger_auc, policy, settings, seed, i) for i in indices]


def wilson(hits: int, n: int) -> tuple[float, float]:
    """Wilson score interval of a proportion, 95%."""
    rate = wilson_interval(hits, n, 0.95)
    return (0.0, 1.0) if rate.low is None or rate.high is None else (rate.low, rate.high)


def rate_text(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits / n:6.1%}  [{low:5.1%}, {high:5.1%}]  ({hits}/{n})"


def verdict(hits: int, n: int, scenario: Scenario) -> str:
    rate = hits / n
    low, high = wilson(hits, n)
    if scenario.target == "at most":
        passed, settled = rate <= scenario.bound, high <= scenario.bound or low > scenario.bound
    else:
        passed, settled = rate >= scenario.bound, low >= scenario.bound or high < scenario.bound
    note = "" if settled else " (the 95% interval straddles the target: more replications)"
    return ("PASS" if passed else "FAIL") + note


def run_scenario(
    design: Design,
    scenario: Scenario,
    policy: GatePolicy,
    settings: EvaluationSettings,
    args: argparse.Namespace,
) -> tuple[Tally, float]:
    indices = list(range(args.replications))
    chunks = [indices[k :: args.workers] for k in range(args.workers)]
    tally = Tally()
    with Stopwatch() as watch:
        if args.workers == 1:
            tally.outcomes = _replicate_many(
                design, scenario.challenger_auc, policy, settings, args.seed, indices
            )
        else:
            with ProcessPoolExecutor(args.workers) as pool:
                futures = [
                    pool.submit(
                        _replicate_many,
                        design,
                        scenario.challenger_auc,
                        policy,
                        settings,
                        args.seed,
                        chunk,
                    )
                    for chunk in chunks
                ]
                for future in futures:
                    tally.outcomes += future.result()
    return tally, watch.seconds


def print_design(
    design: Design,
    scenarios: list[Scenario],
    policy: GatePolicy,
    settings: EvaluationSettings,
    overrides: list[str],
    args: argparse.Namespace,
) -> None:
    print("design")
    print(f"  test images per replication     {design.images}")
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
        (f"challenger, {s.name}", s.challenger_auc) for s in scenarios
    ]:
        sens, spec, f1 = design.true_metrics(auc)
        print(f"    {name:<29} {sens:11.3f}  {spec:11.3f}  {f1:.3f}  {auc:.3f}")
    print(
        f"  policy                          ROC AUC {policy.roc_auc.mode.value} "
        f"(margin {policy.roc_auc.margin:g}), F1 {policy.f1.mode.value} "
        f"(margin {policy.f1.margin:g}), alpha {policy.alpha:g},"
    )
    print(
        f"                                  sensitivity floor {policy.sensitivity_floor:g}, "
        f"subgroup drop <= {policy.max_subgroup_drop:g} in "
        f"{'/'.join(policy.subgroup_metrics)}"
    )
    print(
        f"  evaluation                      {settings.bootstrap_iterations} bootstrap "
        f"iterations over lesions; subgroups judged from {settings.min_subgroup_images} "
        f"images and {settings.min_subgroup_melanoma} melanoma"
    )
    print(
        "  parameters                      "
        + ("; ".join(overrides) if overrides else "the defaults (Params())")
    )
    print(
        f"  replications                    {args.replications} per scenario, seed {args.seed}, "
        f"{args.workers} worker process(es)"
    )


def print_scenario(
    scenario: Scenario, tally: Tally, seconds: float, workers: int, policy_name: str
) -> None:
    outcomes = tally.outcomes
    n = len(outcomes)
    policy_hits, _ = tally.rate()
    point_hits, _ = tally.rate(point=True)
    print()
    print(f"challenger {scenario.name} (ROC AUC {scenario.challenger_auc:.3f})")
    melanoma = np.mean([o.melanoma for o in outcomes])
    lesions = np.mean([o.lesions for o in outcomes])
    judged = np.mean([o.judged_subgroups for o in outcomes])
    print(
        f"  per test set (mean)             {melanoma:.0f} melanoma, {lesions:.0f} lesions, "
        f"{judged:.1f} subgroups judged"
    )
    for name, values, errors, method in [
        ("ROC AUC", [o.auc_difference for o in outcomes],
         [o.auc_standard_error for o in outcomes], "DeLong SE"),
        ("F1", [o.f1_difference for o in outcomes],
         [o.f1_standard_error for o in outcomes], "bootstrap SE"),
    ]:  # fmt: skip
        spread = float(np.std(values, ddof=1)) if n > 1 else float("nan")
        print(
            f"  {name + ' difference':<31} {np.mean(values):+.4f} mean, {spread:.4f} sd over "
            f"test sets; {method} {np.mean(errors):.4f} mean"
        )
    print(f"  promoted, {policy_name:<21} {rate_text(policy_hits, n)}")
    print(f"  promoted, point-estimate rule   {rate_text(point_hits, n)}")
    if point_hits:
        print(f"  ratio policy / point rule       {policy_hits / point_hits:6.2f}")
    print(
        f"  target                          {policy_name} {scenario.target} "
        f"{scenario.bound:.0%}: {verdict(policy_hits, n, scenario)}"
    )
    print(f"  same target, point rule         {verdict(point_hits, n, scenario).split(' ')[0]}")
    failures = Counter(rule for o in outcomes for rule in o.failed)
    if failures:
        print("  rules failed (share of all replications; one may fail several)")
        for rule, count in failures.most_common():
            print(f"    {rule:<40} {count / n:6.1%}")
    print(
        f"  seconds per replication         {seconds / n * workers:.3f} per process "
        f"({n} in {seconds:.1f} s wall on {workers} process(es))"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replications", type=int, default=400, help="per scenario")
    parser.add_argument("--images", type=int, default=2000, help="test images per replication")
    parser.add_argument(
        "--prevalence", type=float, default=0.2, help="melanoma share of the test images"
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
    parser.add_argument("--worse", type=float, default=0.02, help="ROC AUC below the champion")
    parser.add_argument("--better", type=float, default=0.03, help="ROC AUC above the champion")
    parser.add_argument(
        "--scenario", choices=("both", "worse", "better"), default="both", help="which to run"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "-S",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a gate./evaluate. parameter, as `cme evaluate -S` does",
    )
    args = parser.parse_args()
    if args.replications < 1 or args.workers < 1 or args.images < 20:
        parser.error("--replications and --workers must be >= 1, --images >= 20")
    if not (0 < args.prevalence < 1 and -1 < args.rho < 1 and 0 <= args.lesion_correlation < 1):
        parser.error("--prevalence in (0, 1), --rho in (-1, 1), --lesion-correlation in [0, 1)")
    # Without overrides: the embedded defaults, Params(); params.yaml holds the same values.
    params = load_params(Path("<defaults>"), args.overrides) if args.overrides else Params()
    policy = params.gate.policy()
    settings = params.evaluate.settings(alpha=policy.alpha)
    design = Design(
        images=args.images,
        prevalence=args.prevalence,
        rho=args.rho,
        lesion_correlation=args.lesion_correlation,
        sensitivity=args.sensitivity,
        champion_auc=args.champion_auc,
    )
    scenarios = [
        Scenario(f"worse by {args.worse:g}", args.champion_auc - args.worse, "at most", 0.05),
        Scenario(f"better by {args.better:g}", args.champion_auc + args.better, "at least", 0.80),
    ]
    if args.scenario != "both":
        scenarios = [s for s in scenarios if s.name.startswith(args.scenario)]
    print_design(design, scenarios, policy, settings, args.overrides, args)
    with Stopwatch() as total:
        for scenario in scenarios:
            tally, seconds = run_scenario(design, scenario, policy, settings, args)
            name = "policy with -S" if args.overrides else "default policy"
            print_scenario(scenario, tally, seconds, args.workers, name)
    print()
    print(f"total                             {total.seconds:.1f} s")


if __name__ == "__main__":
    main()
