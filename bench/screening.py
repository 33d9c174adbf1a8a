"""Pre-screening throughput on this CPU: `cme screen` (the batch-screening flow on an embedded
Dask LocalCluster) with 1 and with 2 workers, against in-process scoring of the same images
with the same model (what `cme predict` does), in one run.

    uv run python bench/screening.py --data ../shared/data/ham10000 [--sizes 224 64]
        [--limit 10015] [--batch-size 256]

For each image size, a fresh installation with embedded stores registers an untrained
ResNet50 (what it predicts does not change what it costs) as champion and screens a few
images once, untimed, as a clinic's installation has before (Prefect's database created,
the screening tables made). Two baselines score the same images in one process: scoring in
batches of --batch-size with the model loaded beforehand, and `cme predict` end to end (its
start, TensorFlow and the model's loading included). Each flow run is timed from the
command's start to its end (the Prefect server, the Dask cluster, every worker's TensorFlow
and model loading included), and its steady rate from the moment every worker has finished
its first batch to the last batch; each screens the images as a patient of its own, so
that no run finds them scored by another. Prints images/s, the ratios (goals: 1 worker
>= 0.9x in-process, 2 workers >= 1.7x 1 worker) and the flow's overhead per image."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from argparse import SUPPRESS
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _support import Stopwatch
from serving import ROOT, installation, register_champion


def in_process_rate(model_uri: str, files: list[Path], batch_size: int) -> float:
    from usecases.serving import load_served_model, predict_files

    served = load_served_model(model_uri)
    predict_files(served, [(files[0].name, files[0].read_bytes())])  # the graph, built once
    with Stopwatch() as watch:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            _, refused = predict_files(served, [(p.name, p.read_bytes()) for p in chunk])
            assert not refused, refused[:3]
    return len(files) / watch.seconds


def screen_seconds(env: dict[str, str], manifest: Path, patient: str, workers: int,
                   batch_size: int, log: Path) -> float:  # fmt: skip
    command = [sys.executable, "-m", "cme", "screen", str(manifest), "--patient", patient,
               "--workers", str(workers), "--batch-size", str(batch_size),
               "--out", str(log.with_suffix("")), "--format", "csv"]  # fmt: skip
    return command_seconds(command, env, log)


def command_seconds(command: list[str], env: dict[str, str], log: Path) -> float:
    with Stopwatch() as watch, log.open("w") as output:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=output, check=False)  # fmt: skip
    if done.returncode != 0:  # the log goes with the temporary folder: its end, here
        ending = "\n".join(log.read_text().splitlines()[-40:])
        raise SystemExit(f"{command[2:4]} failed ({done.returncode}):\n{ending}")
    return watch.seconds


def predict_command_rate(env: dict[str, str], files: list[Path], log: Path) -> float:
    """`cme predict` over every file, end to end (the CLI's start and the model's loading
    included), logging its predictions as `cme screen` does."""
    command = [sys.executable, "-m", "cme", "predict", *map(str, files), "--format", "csv",
               "--log-predictions"]  # fmt: skip
    return len(files) / command_seconds(command, env, log)


PROGRESS = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) .*batches \d+: ([\d,]+) of", re.MULTILINE)


def steady_rate(log: Path, workers: int) -> float:
    """Images/s once every worker is warm: from the `workers`-th batch done (the workers'
    first batches end about together) to the last, by the times of the progress lines."""
    lines = [(3600 * int(h) + 60 * int(m) + float(s), int(done.replace(",", "")))
             for h, m, s, done in PROGRESS.findall(log.read_text())]  # fmt: skip
    if len(lines) <= workers or lines[-1][0] <= lines[workers - 1][0]:
        return float("nan")
    start = lines[workers - 1]
    return (lines[-1][1] - start[1]) / (lines[-1][0] - start[0])


def bench_size(image_size: int, files: list[Path], batch_size: int, folder: Path) -> None:
    env = installation(folder)
    model_uri = register_champion(image_size, files[0].read_bytes())
    manifest = folder / "manifest.csv"
    patients = ("first-run", "w1", "w2")
    lines = ["image,patient_id"] + [f"{p},{who}" for who in patients for p in files]
    manifest.write_text("\n".join(lines) + "\n")
    first_run = folder / "first-run.csv"
    first_run.write_text("\n".join(lines[: 1 + min(len(files), 8)]) + "\n")
    screen_seconds(env, first_run, "first-run", 1, batch_size, folder / "first-run.log")
    baseline = in_process_rate(model_uri, files, batch_size)
    one_thread = one_thread_rate(env, model_uri, files, batch_size, folder)
    command = predict_command_rate(env, files, folder / "predict.log")
    n = len(files)
    one = n / screen_seconds(env, manifest, "w1", 1, batch_size, folder / "one-worker.log")
    two = n / screen_seconds(env, manifest, "w2", 2, batch_size, folder / "two-workers.log")
    steady_one = steady_rate(folder / "one-worker.log", 1)
    steady_two = steady_rate(folder / "two-workers.log", 2)
    print(f"\n{image_size} px, {n:,} images, batches of {batch_size}, {os.cpu_count()} cores")
    print(f"  in-process, model loaded (cme predict's way): {baseline:7.1f} images/s")
    print(
        f"  in-process, TensorFlow on one thread:          {one_thread:7.1f} images/s "
        f"(the cores give {baseline / one_thread:.2f}x it: workers of one thread each can "
        f"reach {os.cpu_count()} x {one_thread:.1f} = "
        f"{(os.cpu_count() or 1) * one_thread / baseline:.2f}x in-process at most)"
    )
    print(f"  `cme predict` end to end:                      {command:7.1f} images/s")
    for label, rate in (("1 Dask worker: ", one), ("2 Dask workers:", two)):
        print(
            f"  cme screen end to end, {label} {rate:7.1f} images/s  {rate / baseline:.2f}x "
            f"in-process, {rate / command:.2f}x `cme predict`; overhead "
            f"{1000 * (1 / rate - 1 / baseline):.1f} ms an image"
        )
    print(f"  2 workers against 1, end to end: {two / one:.2f}x (goal >= 1.7x)")
    print(f"  steady rates, every worker warm (its first batch done) to the last batch: "
          f"1 worker {steady_one:.1f} images/s ({steady_one / baseline:.2f}x in-process; "
          f"goal >= 0.9x), 2 workers "
          f"{steady_two:.1f} ({steady_two / steady_one:.2f}x 1 worker)")  # fmt: skip


def one_thread_rate(
    env: dict[str, str], model_uri: str, files: list[Path], batch_size: int, folder: Path
) -> float:
    """`in_process_rate` in a process whose TensorFlow has one thread (its thread pools are
    fixed when it starts): what one worker of one core scores."""
    listed = folder / "files.txt"
    listed.write_text("\n".join(map(str, files)) + "\n")
    from flows.batch_screening import THREAD_SETTINGS

    threads = dict.fromkeys(THREAD_SETTINGS, "1")
    command = [sys.executable, __file__, "--one-thread", model_uri, str(listed),
               "--batch-size", str(batch_size)]  # fmt: skip
    done = subprocess.run(command, env=env | threads, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--limit", type=int, default=None, help="the first N images only")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--one-thread", nargs=2, metavar=("MODEL_URI", "FILES"), help=SUPPRESS)
    args = parser.parse_args()
    if args.one_thread:  # see one_thread_rate
        from cme.bootstrap import bootstrap

        bootstrap().tracking()  # the installation of CME_HOME
        model_uri, listed = args.one_thread
        print(in_process_rate(model_uri, [Path(p) for p in Path(listed).read_text().split()],
                              args.batch_size))  # fmt: skip
        return
    files = sorted((args.data.resolve() / "images").glob("*.jpg"))[: args.limit]
    if not files:
        raise SystemExit(f"no images under {args.data / 'images'}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"cme-bench-screening-{size}-") as folder:
            bench_size(size, files, args.batch_size, Path(folder))


if __name__ == "__main__":
    main()
