"""`cme retrain`, `cme inbox`, `cme deploy`, `cme demo`: the Prefect flows, run now in
this process or deployed on a schedule."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import typer

from cme.cli.common import EXIT_REFUSED, OVERRIDES, STEWARD, fail, progress
from cme.orchestration import PREFECT_FILE
from cme.settings import Settings

TRAINING_DEPLOYMENT = typer.Option(
    None,
    "--training-deployment",
    help="Train on this deployment's work pool (e.g. train-challenger/gpu) instead of here.",
)


def _prefect_ready() -> Settings:
    from cme.orchestration import use_prefect

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    use_prefect(settings)
    return settings


def _finished(state: Any) -> Any:
    """The flow's result, or exit 1 with its failure when the run failed."""
    if state.is_failed() or state.is_crashed() or state.is_cancelled():
        fail(f"{state.name}: {state.message}", EXIT_REFUSED)
    return state.result()


def retrain(
    steward: str | None = STEWARD,
    training_deployment: str | None = TRAINING_DEPLOYMENT,
    overrides: list[str] = OVERRIDES,
) -> None:
    """Run the weekly retrain now (pull new labels, validate, snapshot, train, evaluate, gate,
    register), as a Prefect flow in this process. Exit 0 when it ran or was skipped, 1 when
    it failed (e.g. validation: the report is under $CME_HOME/reports)."""
    _prefect_ready()
    from cme.cli.training import epoch_advanced
    from flows.training import EPOCHS
    from flows.weekly_retrain import weekly_retrain

    # The flow logs each epoch's line; on a terminal a bar below them (training here only).
    bar = progress("training", None, "epochs", time_left=False, plain_lines=False)
    with bar as advance, EPOCHS.watching(partial(epoch_advanced, advance)):
        state = weekly_retrain(
            overrides=overrides,
            steward=steward or "weekly-retrain",
            training_deployment=training_deployment,
            return_state=True,
        )
    for line in _finished(state).lines():
        typer.echo(line)


def inbox(steward: str | None = STEWARD, overrides: list[str] = OVERRIDES) -> None:
    """Import the lab exports waiting in the inbox ($CME_INBOX, default $CME_HOME/inbox):
    one folder each with metadata.csv and images/; moved to processed/ or failed/."""
    _prefect_ready()
    from flows.label_inbox import label_inbox

    state = label_inbox(steward=steward or "label-inbox", overrides=overrides, return_state=True)
    for line in _finished(state):
        typer.echo(line)


def deploy(
    prefect_file: Path = typer.Option(
        Path(PREFECT_FILE), "--prefect-file", help="The deployments to apply."
    ),
) -> None:
    """Create the `cpu` and `gpu` work pools and the crash detection of runs whose worker died
    if missing, and apply prefect.yaml's deployments
    (weekly retrain Monday 02:00 in $CME_SCHEDULE_TIMEZONE, promotion every 10 minutes,
    inbox hourly) to the Prefect server at PREFECT_API_URL."""
    from cme.orchestration import (
        CRASH_DETECTION,
        DeployFailed,
        ensure_crash_detection,
        ensure_work_pools,
    )
    from cme.orchestration import deploy as apply_deployments

    settings = _prefect_ready()
    for pool in ensure_work_pools():
        typer.echo(f"created work pool {pool}")
    created = ensure_crash_detection()
    typer.echo(f"automation {CRASH_DETECTION!r}: {'created' if created else 'exists'}")
    try:
        output = apply_deployments(settings, prefect_file)
    except DeployFailed as error:
        fail(str(error), EXIT_REFUSED)
    typer.echo(output.rstrip())


def demo(
    weeks: int = typer.Option(3, "--weeks", min=1, help="Weeks to live through."),
    first_week: int = typer.Option(200, "--first-week", min=20, help="Images in week 1."),
    later_weeks: int = typer.Option(100, "--later-weeks", min=20, help="Images a later week."),
    folder: Path = typer.Option(
        Path(".cme/demo"), "--folder", help="Where the generated exports are kept."
    ),
    overrides: list[str] = OVERRIDES,
) -> None:
    """Three weeks of the platform on generated images, through the real flows: each week a
    lab export lands in the inbox, the weekly retrain runs, a reviewer approves what the
    gate passed. Ends with the champion, every decision and how to open the UIs."""
    from cme import demo as life
    from cme.bootstrap import bootstrap

    settings = _prefect_ready()
    app = bootstrap(settings)
    try:
        sizes = life.week_sizes(weeks, first_week, later_weeks)
        every = [*life.DEMO_OVERRIDES, *overrides]
        life.run_demo(app, folder, sizes, every, on_week=lambda week: _echo(week.lines()))
        status = app.champions().status()
    except life.DemoFailed as error:
        fail(str(error), EXIT_REFUSED)
    finally:
        app.close()
    champion = status.champion
    typer.echo(f"champion: {'version ' + champion.version if champion else 'none'}")
    _echo(_ui_commands(settings))


