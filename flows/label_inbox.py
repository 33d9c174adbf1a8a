"""The label inbox: import each lab export a steward dropped into the inbox folder, then
move it to processed/ or, with its quarantine report, to failed/."""

from __future__ import annotations

from prefect import flow

from flows.common import opened, step
from usecases import inbox
from usecases.params import Params
from usecases.platform import Platform


@step("import exports")
def import_exports(platform: Platform, params: Params, steward: str) -> inbox.InboxReport:
    return inbox.process_inbox(platform, params, steward=steward)


@flow(name="label-inbox")
def label_inbox(steward: str = "label-inbox", overrides: list[str] | None = None) -> list[str]:
    """One line per export: processed, failed (with why) or still being copied."""
    with opened(overrides) as (platform, params):
        return import_exports(platform, params, steward).summary_lines()
