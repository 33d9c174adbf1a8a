"""Drive the real MLflow 3.17 UI the way a reviewer does: open a model version's page and
edit its tags in the page's editable tags table (a pencil per row for an existing tag, the
Name / Value / Add form under the table for a new one).

Selectors, found by exploring the 3.17.2 UI (headless Chromium):
- the version page: {server}/#/models/{name}/versions/{version}, heading "Version {version}";
- a tag's row: the table row whose first cell is exactly the key; its value cell is the
  second; the row's pencil has data-testid "editable-table-button-edit" (it has no
  accessible name); editing turns the value cell into a textbox with Save / Cancel buttons;
- a new tag: textboxes labelled "tag name" / "tag value" and the form's "Add" button (the
  form is scoped, since the aliases line has an "Add" button too when a version has none)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
"""Debian's Chromium: Playwright's own browser downloads need the internet, CI has none."""

UI_TIMEOUT_MS = 30_000
"""Per step: the page's first load takes a few seconds on a small CI machine."""


INSTALL_HINT = "install it with: sudo apt-get install -y --no-install-recommends chromium"


def chromium_missing() -> bool:
    return not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK))


def require_chromium() -> None:
    """Skip without Debian's Chromium; fail instead where CME_REQUIRE_BROWSER is set (CI)."""
    if not chromium_missing():
        return
    if os.environ.get("CME_REQUIRE_BROWSER"):
        pytest.fail(
            f"Chromium required (CME_REQUIRE_BROWSER) but {CHROMIUM} is missing; {INSTALL_HINT}"
        )
    pytest.skip(f"browser tests need Debian's Chromium at {CHROMIUM}; {INSTALL_HINT}")


requires_chromium = pytest.mark.skipif(
    chromium_missing() and not os.environ.get("CME_REQUIRE_BROWSER"),
    reason=f"browser tests need Debian's Chromium at {CHROMIUM}; {INSTALL_HINT}",
)
"""Skips a test before its (session) fixtures start, e.g. an MLflow server, where the
`chromium_page` fixture would skip only after them; with CME_REQUIRE_BROWSER set it lets the
test run, so that the fixture fails it."""


@pytest.fixture
def chromium_page() -> Iterator[Page]:
    """A fresh headless Chromium page (its own context) with a wide desktop viewport."""
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            yield page
            context.close()
        finally:
            browser.close()


def version_url(server_url: str, model_name: str, version: str) -> str:
    return f"{server_url.rstrip('/')}/#/models/{quote(model_name, safe='')}/versions/{version}"


def open_version_page(page: Page, server_url: str, model_name: str, version: str) -> None:
    """Open the version's page and wait until its tags table has loaded."""
    page.goto(version_url(server_url, model_name, version))
    expect(page.get_by_role("heading", name=f"Version {version}", exact=True)).to_be_visible(
        timeout=UI_TIMEOUT_MS
    )
    expect(_tag_form(page)).to_be_visible(timeout=UI_TIMEOUT_MS)


def _tag_form(page: Page) -> Locator:
    return page.locator("form").filter(has=page.get_by_role("textbox", name="tag name"))


def _tag_row_with_key(page: Page, key: str) -> Locator:
    """The tags table row whose first cell is exactly `key`."""
    return page.locator("tr").filter(
        has=page.locator("td:first-child").get_by_text(key, exact=True)
    )


def _edit_tag(row: Locator, value: str) -> None:
    row.get_by_test_id("editable-table-button-edit").click()
    editor = row.get_by_role("textbox")
    expect(editor).to_be_visible(timeout=UI_TIMEOUT_MS)
    editor.fill(value)
    row.get_by_role("button", name="Save", exact=True).click()


def _add_tag(page: Page, key: str, value: str) -> None:
    form = _tag_form(page)
    form.get_by_role("textbox", name="tag name").fill(key)
    form.get_by_role("textbox", name="tag value").fill(value)
    form.get_by_role("button", name="Add", exact=True).click()


def _expect_tag(page: Page, key: str, value: str) -> None:
    """Wait until the table shows `key` = `value`, no longer being edited."""
    row = _tag_row_with_key(page, key)
    expect(row).to_have_count(1, timeout=UI_TIMEOUT_MS)
    expect(row.locator("td").nth(1)).to_have_text(value, timeout=UI_TIMEOUT_MS)
    expect(row.get_by_role("textbox")).to_have_count(0, timeout=UI_TIMEOUT_MS)


def set_version_tags_in_ui(
    page: Page, server_url: str, model_name: str, version: str, tags: Mapping[str, str]
) -> None:
    """Set each of `tags` on the model version through its page: edit the tag in place when
    the version has it already, else add it with the form; wait until the table shows it."""
    open_version_page(page, server_url, model_name, version)
    for key, value in tags.items():
        row = _tag_row_with_key(page, key)
        if row.count() > 0:
            _edit_tag(row, value)
        else:
            _add_tag(page, key, value)
        _expect_tag(page, key, value)


def version_page_screenshot(
    page: Page, server_url: str, model_name: str, version: str, path: Path
) -> None:
    """A full-page PNG of the version's page, freshly loaded from the server."""
    open_version_page(page, server_url, model_name, version)
    page.mouse.move(0, 0)  # no hover highlight left on a button under the last click
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
