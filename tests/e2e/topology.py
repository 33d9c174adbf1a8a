"""docker/compose.yaml's topology as processes on this machine, for the end-to-end tests.

No Docker engine runs here, so each compose service becomes a process started with the
command its image runs and the environment compose gives it, read from compose.yaml itself
(a change there changes what these tests run). What only a container network has is mapped
to this machine: service names to 127.0.0.1 and free ports, the image's folders to temporary
ones, and the S3-compatible stores to local folders (no MinIO here; the S3 settings stay in
compose for production). The `gpu` worker gets a home and data folder of its own, as another
machine would: it shares only the databases, the MLflow server and the DVC remote.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml
from sqlalchemy import create_engine, text

from tests.mlflow_server import _free_port as free_port
from tests.prefect_support import ROOT, write_project

COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 180.0
# Prefect's shortest heartbeat (compose: 60 s), so that a dead worker's run is found crashed
# within about 90 s.
HEARTBEAT = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
RESTARTED = ("always", "unless-stopped", "on-failure")  # compose's restart policies that do
SUPERVISION_S = 1.0
ADMIN = "admin"
ACCOUNTS = {  # compose's service accounts: the prefix of their docker/.env variables
    "CME_PIPELINE_MLFLOW": "pipeline",
    "CME_SERVING_MLFLOW": "serving",
    "CME_REVIEWER_MLFLOW": "reviewer",
}
DATABASES = ("CME_DB_NAME", "MLFLOW_DB_NAME", "MLFLOW_AUTH_DB_NAME", "PREFECT_DB_NAME")
ROLES = ("CME_DB_OWNER", "CME_DB_USER", "MLFLOW_DB_USER", "PREFECT_DB_USER")
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<operator>:-|:\?)(?P<argument>[^}]*))?\}")
_NOT_HERE = ("AWS_", "MLFLOW_S3_ENDPOINT_URL", "CME_DVC_REMOTE_ENDPOINT")  # S3 settings


def compose_services() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return services


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}` from `variables`."""

    def resolved(match: re.Match[str]) -> str:
        name, operator = match["name"], match["operator"]
        if variables.get(name):
            return variables[name]
        if operator == ":?":
            raise KeyError(f"compose.yaml needs {name}: {match['argument']}")
        return match["argument"] if operator == ":-" else ""

    return _VARIABLE.sub(resolved, value).replace("$$", "$")


def compose_environment(service: str, variables: Mapping[str, str]) -> dict[str, str]:
    environment = compose_services()[service].get("environment") or {}
    assert isinstance(environment, dict), f"{service}: environment as a mapping"
    return {name: interpolate(str(value), variables) for name, value in environment.items()}


