"""The label inbox: import each lab export a steward dropped into the inbox folder, then
move it to processed/ or, with its quarantine report, to failed/."""

from __future__ import annotations

from prefect import flow

from cme import inbox
from cme.bootstrap import App
from cme.params import Params
from flows.common import opened, step


@step("import exports")
def import_exports(app: App, params: Params, steward: str) -> inbox.InboxReport:
    return inbox.process_inbox(app, params, steward=steward)


@flow(name="label-inbox")
def label_inbox(steward: str = "label-inbox", overrides: list[str] | None = None) -> list[str]:
    """One line per export: processed, failed (with why) or still being copied."""
    with opened(overrides) as (app, params):
        return import_exports(app, params, steward).summary_lines()
