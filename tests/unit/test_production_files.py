"""docker/ checked without a Docker engine: the compose file and the Dockerfiles parsed and
held to what production needs (services, pinned images, ports, volumes, health checks, the
GPU request, secrets only from docker/.env, every setting the code reads set for every
service that runs it), and the shell scripts parsed by their shells."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from cme.settings import Settings
from usecases.registry_access import AccessSettings
from usecases.review_webhooks import WebhookSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ONE_SHOT = {"buckets", "init"}
RUNS_CME = {"init", "worker-cpu", "worker-gpu", "scoring", "webhooks"}
SECRET = re.compile(r"PASSWORD|SECRET|AUTH_STRING")


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined."""
    text = (DOCKER / name).read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def instructions(name: str, kind: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile(name) if instruction == kind]


def locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


def env_names(settings: type[Any]) -> set[str]:
    """Every environment variable a settings class reads (any one of a field's aliases)."""
    names = set()
    prefix = settings.model_config.get("env_prefix", "")
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.add(str(alias.choices[0]))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def test_the_platform_is_all_there():
    assert set(SERVICES) == {
        "postgres", "minio", "buckets", "mlflow", "prefect", "init",
        "worker-cpu", "worker-gpu", "scoring", "webhooks",
    }  # fmt: skip
    assert set(COMPOSE["volumes"]) >= {
        volume.split(":")[0]
        for service in SERVICES.values()
        for volume in service.get("volumes", [])
        if not volume.startswith(".")
    }


def test_images_are_pinned_or_built_here():
    for name, service in SERVICES.items():
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file(), name
            assert service["build"]["context"] == "..", name
        else:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), (name, image)
    for name in ("worker.Dockerfile", "worker-gpu.Dockerfile", "mlflow.Dockerfile"):
        (base,) = instructions(name, "FROM")
        assert ":" in base and "latest" not in base, (name, base)


def test_long_running_services_have_health_checks_and_one_shots_run_once():
    for name, service in SERVICES.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        assert service["restart"] == "unless-stopped", name
        has_check = "healthcheck" in service or _image_health_check(service)
        assert has_check, f"{name} has no health check"


def _image_health_check(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return bool(build) and bool(instructions(Path(build["dockerfile"]).name, "HEALTHCHECK"))


def test_services_start_in_order():
    def waits_for(name: str) -> dict[str, str]:
        return {dep: rule["condition"] for dep, rule in SERVICES[name]["depends_on"].items()}

    assert waits_for("init") == {"postgres": "service_healthy", "mlflow": "service_healthy",
                                 "prefect": "service_healthy"}  # fmt: skip
    for name in ("worker-cpu", "worker-gpu", "scoring", "webhooks"):
        assert waits_for(name) == {"init": "service_completed_successfully"}
    assert waits_for("mlflow")["buckets"] == "service_completed_successfully"


def test_published_ports_are_the_user_facing_ones():
    published = {
        name: sorted(port.split(":")[0] for port in service.get("ports", []))
        for name, service in SERVICES.items()
        if service.get("ports")
    }
    # The databases, workers and MinIO's API stay on the compose network.
    assert published == {"mlflow": ["5000"], "prefect": ["4200"], "scoring": ["5001"],
                         "minio": ["9001"]}  # fmt: skip


def test_the_gpu_worker_gets_the_gpus_and_trains_on_the_locked_tensorflow():
    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    (base,) = instructions("worker-gpu.Dockerfile", "FROM")
    assert base == f"tensorflow/tensorflow:{locked_version('tensorflow-cpu')}-gpu"


def test_workers_serve_the_pools_of_the_deployments():
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())[
        "deployments"]}  # fmt: skip
    served = set()
    for name in ("worker.Dockerfile", "worker-gpu.Dockerfile"):
        (command,) = instructions(name, "CMD")
        words = yaml.safe_load(command)
        assert words[:3] == ["prefect", "worker", "start"], name
        served.add(words[words.index("--pool") + 1])
    assert served == pools == {"cpu", "gpu"}


def test_images_run_as_an_unprivileged_user_and_copy_what_exists():
    for name in ("worker.Dockerfile", "worker-gpu.Dockerfile", "mlflow.Dockerfile"):
        (user,) = instructions(name, "USER")
        assert user not in {"root", "0"}, name
        for copy in instructions(name, "COPY"):
            *sources, _target = shlex.split(copy)
            for source in sources:
                assert (ROOT / source).exists(), (name, source)