def answers(url: str, headers: Mapping[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Service:
    """One compose service, running as a process group with its log in a file. Its compose
    `restart` policy applies once the topology is supervised: one that exits on its own is
    started again, as Docker would; one stopped or killed on purpose stays down."""

    name: str
    command: list[str]
    env: dict[str, str]
    cwd: Path
    log_file: Path
    restart_policy: str = "no"
    health_url: str = ""
    process: subprocess.Popen[bytes] | None = None
    left_down: bool = False
    restarts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> Service:
        with self.log_file.open("ab") as log:
            log.write(f"== {' '.join(self.command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def restarted_when_it_exits(self) -> bool:
        return self.restart_policy in RESTARTED and not self.left_down

    def restart_if_exited(self) -> None:
        """Docker's part of `restart: unless-stopped`: an exited container started again."""
        with self._lock:
            if not self.restarted_when_it_exits or self.process is None:
                return
            code = self.process.poll()
            if code is None or (self.restart_policy == "on-failure" and code == 0):
                return
            self.restarts += 1
            with self.log_file.open("a") as log:
                log.write(f"== exited with {code}; restart: {self.restart_policy} again\n")
            self.start()

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole group (the worker and the flow runs it started), then SIGKILL."""
        if self.process is None:
            return
        self._leave_down()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the process and everything it started (a flow run in a session of its
        own too), at once: the machine gone, nothing cleaned up."""
        if self.process is None:
            return
        self._leave_down()
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def _leave_down(self) -> None:
        with self._lock:
            self.left_down = True

    def tail(self, lines: int = 25) -> str:
        try:
            text_lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text_lines[-lines:])


@dataclass
class Machine:
    """What a container's filesystem holds, as folders of this machine."""

    home: Path
    data_dir: Path

    def paths(self, project: Path, inbox: Path) -> dict[str, str]:
        return {
            "/opt/cme/.cme": str(self.home), "/opt/cme/data": str(self.data_dir),
            "/opt/cme/params.yaml": str(project / "params.yaml"), "/opt/cme": str(project),
            "/srv/inbox": str(inbox),
        }  # fmt: skip


@dataclass
class Topology:
    folder: Path
    variables: dict[str, str]
    project: Path
    inbox: Path
    dvc_remote: Path
    mlflow_url: str = ""
    prefect_api: str = ""
    webhook_port: int = 0
    scoring_url: str = ""
    services: dict[str, Service] = field(default_factory=dict)
    init_outputs: list[str] = field(default_factory=list)
    _supervising: threading.Event = field(default_factory=threading.Event, repr=False)
    _supervisor: threading.Thread | None = field(default=None, repr=False)

    @property
    def model_name(self) -> str:
        return compose_environment("init", self.variables)["CME_MODEL_NAME"]

    def password(self, prefix: str) -> str:
        return self.variables[f"{prefix}_PASSWORD"]

    def account(self, prefix: str) -> tuple[str, str]:
        return self.variables[f"{prefix}_USERNAME"], self.password(prefix)

    def base_environment(self, name: str) -> dict[str, str]:
        """This machine's environment without anything of the caller's cme, MLflow or
        Prefect, and a Prefect home of the service's own (no shared profile)."""
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("CME_", "MLFLOW_", "PREFECT_"))}  # fmt: skip
        bin_dir = str(Path(sys.executable).parent)
        return clean | {
            "PATH": f"{bin_dir}{os.pathsep}{clean.get('PATH', '')}",
            "PREFECT_HOME": str(self.folder / "prefect-homes" / name),
        }

    def environment(self, service: str, machine: Machine | None = None) -> dict[str, str]:
        """The service's compose environment, on this machine."""
        machine = machine or self.cpu_machine
        env = self.base_environment(service)
        hosts = {
            "@postgres:5432": f"@{LOOPBACK}:5432", "http://mlflow:5000": self.mlflow_url,
            "http://prefect:4200/api": self.prefect_api,
            "http://webhooks:5002": f"http://{LOOPBACK}:{self.webhook_port}",
        }  # fmt: skip
        replacements = hosts | machine.paths(self.project, self.inbox)
        for name, value in compose_environment(service, self.variables).items():
            if name.startswith(_NOT_HERE):
                continue
            for container, here in replacements.items():
                value = value.replace(container, here)
            env[name] = value
        if "CME_DVC_REMOTE" in env:
            env["CME_DVC_REMOTE"] = str(self.dvc_remote)  # a folder stands in for MinIO
        return env

    @property
    def cpu_machine(self) -> Machine:
        return Machine(self.project / ".cme", self.project / "data")

    @property
    def gpu_machine(self) -> Machine:
        node = self.folder / "gpu-node"
        return Machine(node / ".cme", node / "data")

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path,
              health_url: str = "") -> Service:  # fmt: skip
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        policy = str(compose_services()[name].get("restart", "no"))
        service = Service(name, command, env, cwd, logs / f"{name}.log", policy, health_url)
        self.services[name] = service.start()
        return service

    def supervise(self) -> None:
        """From now on, compose's restart policies apply (Docker's restarts, every second)."""

        def supervision() -> None:
            while not self._supervising.wait(SUPERVISION_S):
                for service in list(self.services.values()):
                    try:
                        service.restart_if_exited()
                    except OSError as error:  # said in its log; tried again next second
                        with service.log_file.open("a") as log:
                            log.write(f"== could not be restarted: {error}\n")

        self._supervisor = threading.Thread(target=supervision, name="restart-policy",
                                            daemon=True)  # fmt: skip
        self._supervisor.start()

    def wait_for(self, what: str, ready: Callable[[], bool], service: Service | None) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if service is not None and not service.running and not self.will_restart(service):
                raise RuntimeError(f"{service.name} exited before {what}:\n{service.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {START_TIMEOUT_S:.0f} s\n{self.tails()}")
            time.sleep(0.5)

    def will_restart(self, service: Service) -> bool:
        """Whether the service, exited, will be started again by its restart policy."""
        return self._supervisor is not None and service.restarted_when_it_exits

    def run_once(self, name: str, command: list[str], env: dict[str, str]) -> str:
        """A one-shot service (compose's init containers): its output, or the failure."""
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600, check=False)  # fmt: skip
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        with (logs / f"{name}.log").open("a") as log:
            log.write(done.stdout + done.stderr)
        assert done.returncode == 0, f"{name} failed:\n{done.stdout}{done.stderr}"
        return done.stdout

    def tails(self) -> str:
        return "\n".join(f"---- {name} ({service.log_file}, restarted {service.restarts}x by its"
                         f" policy)\n{service.tail()}"
                         for name, service in self.services.items())  # fmt: skip

    def prefect_headers(self) -> dict[str, str]:
        token = base64.b64encode(self.variables["PREFECT_SERVER_API_AUTH_STRING"].encode())
        return {"Authorization": f"Basic {token.decode()}"}

    # -- the services, in compose's order of dependencies ---------------------------------

    def create_databases(self) -> list[str]:
        """docker/postgres/init-databases.sh as the postgres image runs it, on the local
        server, twice: the second run must change nothing and fail on nothing."""
        env = self.base_environment("postgres") | compose_environment("postgres", self.variables)
        env["PGHOST"] = LOOPBACK
        command = ["bash", "docker/postgres/init-databases.sh"]
        return [self.run_once("postgres-init", command, env) for _ in range(2)]

    def start_mlflow(self) -> None:
        port = free_port()
        self.mlflow_url = f"http://{LOOPBACK}:{port}"
        home = self.folder / "mlflow"
        home.mkdir()
        env = self.environment("mlflow") | {
            "MLFLOW_HOST": LOOPBACK, "MLFLOW_PORT": str(port),
            "MLFLOW_ARTIFACTS_DESTINATION": str(home / "artifacts"),  # the bucket, here
            "MLFLOW_AUTH_CONFIG_DIR": str(home), "MLFLOW_WORKERS": "1",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # Tests register the webhook and act at once (MLflow caches the list for 60 s).
            "MLFLOW_WEBHOOK_CACHE_TTL": "1",
        }  # fmt: skip
        env["MLFLOW_ALLOWED_HOSTS"] += f",{LOOPBACK}:{port}"
        service = self.start("mlflow", ["sh", str(ROOT / "docker/mlflow/serve.sh")], env, home)
        self.wait_for("MLflow /health", lambda: answers(f"{self.mlflow_url}/health"), service)

    def start_prefect(self) -> None:
        port = free_port()
        self.prefect_api = f"http://{LOOPBACK}:{port}/api"
        command = compose_command("prefect", {"0.0.0.0": LOOPBACK, "4200": str(port)})
        env = self.environment("prefect") | {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
            # Runs are started by the tests, as the schedules would start them: a schedule
            # firing during a test (the every-10-minutes promotion) would race it.
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        }  # fmt: skip
        service = self.start("prefect", command, env, self.folder)
        health = f"{self.prefect_api}/health"
        self.wait_for("Prefect /api/health", lambda: answers(health, self.prefect_headers()),
                      service)  # fmt: skip

    def start_webhooks(self) -> None:
        command = compose_command("webhooks", {"0.0.0.0": LOOPBACK, "5002": str(self.webhook_port)})
        service = self.start("webhooks", command, self.environment("webhooks"), self.project)
        health = f"http://{LOOPBACK}:{self.webhook_port}/health"
        self.wait_for("the webhook receiver's /health", lambda: answers(health), service)

    def initialise(self) -> list[str]:
        """docker/init/init-platform.sh, twice (idempotent: the second creates nothing)."""
        env = self.environment("init") | HEARTBEAT  # the crash detection's window follows it
        command = ["bash", "docker/init/init-platform.sh"]
        return [self.run_once("init", command, env) for _ in range(2)]

    def start_worker(self, pool: str, machine: Machine) -> Service:
        name = f"worker-{pool}"
        dockerfile = "worker.Dockerfile" if pool == "cpu" else "worker-gpu.Dockerfile"
        port = free_port()
        env = self.environment(name, machine) | {
            "PREFECT_WORKER_WEBSERVER_HOST": LOOPBACK, "PREFECT_WORKER_WEBSERVER_PORT": str(port),
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # pick runs up at once (default 10 s)
        } | HEARTBEAT  # fmt: skip
        for folder in (machine.home, machine.data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        health = f"http://{LOOPBACK}:{port}/health"
        service = self.start(name, dockerfile_command(dockerfile), env, self.project, health)
        self.wait_for(f"{name}'s /health", lambda: answers(health), service)
        return service

    def start_scoring(self, *options: str) -> str:
        """compose's `scoring` (`cme serve`, the serving account), with `options` added."""
        port = free_port()
        command = compose_command("scoring", {"0.0.0.0": LOOPBACK, "5001": str(port)})
        env = self.environment("scoring")
        service = self.start("scoring", [*command, *options], env, self.project)
        self.scoring_url = f"http://{LOOPBACK}:{port}"
        ping = f"{self.scoring_url}/ping"
        self.wait_for("the scoring service's /ping", lambda: answers(ping), service)
        return self.scoring_url

    def restart(self, name: str) -> None:
        """Stop a long-running service and start it again as it was (a server restarted)."""
        old = self.services[name]
        old.stop()
        self.start(name, old.command, old.env, old.cwd, old.health_url)

    def stop(self) -> None:
        self._supervising.set()
        if self._supervisor is not None:
            self._supervisor.join()
        for service in reversed(list(self.services.values())):
            service.stop()


def compose_command(service: str, replacements: Mapping[str, str]) -> list[str]:
    """The service's compose `command`, its container address and port replaced."""
    command = compose_services()[service]["command"]
    assert isinstance(command, list), f"{service}: command as a list"
    words = []
    for word in command:
        for container, here in replacements.items():
            word = str(word).replace(container, here)
        words.append(word)
    return words


def dockerfile_command(dockerfile: str) -> list[str]:
    """The image's CMD (the workers' compose services run their image's default)."""
    lines = (ROOT / "docker" / dockerfile).read_text().splitlines()
    cmd = next(line for line in reversed(lines) if line.startswith("CMD "))
    return list(yaml.safe_load(cmd.removeprefix("CMD ")))


def installation_variables(suffix: str) -> dict[str, str]:
    """A docker/.env for one test run: fresh database and role names, test-only secrets."""
    names = {
        "CME_DB_NAME": f"cme_{suffix}", "CME_DB_OWNER": f"cme_owner_{suffix}",
        "CME_DB_USER": f"cme_app_{suffix}", "MLFLOW_DB_NAME": f"mlflow_{suffix}",
        "MLFLOW_AUTH_DB_NAME": f"mlflow_auth_{suffix}", "MLFLOW_DB_USER": f"mlflow_{suffix}",
        "PREFECT_DB_NAME": f"prefect_{suffix}", "PREFECT_DB_USER": f"prefect_{suffix}",
    }  # fmt: skip
    secrets = {
        name: f"{name.lower().replace('_', '-')}-e2e-only"
        for name in ("POSTGRES_PASSWORD", "CME_DB_OWNER_PASSWORD", "CME_DB_PASSWORD",
                     "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD",
                     "MLFLOW_FLASK_SERVER_SECRET_KEY", "PREFECT_SERVER_API_AUTH_STRING",
                     "CME_WEBHOOK_SECRET", "CME_DVC_ACCESS_KEY", "CME_DVC_SECRET_KEY",
                     "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD")
    }  # fmt: skip
    secrets["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] = base64.urlsafe_b64encode(
        b"cme-e2e-only-webhook-secret-key!"
    ).decode()
    for prefix, username in ACCOUNTS.items():
        secrets |= {f"{prefix}_USERNAME": username, f"{prefix}_PASSWORD": f"{username}-e2e-only"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    known = {"MLFLOW_AUTH_ADMIN_USERNAME": ADMIN, "GIT_COMMIT": commit or "unknown"}
    return names | secrets | known


def drop_databases(variables: Mapping[str, str]) -> None:
    engine = create_engine(f"postgresql+psycopg2://postgres@{LOOPBACK}:5432/postgres",
                           isolation_level="AUTOCOMMIT")  # fmt: skip
    try:
        with engine.connect() as connection:
            for key in DATABASES:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{variables[key]}" WITH (FORCE)'))
            for key in ROLES:
                connection.execute(text(f'DROP ROLE IF EXISTS "{variables[key]}"'))
    finally:
        engine.dispose()


def project_copy(folder: Path) -> Path:
    """What the worker image holds at /opt/cme: the flows and the project files (the
    packages come installed), with params asking for tiny models: ResNet50 at 32 px, whose
    minute of graph building keeps a training running while a fault test kills its worker."""
    project = write_project(folder, train={"approach": "fine_tune"})
    shutil.copytree(ROOT / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("prefect.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, project / name)
    return project


@contextlib.contextmanager
def running_topology(folder: Path) -> Iterator[Topology]:
    """The whole installation up, as compose would start it; torn down on exit."""
    variables = installation_variables(uuid.uuid4().hex[:8])
    topology = Topology(
        folder=folder, variables=variables, project=project_copy(folder / "opt-cme"),
        inbox=folder / "inbox", dvc_remote=folder / "dvc-remote", webhook_port=free_port(),
    )  # fmt: skip
    topology.inbox.mkdir()
    try:
        topology.create_databases()
        topology.start_mlflow()
        topology.start_prefect()
        topology.init_outputs = topology.initialise()
        topology.start_webhooks()
        topology.start_worker("cpu", topology.cpu_machine)
        topology.start_worker("gpu", topology.gpu_machine)
        topology.supervise()
        yield topology
    finally:
        topology.stop()
        drop_databases(variables)


@contextlib.contextmanager
def prefect_api(topology: Topology) -> Iterator[None]:
    """This process's Prefect client pointed at the topology's server, with its auth."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    auth = topology.variables["PREFECT_SERVER_API_AUTH_STRING"]
    with temporary_settings({PREFECT_API_URL: topology.prefect_api, PREFECT_API_AUTH_STRING: auth}):
        yield
