"""The composition root: the only place that creates folders, connections and stores.

`App` builds each adapter once, when first asked, and hands them to the use cases as their
`Platform`; the flows reach it through the `cme.composition_root` entry point."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from cme.mlflow_connection import point_mlflow_at, use_tracking
from cme.settings import Settings
from registry.audit_trail import AuditTrailRepository
from registry.database import Database
from registry.labels import ImageStore, IntakeRules, LabelRegistry, LabelRepository
from registry.models import ModelRegistry
from registry.prediction_log import PredictionLogRepository
from registry.promotion import ChampionLifecycle
from registry.run_leases import RunLeaseRepository
from registry.screening_log import ScreeningLogRepository
from usecases.params import Params, load_params
from usecases.platform import Workspace


@dataclass
class App:
    """One installation, as its settings describe it; a `usecases.platform.Platform`."""

    settings: Settings
    _database: Database | None = field(default=None, repr=False)
    _label_registry: LabelRegistry | None = field(default=None, repr=False)
    _audit_trail: AuditTrailRepository | None = field(default=None, repr=False)
    _run_leases: RunLeaseRepository | None = field(default=None, repr=False)
    _prediction_log: PredictionLogRepository | None = field(default=None, repr=False)
    _screening_log: ScreeningLogRepository | None = field(default=None, repr=False)
    _experiment_id: str | None = field(default=None, repr=False)
    _models: ModelRegistry | None = field(default=None, repr=False)
    _champions: ChampionLifecycle | None = field(default=None, repr=False)

    @property
    def workspace(self) -> Workspace:
        settings = self.settings
        return Workspace(
            home=settings.home,
            data_dir=settings.data_dir,
            image_store_dir=settings.image_store_dir,
            snapshots_dir=settings.snapshots_dir,
            reports_dir=settings.reports_dir,
            work_dir=settings.work_dir,
            inbox_dir=settings.inbox_dir,
            project_dir=settings.project_dir,
            dvc_remote_url=settings.dvc_remote_url,
            dvc_remote_endpoint=settings.dvc_remote_endpoint,
            built_from=settings.git_commit,
            tracking_uri=settings.mlflow_tracking_uri,
            experiment=settings.experiment,
            model_name=settings.model_name,
        )

    def params(self, overrides: Sequence[str] = ()) -> Params:
        return load_params(self.settings.params_file, overrides)

    def label_registry(self, rules: IntakeRules | None = None) -> LabelRegistry:
        """Open the label registry (migrating an embedded SQLite store on first use) and
        settle any image files a crashed import left staged."""
        if self._label_registry is None:
            repository = LabelRepository(self._label_store())
            store = ImageStore(self.settings.image_store_dir)
            self._label_registry = LabelRegistry(repository, store, rules or IntakeRules())
            self._label_registry.recover()
        elif rules is not None:
            self._label_registry.rules = rules
        return self._label_registry

    def audit_trail(self) -> AuditTrailRepository:
        """The model registry's append-only audit trail, in the label store's database."""
        if self._audit_trail is None:
            self._audit_trail = AuditTrailRepository(self._label_store())
        return self._audit_trail

    def run_leases(self) -> RunLeaseRepository:
        if self._run_leases is None:
            self._run_leases = RunLeaseRepository(self._label_store())
        return self._run_leases

    def prediction_log(self) -> PredictionLogRepository:
        if self._prediction_log is None:
            self._prediction_log = PredictionLogRepository(self._label_store())
        return self._prediction_log

    def screening_log(self) -> ScreeningLogRepository:
        if self._screening_log is None:
            self._screening_log = ScreeningLogRepository(self._label_store())
        return self._screening_log

    def _label_store(self) -> Database:
        """The label store's database, opened once for every repository over it (migrating
        an embedded SQLite store on first use)."""
        if self._database is None:
            self._database = Database.open(
                self.settings.label_database_url, migrate=self.settings.migrates_automatically
            )
        return self._database

    def tracking(self) -> str:
        """MLflow's fluent API pointed at this installation (again: another installation in
        the same process may have pointed it elsewhere); the experiment is found or created
        once."""
        if self._experiment_id is None:
            self._experiment_id = use_tracking(self.settings)
        else:
            point_mlflow_at(self.settings, self._experiment_id)
        return self._experiment_id

    def models(self) -> ModelRegistry:
        self.tracking()
        if self._models is None:
            self._models = ModelRegistry.at(
                self.settings.mlflow_tracking_uri, self.settings.model_name
            )
        return self._models

    def champions(self) -> ChampionLifecycle:
        models = self.models()
        if self._champions is None:
            self._champions = ChampionLifecycle(models, self.audit_trail())
        return self._champions

    def steward(self, given: str | None) -> str:
        return given or self.settings.steward or os.environ.get("USER") or getpass.getuser()

    def close(self) -> None:
        if self._database is not None:
            self._database.close()
            self._database = None
        self._label_registry = self._audit_trail = None
        self._run_leases = self._prediction_log = self._screening_log = None
        self._champions = None


def bootstrap(settings: Settings | None = None) -> App:
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=os.environ.get("CME_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return App(settings)


@contextmanager
def open_platform(overrides: Sequence[str] = ()) -> Iterator[tuple[App, Params]]:
    """The platform as configured by the environment (CME_*), with params.yaml and any
    `key=value` overrides; closed when the block ends. The flows' entry point."""
    app = bootstrap()
    try:
        yield app, app.params(overrides)
    finally:
        app.close()
