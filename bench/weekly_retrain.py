"""The weekly retrain's orchestration overhead: the share of a weekly run spent outside the
domain work, and the wall time of `cme demo`.

    uv run python bench/weekly_retrain.py [--images 200] [--demo]

Overhead: one week of generated labels (the demo's week 1, its training overrides) is
retrained twice in this process, each time in a fresh installation:
  * baseline: the domain functions called one after the other (pull, validate, snapshot,
    train, evaluate, gate, register): what the flow's tasks call, without Prefect;
  * flow: the `weekly-retrain` flow on Prefect's temporary local server (started, and
    its database migrated, before the clock starts: `cme retrain` pays that once per call).
Both runs start after the same warm-up (libraries imported, server up). The flow's overhead
is its wall time minus the time its tasks spent running (Prefect's own task-run timings);
its ratio to the baseline is printed too (the two differ by training's own variance).

--demo also times `cme demo` (three weeks, a fresh project folder, its own process: the
Prefect server start included) against the issue's budget of 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUDGET_S = 600.0
STEPS = {"pull new labels", "validate", "snapshot", "train", "evaluate", "gate", "register"}
sys.path.insert(0, str(Path(__file__).parent))

from _support import Stopwatch  # noqa: E402


def installation(folder: Path) -> None:
    """Point this process's settings at a fresh installation in `folder`."""
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", folder)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=folder,
                   check=True)  # fmt: skip
    for name in [n for n in os.environ if n.startswith(("CME_", "MLFLOW_"))]:
        del os.environ[name]
    os.environ.update(
        CME_HOME=str(folder / ".cme"),
        CME_DATA_DIR=str(folder / "data"),
        CME_PROJECT_DIR=str(folder),
        CME_PARAMS_FILE=str(folder / "params.yaml"),
    )


def register_week(export: Path) -> None:
    from cme.bootstrap import bootstrap

    app = bootstrap()
    try:
        app.label_registry().import_metadata(
            export / "metadata.csv", export / "images", steward="bench"
        )
    finally:
        app.close()


def direct_week(overrides: list[str]) -> float:
    """The weekly retrain's domain calls, in order, without Prefect."""
    from cme.bootstrap import bootstrap
    from usecases import challenger_evaluation, challenger_training, retrain_steps, snapshots

    with Stopwatch() as watch:
        app = bootstrap()
        params = app.params(overrides)
        pull = retrain_steps.pull_new_labels(app, params)
        retrain_steps.validate_new_labels(app, params, pull)
        frozen = snapshots.take_snapshot(app, params, steward="bench", manifest=pull.manifest)
        run = challenger_training.train(app, params, snapshot_id=frozen.record.snapshot_id)
        result = challenger_evaluation.evaluate(app, params, run_id=run.run_id)
        decision = challenger_evaluation.judge(result, params)
        challenger_evaluation.register(app, params, result, decision, actor="bench")
        app.close()
    return watch.seconds


def flow_week(overrides: list[str]) -> tuple[float, float, str]:
    """The flow's wall time, the time its tasks spent running, and its final state."""
    from flows.weekly_retrain import weekly_retrain

    with Stopwatch() as watch:
        state: Any = weekly_retrain(overrides=overrides, steward="bench", return_state=True)
    return watch.seconds, _task_seconds(state.state_details.flow_run_id), state.name


def _task_seconds(flow_run_id: Any) -> float:
    """Running time of every task of the flow run and of its subflow runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, TaskRunFilter

    with get_client(sync_client=True) as client:
        runs = [flow_run_id]
        runs += [run.id for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id={"any_": [flow_run_id]}))]  # fmt: skip
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": runs}),
                                      task_run_filter=TaskRunFilter())  # fmt: skip
    # A subflow also shows as a task run of its parent (named after the subflow): skip it.
    return sum(t.total_run_time.total_seconds() for t in tasks
               if t.name.rsplit("-", 1)[0] in STEPS)  # fmt: skip


def warm_up(home: Path) -> None:
    """Before any clock runs: Prefect's temporary server started (and migrated), and the
    heavy libraries both runs use imported, so that neither run pays for them."""
    from cme.orchestration import use_prefect
    from cme.settings import Settings

    use_prefect(Settings(home=home))
    import great_expectations  # noqa: F401
    import mlflow.pyfunc  # noqa: F401
    from prefect import flow

    import pipelines.training.fit  # noqa: F401 (TensorFlow, Keras)

    flow(name="warm-up")(lambda: None)()


def overhead(images: int, scratch: Path) -> None:
    from cme.demo import DEMO_OVERRIDES, FIRST_SEED
    from usecases.sample_data import SampleSpec, write_sample_data

    overrides = list(DEMO_OVERRIDES)
    export = scratch / "week1"
    write_sample_data(export, SampleSpec(n=images, seed=FIRST_SEED))
    warm_up(scratch / "prefect-home")

    installation(scratch / "direct")
    register_week(export)
    baseline = direct_week(overrides)

    installation(scratch / "flow")
    register_week(export)
    wall, in_tasks, state = flow_week(overrides)

    outside = wall - in_tasks
    print(f"weekly retrain of {images} generated images, demo training overrides")
    print(f"  baseline, domain calls without Prefect: {baseline:8.1f} s")
    print(f"  weekly-retrain flow ({state}):        {wall:8.1f} s  ({wall / baseline:.3f}x)")
    print(f"  of which tasks running:                {in_tasks:8.1f} s")
    print(f"  outside the domain work:               {outside:8.1f} s  "
          f"({outside / wall:.1%} of the run)")  # fmt: skip


def demo(scratch: Path) -> None:
    project = scratch / "demo"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--quiet"], cwd=project,
                   check=True)  # fmt: skip
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("CME_", "MLFLOW_", "PREFECT_"))}  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cme", "demo"], cwd=project, env=environment,
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"cme demo failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    decisions = [line for line in done.stdout.splitlines() if line.startswith(("week", "champ"))]
    print("\n".join(decisions))
    print(f"cme demo, three weeks from a fresh folder: {seconds:.0f} s "
          f"({seconds / DEMO_BUDGET_S:.2f}x the {DEMO_BUDGET_S:.0f} s budget)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--demo", action="store_true", help="also time `cme demo`")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cme-bench-") as folder:
        scratch = Path(folder)
        if arguments.demo:
            demo(scratch)
        overhead(arguments.images, scratch)


if __name__ == "__main__":
    main()
