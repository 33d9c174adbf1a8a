"""A reviewer approves the challenger in the real MLflow UI, and it serves: the version's
tags, set by clicks in Chromium, reach `cme webhooks serve` as MLflow's signed webhooks, which
promote it at once; the page, reloaded, shows it as the champion with its history."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.mlflow_ui import (
    UI_TIMEOUT_MS,
    chromium_page,  # noqa: F401 (fixture)
    open_version_page,
    requires_chromium,
    set_version_tags_in_ui,
    version_page_screenshot,
)
from tests.webhook_support import (
    WebhookInstallation,
    challenger_awaiting_review,
    champion_of,
    eventually,
    webhook_installation,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration, requires_chromium]

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def artifacts_dir() -> Path:
    """Where tests leave files for people to look at: $CME_TEST_ARTIFACTS, else .cme/."""
    configured = os.environ.get("CME_TEST_ARTIFACTS")
    return Path(configured) if configured else ROOT / ".cme" / "test-artifacts"


@pytest.fixture
def installation(tmp_path: Path) -> Iterator[WebhookInstallation]:
    with webhook_installation(tmp_path) as installed:
        yield installed


def test_reviewer_approves_in_the_mlflow_ui_and_the_version_serves_at_once(
    installation: WebhookInstallation,
    chromium_page: Page,  # noqa: F811
) -> None:
    lifecycle, url, name = installation.lifecycle, installation.server.url, installation.model_name
    version = challenger_awaiting_review(lifecycle, installation.client)

    set_version_tags_in_ui(chromium_page, url, name, version,
                           {"reviewer": "dr-test", "approval": "approved"})  # fmt: skip

    # No `cme promote`: the webhooks of the two edits reach the receiver, which promotes.
    assert eventually(lambda: champion_of(installation) == version), (
        installation.receiver_log.read_text()
    )
    actions = [(e.action, e.actor) for e in lifecycle.trail.events(name)]
    assert actions == [
        ("decision", "pipeline"), ("approval", "dr-test"), ("promotion", "mlflow-webhook"),
    ]  # fmt: skip

    # What the reviewer sees on reloading the page: the version serves, and says since when.
    chromium_page.reload()
    open_version_page(chromium_page, url, name, version)
    aliases = chromium_page.get_by_role("status")
    expect(aliases.filter(has_text="@ champion")).to_have_count(1, timeout=UI_TIMEOUT_MS)
    expect(aliases.filter(has_text="@ challenger")).to_have_count(0)
    page_text = chromium_page.locator("body")
    expect(page_text).to_contain_text("approval by dr-test", timeout=UI_TIMEOUT_MS)
    expect(page_text).to_contain_text("promotion by mlflow-webhook", timeout=UI_TIMEOUT_MS)

    # Kept for people to look at (CI keeps the folder).
    screenshot = artifacts_dir() / "mlflow-version-approved.png"
    screenshot.unlink(missing_ok=True)
    version_page_screenshot(chromium_page, url, name, version, screenshot)
    assert screenshot.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(screenshot) as image:
        assert image.format == "PNG"
        assert image.width >= 1000
        assert image.height >= 600
