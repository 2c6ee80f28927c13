"""A real Chromium, driven by Playwright, against pytest-django's live server.

Debian's Chromium is used (`make system-deps` installs it); Playwright cannot download its own
browser here. The browser lives for one test module: Playwright's sync API keeps an event loop
running while it is open, which would break asyncio tests that run after it.
"""

import os

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.conftest import PASSWORD

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}


@pytest.fixture(autouse=True)
def no_reconcile_marks_left_over():
    """The "drain queued" flag and the sites marked for a drain live in Redis, outside the
    database's rollback: a test whose server queued a drain no worker ran (no eager Celery) left
    the flag for 30 s, and the next test's reports then queued none (its outages never formed)."""
    from energy_portal.redis_client import sync_client
    from tests.outages.conftest import DRAIN_KEYS

    sync_client().delete(*DRAIN_KEYS)
    yield
    sync_client().delete(*DRAIN_KEYS)


@pytest.fixture(scope="module")
def browser():
    with pytest.MonkeyPatch.context() as patch:
        # Fixtures and the live server use the ORM while Playwright's event loop runs in this
        # thread; Django would refuse that as unsafe, though nothing here is async.
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield chromium
            finally:
                chromium.close()


@pytest.fixture
def new_page(browser: Browser, live_server):
    """Open a page in a fresh browser context (own cookies) on the live server."""
    contexts = []

    def open_page(**context_options) -> Page:
        context = browser.new_context(base_url=live_server.url, **context_options)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page) -> Page:
    return new_page()


@pytest.fixture
def sign_in():
    """Sign in through the login form, as a person would, and wait for the page after it."""

    def submit(page: Page, username: str, password: str = PASSWORD) -> None:
        page.goto("/login/")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        with page.expect_navigation():
            page.click("button[type=submit]")

    return submit
