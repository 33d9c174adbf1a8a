"""Prefect as the platform uses it: its temporary local server by default (no server to
start), or the server at PREFECT_API_URL; and the deployments of prefect.yaml."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

from cme.settings import Settings
from pipelines.errors import Refused

WORK_POOLS = ("cpu", "gpu")
PREFECT_FILE = "prefect.yaml"
CRASH_DETECTION = "cme: a run whose heartbeats stopped crashed"
MISSED_HEARTBEATS = 3  # a run silent this many heartbeats is gone, not slow
RUN_IS_ALIVE = ("heartbeat", "Completed", "Failed", "Cancelled", "Crashed")  # or over

T = TypeVar("T")


class DeployFailed(Refused):
    """`prefect deploy` refused the deployments; the message carries its output."""


def use_prefect(settings: Settings) -> None:
    """Call before importing prefect: without a server (PREFECT_API_URL), Prefect starts a
    temporary local one whose database lives under $CME_HOME/prefect, so that
    `prefect server start` with the same PREFECT_HOME later shows every run."""
    for name, value in prefect_environment(settings).items():
        os.environ.setdefault(name, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)


@contextmanager
def shared_prefect_server(meanwhile: AbstractContextManager[T]) -> Iterator[T]:
    """For flows whose tasks run in other processes (Dask workers): without PREFECT_API_URL,
    the temporary local server is started here and its URL exported, so that every process
    reports to it instead of each starting a temporary server of its own. `meanwhile` is
    entered while the server starts (its URL already exported) and left before it stops: e.g.
    Dask workers that load their model in the seconds the server takes to start."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if os.environ.get("PREFECT_API_URL") or get_current_settings().api.url:
        with meanwhile as entered:
            yield entered
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=_free_port())
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with ExitStack() as beside, ThreadPoolExecutor(1) as starting:
            started = starting.submit(server.start)
            entered = beside.enter_context(meanwhile)
            started.result()
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                yield entered
    finally:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # the run's last log lines and events, before
        EventsWorker.drain_all(timeout=10)  # the server they go to stops
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def _free_port() -> int:
    """A port free on this machine now (the server is told it before it starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def prefect_environment(settings: Settings) -> dict[str, str]:
    return {
        "PREFECT_HOME": str((settings.home / "prefect").resolve()),
        # The temporary server migrates its database on first start: slow on two cores.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def ensure_work_pools(pools: tuple[str, ...] = WORK_POOLS) -> list[str]:
    """Create the `process` work pools the deployments name, when missing; returns those
    created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    created: list[str] = []
    with get_client(sync_client=True) as client:
        for name in pools:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                continue
            created.append(name)
    return created


def ensure_crash_detection() -> bool:
    """The automation that marks a run Crashed when its heartbeats stop (its worker's machine
    died mid-run): without it the run stays Running forever, and so does the weekly retrain
    waiting on it. Its window is MISSED_HEARTBEATS times the heartbeat the workers use
    (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, the same setting here as on the workers). Returns
    whether it was created (False: it exists)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        if client.read_automations_by_name(name=CRASH_DETECTION):
            return False
    heartbeat = get_current_settings().flows.heartbeat_frequency or 60
    Automation(
        name=CRASH_DETECTION,
        description="Flow runs that stopped sending heartbeats are marked Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={f"prefect.flow-run.{event}" for event in RUN_IS_ALIVE},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=MISSED_HEARTBEATS * heartbeat),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {MISSED_HEARTBEATS * heartbeat} s: its worker is gone",
            )
        ],
    ).create()
    return True


def deploy(settings: Settings, prefect_file: Path) -> str:
    """Apply every deployment of `prefect_file` with `prefect deploy --all`; the schedules
    take the time zone setting and the workers run the code in the project folder."""
    environment = {**os.environ, **deployment_environment(settings)}
    command = [
        sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
        "--prefect-file", str(prefect_file),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=settings.project_dir,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DeployFailed(f"prefect deploy failed:\n{done.stdout}\n{done.stderr}".strip())
    return done.stdout


def deployment_environment(settings: Settings) -> Mapping[str, str]:
    return {
        "CME_SCHEDULE_TIMEZONE": settings.schedule_timezone,
        "CME_PROJECT_DIR": os.environ.get("CME_PROJECT_DIR", str(settings.project_dir.resolve())),
    }
