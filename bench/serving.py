"""Real-time predictions on this CPU: single-image latency (p50, p99) and batch throughput of
the served endpoint (`cme serve`, prediction log on), and the ratio of in-process batch
throughput (what `cme predict` does) to the endpoint's.

    uv run python bench/serving.py [--image-size 224] [--requests 200] [--batch 32] [--data DIR]

The model is a ResNet50 at the production image size with untrained weights (what it
predicts does not change what it costs), registered as champion in a fresh installation
with embedded stores. Images are the generated 128-px JPEGs, or those of --data (HAM10000
layout). The baseline runs in this process: the same images through the loaded model, as
`cme predict` does, taking turns with the served endpoint request by request."""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from _support import Stopwatch  # noqa: E402


def installation(folder: Path) -> dict[str, str]:
    """A fresh installation in `folder`; this process's settings point at it too."""
    for name in [n for n in os.environ if n.startswith(("CME_", "MLFLOW_"))]:
        del os.environ[name]
    os.environ["CME_HOME"] = str(folder / ".cme")
    return dict(os.environ)


def register_champion(image_size: int, example: bytes) -> str:
    import keras
    import mlflow

    from cme.bootstrap import bootstrap
    from pipelines.training.config import TrainConfig
    from pipelines.training.model import build_classifier
    from pipelines.training.tracking import log_classifier
    from registry.models import CHAMPION

    app = bootstrap()
    app.tracking()
    keras.utils.set_random_seed(0)
    config = TrainConfig(image_size=image_size, weights="none", unfreeze_from="all")
    with mlflow.start_run() as run:
        model_uri = log_classifier(build_classifier(config, None), image_size, 0.5, example)
    models = app.models()
    version = models.register(model_uri, run.info.run_id, {"threshold": "0.5"}).version
    models.set_alias(CHAMPION, version)
    return f"models:/{app.settings.model_name}/{version}"


def sample_images(data: Path | None, folder: Path, count: int) -> list[bytes]:
    if data is None:
        from usecases.sample_data import SampleSpec, write_sample_data

        write_sample_data(folder, SampleSpec(n=count, seed=3, image_size=128))
        data = folder
    files = sorted((data / "images").glob("*.jpg"))[:count]
    return [path.read_bytes() for path in files]


def request_body(images: list[bytes]) -> bytes:
    rows = [[base64.b64encode(image).decode()] for image in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def post(url: str, body: bytes) -> None:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        response.read()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def alternated(
    first: Callable[[list[bytes]], Any],
    second: Callable[[list[bytes]], Any],
    requests: list[list[bytes]],
) -> tuple[list[float], list[float]]:
    """Seconds each call took, the two calls taking turns on each request."""
    times: tuple[list[float], list[float]] = ([], [])
    for images in requests:
        for call, measured in zip((first, second), times, strict=True):
            with Stopwatch() as watch:
                call(images)
            measured.append(watch.seconds)
    return times


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "cme", "serve", "--port", str(port)]
    with log.open("wb") as output:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output,
                                  stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            assert server.poll() is None, log.read_text()
            time.sleep(0.5)
    raise SystemExit(f"cme serve did not answer within 300 s: see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--data", type=Path, default=None)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="cme-bench-serving-"))
    try:
        env = installation(folder)
        images = sample_images(args.data, folder / "images-set", args.batch * args.batches)
        uri = register_champion(args.image_size, images[0])

        from usecases.serving import load_served_model, predict_files

        served = load_served_model(uri)
        singles = [[images[i % len(images)]] for i in range(args.requests)]
        batches = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]

        def in_process(many: list[bytes]) -> None:  # what `cme predict` does once loaded
            predict_files(served, [(str(i), image) for i, image in enumerate(many)])

        port = free_port()
        url = f"http://127.0.0.1:{port}/invocations"
        server = start_server(env, port, folder / "serve.log")
        try:
            in_process(images[:1])  # warm-ups
            post(url, request_body(images[:1]))
            # Alternated request by request, so both see the same machine (its noise and
            # whatever else runs on it) and neither is favoured by running first.
            local_single, served_single = alternated(
                in_process, lambda one: post(url, request_body(one)), singles
            )
            local_batch, served_batch = alternated(
                in_process, lambda many: post(url, request_body(many)), batches
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        report(args, local_single, local_batch, served_single, served_batch)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def report(
    args: argparse.Namespace,
    local_single: list[float],
    local_batch: list[float],
    served_single: list[float],
    served_batch: list[float],
) -> None:
    def ms(values: list[float], share: float) -> str:
        return f"{percentile(values, share) * 1000:.1f} ms"

    served_throughput = args.batch * len(served_batch) / sum(served_batch)
    local_throughput = args.batch * len(local_batch) / sum(local_batch)
    p50, p99 = percentile(served_single, 0.5), percentile(served_single, 0.99)
    local_p50 = percentile(local_single, 0.5)
    mean = statistics.mean(served_single) * 1000
    lines = [
        f"ResNet50 at {args.image_size} px on {os.cpu_count()} CPU cores; {args.requests} "
        f"single-image requests, {len(served_batch)} batches of {args.batch}",
        f"served single-image latency: p50 {ms(served_single, 0.5)}, "
        f"p99 {ms(served_single, 0.99)} (mean {mean:.1f} ms)",
        f"  baseline, in process: p50 {ms(local_single, 0.5)}, p99 {ms(local_single, 0.99)}; "
        f"served p50 is {p50 / local_p50:.2f}x it (HTTP, JSON, base64, log)",
        f"served batch throughput: {served_throughput:.1f} images/s",
        f"  `cme predict` in-process batch throughput: {local_throughput:.1f} images/s; "
        f"in-process / served = {local_throughput / served_throughput:.2f}",
        f"  p99 / p50 of the served single-image latency: {p99 / p50:.2f}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
