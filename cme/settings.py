"""Settings from the environment (prefix CME_), with embedded defaults that need no server."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where things live. Everything defaults under CME_HOME so that nothing needs a server."""

    model_config = SettingsConfigDict(env_prefix="CME_", extra="ignore")

    home: Path = Field(default=Path(".cme"), description="Working folder for embedded stores.")
    database_url: str | None = Field(
        default=None,
        description="Label registry URL; default sqlite:///$CME_HOME/labels.db. "
        "Production: postgresql+psycopg2://user@host/db.",
    )
    auto_migrate: bool | None = Field(
        default=None,
        description="Apply Alembic migrations on first use; default only for SQLite. "
        "Production runs `cme db upgrade` instead.",
    )
    data_dir: Path = Field(default=Path("data"), description="Versioned data (DVC tracks it).")
    image_store: Path | None = Field(
        default=None, description="Content-addressed image store; default $CME_DATA_DIR/images."
    )
    project_dir: Path = Field(
        default=Path(), description="DVC project root: holds data.dvc, dvc.yaml, .dvc/."
    )
    dvc_remote: str | None = Field(
        default=None,
        description="DVC remote for data versions; default $CME_HOME/dvc-remote. "
        "Production: s3://bucket/path or any DVC remote URL.",
    )
    dvc_remote_endpoint: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible DVC remote (MinIO: http://minio:9000); "
        "credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.",
    )
    params_file: Path = Field(default=Path("params.yaml"), description="Tunable parameters.")
    steward: str | None = Field(
        default=None, description="Default steward name for label commands; default $USER."
    )
    tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "CME_TRACKING_URI"),
        description="MLflow tracking and registry; default sqlite:///$CME_HOME/mlflow.db with "
        "artifacts under $CME_HOME/mlartifacts. Production: http://mlflow-server:5000.",
    )
    experiment: str = Field(default="melanoma-retrain", description="MLflow experiment name.")
    git_commit: str | None = Field(
        default=None,
        description="The commit the code was built from, recorded on training runs when the "
        "project folder is not a git checkout (images: docker build --build-arg GIT_COMMIT).",
    )
    model_name: str = Field(
        default="melanoma-resnet50", description="Registered model name in MLflow."
    )

    inbox: Path | None = Field(
        default=None,
        description="Where stewards drop lab exports (a folder each: metadata.csv + images/); "
        "default $CME_HOME/inbox, with processed/ and failed/ beside the new ones.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Dask scheduler that `cme screen` spreads its batches over, e.g. "
        "tcp://dask-scheduler:8786; unset: a local cluster of this machine's cores.",
    )
    schedule_timezone: str = Field(
        default="UTC",
        description="Time zone of the deployments' schedules (weekly retrain Monday 02:00), "
        "e.g. Europe/Berlin.",
    )

    @property
    def inbox_dir(self) -> Path:
        return self.inbox if self.inbox is not None else self.home / "inbox"

    @property
    def label_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'labels.db').resolve()}"

    @property
    def image_store_dir(self) -> Path:
        return self.image_store if self.image_store is not None else self.data_dir / "images"

    @property
    def dvc_remote_url(self) -> str:
        return self.dvc_remote or str((self.home / "dvc-remote").resolve())

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Where runs keep artifacts when tracking is embedded (a server decides its own)."""
        return self.home / "mlartifacts"

    @property
    def work_dir(self) -> Path:
        """Scratch space of running stages (checkpoints, tf.data caches)."""
        return self.home / "work"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def migrates_automatically(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.label_database_url.startswith("sqlite")
