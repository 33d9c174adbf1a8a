"""A real `mlflow server` process for tests that need the tracking server itself (its REST
API, its artifact proxy, its UI), not the embedded stores.

Use the session fixture from a test module with
    from tests.mlflow_server import mlflow_server  # noqa: F401
or `start_mlflow_server(folder)` directly for a server of one's own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 90.0
MLFLOW_ENTRYPOINT = Path(__file__).resolve().parents[1] / "docker" / "mlflow" / "serve.sh"
STOP_GRACE_S = 10.0
WEBHOOK_DELIVERY = {
    # As docker/compose.yaml runs it: webhooks to the receiver on a private address, over
    # plain HTTP inside the host, their secrets stored encrypted with a key of the server's.
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    # A Fernet key (32 bytes, URL-safe base64), for tests only.
    "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "Y21lLXRlc3Qtb25seS13ZWJob29rLXNlY3JldC1rZXk=",
    # Tests register a webhook and act at once: the server's list of webhooks, cached per
    # event for 60 s by default, is read again each second.
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


@dataclass(frozen=True)
class MlflowServer:
    url: str
    """http://127.0.0.1:PORT"""
    backend_store_uri: str
    """sqlite:///.../mlflow.db"""
    artifacts_dir: Path
    log_file: Path
    start_seconds: float
    """How long the server took to answer /health."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (uvicorn and its worker), SIGKILL after a grace."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_GRACE_S)
    # The worker may outlive its parent by a moment; make sure nothing of the group is left.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def start_mlflow_server(
    folder: Path, basic_auth_admin_password: str | None = None
) -> Iterator[MlflowServer]:
    """Start `mlflow server` on a free port of 127.0.0.1 with a SQLite store and proxied
    artifacts under `folder`; yield once GET /health answers; stop it on exit. With an admin
    password, the server runs MLflow's basic-auth app (user store under `folder` too), as
    docker/mlflow/serve.sh configures it: everyone signed in reads, grants decide writes."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts_dir = folder / "artifacts"
    artifacts_dir.mkdir(exist_ok=True)
    backend_store_uri = f"sqlite:///{folder / 'mlflow.db'}"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = folder / "mlflow-server.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(artifacts_dir),
        "--serve-artifacts",
        "--workers",
        "1",
    ]
    # The server's own environment: no tracking URI of the caller's leaks into it, and no
    # job execution (GenAI evaluation/scorer jobs): its seven huey consumer processes would
    # import MLflow alongside the server, slowing its start, and leave stores in /dev/shm.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    env |= WEBHOOK_DELIVERY
    if basic_auth_admin_password is not None:  # the production entrypoint, on SQLite here
        command = ["sh", str(MLFLOW_ENTRYPOINT)]
        env |= {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(port),
            "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
            "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{folder / 'basic_auth.db'}",
            "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts_dir),
            "MLFLOW_AUTH_ADMIN_PASSWORD": basic_auth_admin_password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-secret",
            "MLFLOW_AUTH_CONFIG_DIR": str(folder),
            "MLFLOW_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
            "MLFLOW_WORKERS": "1",
        }
    started = time.monotonic()
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=folder,  # anything the server writes relative to its cwd stays in folder
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so that _stop reaches the worker
        )
    try:
        deadline = started + START_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {process.returncode} before answering "
                    f"{url}/health; its log ({log_file}):\n{_tail(log_file)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer {url}/health within {START_TIMEOUT_S:.0f} s; "
                    f"its log ({log_file}):\n{_tail(log_file)}"
                )
            time.sleep(0.2)
        yield MlflowServer(
            url=url,
            backend_store_uri=backend_store_uri,
            artifacts_dir=artifacts_dir,
            log_file=log_file,
            start_seconds=time.monotonic() - started,
        )
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One real MLflow tracking server for the test session (per xdist worker)."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
