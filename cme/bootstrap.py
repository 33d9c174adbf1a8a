"""The composition root: the only place that creates folders, connections and stores."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from cme.params import Params, load_params
from cme.settings import Settings
from registry.labels import ImageStore, IntakeRules, LabelRegistry, LabelRepository


@dataclass
class App:
    settings: Settings
    _label_registry: LabelRegistry | None = field(default=None, repr=False)

    def params(self, overrides: Sequence[str] = ()) -> Params:
        return load_params(self.settings.params_file, overrides)

    def label_registry(self, rules: IntakeRules | None = None) -> LabelRegistry:
        """Open the label registry (migrating an embedded SQLite store on first use) and
        settle any image files a crashed import left staged."""
        if self._label_registry is None:
            repository = LabelRepository.open(
                self.settings.label_database_url, migrate=self.settings.migrates_automatically
            )
            store = ImageStore(self.settings.image_store_dir)
            self._label_registry = LabelRegistry(repository, store, rules or IntakeRules())
            self._label_registry.recover()
        elif rules is not None:
            self._label_registry.rules = rules
        return self._label_registry

    def steward(self, given: str | None) -> str:
        return given or self.settings.steward or os.environ.get("USER") or getpass.getuser()

    def close(self) -> None:
        if self._label_registry is not None:
            self._label_registry.repository.close()
            self._label_registry = None


def bootstrap(settings: Settings | None = None) -> App:
    settings = settings or Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=os.environ.get("CME_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return App(settings)
