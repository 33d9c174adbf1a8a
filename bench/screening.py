"""Pre-screening throughput on this CPU: `cme screen` (the batch-screening flow on an embedded
Dask LocalCluster) with 1 and with 2 workers, against in-process scoring of the same images
with the same model (what `cme predict` does), in one run.

    uv run python bench/screening.py --data ../shared/data/ham10000 [--sizes 224 64]
        [--limit 10015] [--batch-size 256]

For each image size, a fresh installation with embedded stores registers an untrained
ResNet50 (what it predicts does not change what it costs) as champion. The baseline loads
the model, then scores the images in batches of --batch-size in this process (model loading
not counted). Each flow run is timed from the command's start to its end (the Prefect
server, the Dask cluster, every worker's TensorFlow and model loading included) and screens
the images as a patient of its own, so that no run finds them scored by another. Prints
images/s, the ratios (goals: 1 worker >= 0.9x in-process, 2 workers >= 1.7x 1 worker) and
the flow's overhead per image."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
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


def screen_seconds(env: dict[str, str], manifest: Path, workers: int, batch_size: int,
                   log: Path) -> float:  # fmt: skip
    command = [sys.executable, "-m", "cme", "screen", str(manifest), "--patient", f"w{workers}",
               "--workers", str(workers), "--batch-size", str(batch_size),
               "--out", str(log.with_suffix("")), "--format", "csv"]  # fmt: skip
    with Stopwatch() as watch, log.open("w") as output:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=output, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"cme screen failed ({done.returncode}): see {log}")
    return watch.seconds


def flow_rate(log: Path) -> float:
    """The rate of the run's last progress line ("..., 78.7 images/s")."""
    found = re.findall(r"([0-9.]+) images/s", log.read_text())
    return float(found[-1]) if found else float("nan")


def bench_size(image_size: int, files: list[Path], batch_size: int, folder: Path) -> None:
    env = installation(folder)
    model_uri = register_champion(image_size, files[0].read_bytes())
    manifest = folder / "manifest.csv"
    lines = ["image,patient_id"] + [f"{p},w{w}" for w in (1, 2) for p in files]
    manifest.write_text("\n".join(lines) + "\n")
    baseline = in_process_rate(model_uri, files, batch_size)
    n = len(files)
    one = n / screen_seconds(env, manifest, 1, batch_size, folder / "one-worker.log")
    two = n / screen_seconds(env, manifest, 2, batch_size, folder / "two-workers.log")
    flow_one, flow_two = (flow_rate(folder / log) for log in ("one-worker.log", "two-workers.log"))
    print(f"\n{image_size} px, {n:,} images, batches of {batch_size}, {os.cpu_count()} cores")
    print(f"  in-process (cme predict's way): {baseline:7.1f} images/s")
    print(
        f"  cme screen, 1 Dask worker:      {one:7.1f} images/s  {one / baseline:.2f}x in-process"
        f"  (goal >= 0.9x); overhead {1000 * (1 / one - 1 / baseline):.1f} ms an image"
    )
    print(
        f"  cme screen, 2 Dask workers:     {two:7.1f} images/s  {two / one:.2f}x 1 worker"
        f"  (goal >= 1.7x); overhead {1000 * (1 / two - 1 / baseline):.1f} ms an image"
    )
    print(f"  the flows' own rate, first batch sent to last done (the workers' model loading "
          f"included, not the server's or cluster's start): 1 worker {flow_one:.1f} images/s "
          f"({flow_one / baseline:.2f}x in-process), 2 workers {flow_two:.1f} "
          f"({flow_two / flow_one:.2f}x 1 worker)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--limit", type=int, default=None, help="the first N images only")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    files = sorted((args.data / "images").glob("*.jpg"))[: args.limit]
    if not files:
        raise SystemExit(f"no images under {args.data / 'images'}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"cme-bench-screening-{size}-") as folder:
            bench_size(size, files, args.batch_size, Path(folder))


if __name__ == "__main__":
    main()