def _echo(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


def _ui_commands(settings: Settings) -> list[str]:
    home = settings.home.resolve()
    return [
        "every decision with its evidence: uv run cme audit; the registry: uv run cme status",
        "the champion's answers: uv run cme predict IMAGE...; a server following it: "
        "uv run cme serve   (POST http://127.0.0.1:5001/invocations)",
        f"MLflow UI:  uv run mlflow ui --backend-store-uri {settings.mlflow_tracking_uri} "
        "--port 5000   (then http://127.0.0.1:5000)",
        f"Prefect UI: PREFECT_HOME={home / 'prefect'} uv run prefect server start "
        "--port 4200   (then http://127.0.0.1:4200)",
    ]


def backtest(
    data: Path = typer.Option(..., "--data", help="A labelled set: metadata.csv + images/."),
    weeks: int = typer.Option(8, "--weeks", min=1, help="Weekly arrivals to replay."),
    out: Path = typer.Option(
        Path(".cme/backtest"), "--out", help="A new folder for its installation and report."
    ),
    first_week_share: float | None = typer.Option(
        None, "--first-week-share", help="Share of the lesions arriving in week 1."
    ),
    seed: int = typer.Option(0, "--seed", help="Order in which lesions arrive."),
    overrides: list[str] = OVERRIDES,
    later: list[str] = typer.Option(
        [], "--later-weeks-set", help="A params override for week 2 on, e.g. train.epochs=6."
    ),
) -> None:
    """Replay a labelled set (e.g. ../shared/data/ham10000) as weekly arrivals of confirmed
    labels through the real weekly-retrain flow, in an installation of its own under --out;
    writes a report (PNG, HTML) of the champion's F1 and ROC AUC on the final locked test
    set week by week, with every gate decision."""
    from cme.bootstrap import bootstrap
    from usecases import backtest_replay as replay

    try:
        labelled = replay.read_labelled_set(data)
        batches = replay.arrivals(labelled, weeks, seed, first_week_share, replay.now())
        replay.enter_installation(out, Settings().params_file)
    except replay.BacktestFailed as error:
        fail(str(error))
    _prefect_ready()
    from pipelines.backtest import verdict

    app = bootstrap()
    try:
        params = app.params(overrides)
        replayed = []
        with progress("backtest", len(batches), "weeks") as advance:
            for number, batch in enumerate(batches, start=1):
                retrain = partial(
                    _weekly_retrain_state, overrides if number == 1 else [*overrides, *later]
                )
                week = replay.replay_week(app, params, number, batch, data / "images", retrain)
                typer.echo(f"week {number}: {len(batch)} labels arrived; " + _week_line(week))
                replayed.append(week)
                advance(number, f"champion {replayed[-1].champion or 'none'}")
        champions = {week.champion for week in replayed if week.champion}
        scored, test_images = replay.score_champions(app, champions)
    finally:
        app.close()
    results = replay.backtest_weeks(replayed, scored, test_images)
    files = replay.report(results, out, data, [*overrides, *(f"from week 2: {o}" for o in later)])
    typer.echo(verdict(results))
    typer.echo(f"report: {files.html} (chart {files.chart_png}, weeks {files.csv})")


def backtest_compare(
    arms: list[str] = typer.Argument(
        ..., help="NAME=FOLDER for each backtest to compare (its --out), e.g. loop=.cme/bt-a."
    ),
    out: Path = typer.Option(..., "--out", help="Where the chart and table go."),
) -> None:
    """Compare backtests of the same weeks run under different settings (the loop, warm-
    started from the champion, against restarting from the base weights every week): the
    champion of each by week on the final locked test set, in one chart and one table."""
    from pipelines.backtest import BACKTEST_JSON, arms_verdict, read_backtest, write_arms_report

    weeks = {}
    for arm in arms:
        name, _, folder = arm.partition("=")
        report = Path(folder) / "report" / BACKTEST_JSON
        if not name or not report.is_file():
            fail(f"{arm}: expected NAME=FOLDER with FOLDER/report/{BACKTEST_JSON}")
        weeks[name] = read_backtest(report)
    chart, table = write_arms_report(weeks, out, title="Backtest: " + " against ".join(weeks))
    typer.echo(arms_verdict(weeks))
    typer.echo(f"chart {chart}, table {table}")


def _weekly_retrain_state(overrides: list[str]) -> Any:
    from flows.weekly_retrain import weekly_retrain
    from usecases.backtest_replay import BACKTEST_STEWARD

    return weekly_retrain(overrides=overrides, steward=BACKTEST_STEWARD, return_state=True)


def _week_line(week: Any) -> str:
    if week.summary is None:
        return f"failed: {week.failure}"
    line = f"{week.summary.status}: {week.summary.message}"
    return f"{line}; {week.review}" if week.review else line