def test_the_mlflow_image_serves_the_locked_mlflow_with_basic_auth_on_postgres_and_s3():
    build_args = " ".join(instructions("mlflow.Dockerfile", "ARG"))
    assert f"MLFLOW_VERSION={locked_version('mlflow')}" in build_args
    assert f"psycopg2-binary=={locked_version('psycopg2-binary')}" in " ".join(
        instructions("mlflow.Dockerfile", "RUN")
    )
    script = (DOCKER / "mlflow" / "serve.sh").read_text()
    assert "--app-name basic-auth" in script and "default_permission = READ" in script
    environment = SERVICES["mlflow"]["environment"]
    # The driver the image installs, named: SQLAlchemy 2.1 reads a bare postgresql:// as
    # psycopg 3, which the image does not have (the end-to-end tests found MLflow crashing).
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert environment["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql+psycopg2://")
    assert environment["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


def test_every_setting_the_code_reads_is_set_for_every_service_that_runs_it():
    read_by_cme = env_names(Settings) | {
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",  # the MLflow client's sign-in
        "PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "CME_LOG_LEVEL",
    }  # fmt: skip
    for name in RUNS_CME:
        missing = read_by_cme - set(SERVICES[name]["environment"])
        assert not missing, f"{name} does not set {sorted(missing)}"
    missing = env_names(AccessSettings) - set(SERVICES["init"]["environment"])
    assert not missing, f"init does not set {sorted(missing)}"
    for name in ("init", "webhooks"):  # registers the webhook, receives its deliveries
        missing = env_names(WebhookSettings) - set(SERVICES[name]["environment"])
        assert not missing, f"{name} does not set {sorted(missing)}"


def test_mlflow_delivers_its_webhooks_to_the_receiver_the_init_registered():
    environment = SERVICES["mlflow"]["environment"]
    assert environment["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"  # the compose network
    assert "http" in environment["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"].split(",")
    assert environment["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"].startswith(
        "${MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY:?"
    )  # the same key across restarts, or the stored secret cannot be read back
    (command,) = [SERVICES["webhooks"]["command"]]
    port = command[command.index("--port") + 1]
    url = SERVICES["init"]["environment"]["CME_WEBHOOK_URL"]
    assert url == f"http://webhooks:{port}/mlflow-webhook"
    script = (DOCKER / "init" / "init-platform.sh").read_text()
    assert 'cme webhooks register "$CME_WEBHOOK_URL"' in script  # when the URL is set
    assert 'MLFLOW_TRACKING_USERNAME="${MLFLOW_AUTH_ADMIN_USERNAME' in script


def test_only_the_workers_hold_storage_keys_and_only_their_own():
    dvc_keys = {"AWS_ACCESS_KEY_ID": "${CME_DVC_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY":
                "${CME_DVC_SECRET_KEY"}  # fmt: skip
    for name in RUNS_CME:
        environment = SERVICES[name]["environment"]
        if name.startswith("worker-"):  # they version data on the DVC remote
            for key, source in dvc_keys.items():
                assert environment[key].startswith(source), (name, key)
        else:
            assert not set(dvc_keys) & set(environment), f"{name} holds storage keys"
        assert not any("MINIO_ROOT" in str(value) for value in environment.values()), name


def test_secrets_come_only_from_the_env_file():
    text = (DOCKER / "compose.yaml").read_text()
    variables = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert variables <= set(example), f"not in .env.example: {variables - set(example)}"
    for variable in filter(SECRET.search, variables):
        assert re.search(rf"\$\{{{variable}:\?", text), f"{variable} must be required (:?)"
        assert not re.search(rf"\$\{{{variable}:-", text), f"{variable} has a default"
        assert "change-me" in example[variable], f".env.example holds a real {variable}?"
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0, "docker/.env must be git-ignored"


@pytest.mark.parametrize(
    ("shell", "script"),
    [
        ("sh", "docker/mlflow/serve.sh"),
        ("bash", "docker/postgres/init-databases.sh"),
        ("bash", "docker/init/init-platform.sh"),
    ],
)
def test_the_scripts_parse(shell, script):
    done = subprocess.run([shell, "-n", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_the_database_service_gets_every_name_and_password_its_init_script_reads():
    script = (DOCKER / "postgres" / "init-databases.sh").read_text()
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", script))
    assert read - set(SERVICES["postgres"]["environment"]) == set()
    mounted = [v for v in SERVICES["postgres"]["volumes"] if "init-databases.sh" in v]
    assert mounted == [
        "./postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-cme-databases.sh:ro"
    ]
