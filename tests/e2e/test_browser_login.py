"""A resident signs in through the browser and sees their own home, on desktop and on a phone."""

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PHONE

pytestmark = pytest.mark.browser


def test_resident_signs_in_and_sees_only_their_own_home(page, sign_in, alice_home, bob_home):
    # when
    sign_in(page, "alice")

    # then: the dashboard shows Alice's site and Pi with a status badge, and nothing of Bob's
    expect(page).to_have_url(re.compile(r"/dashboard/$"))
    expect(page.get_by_role("heading", name="Alice home")).to_be_visible()
    device = page.locator('[data-device="pi-a1"]')
    expect(device).to_be_visible()
    expect(device.locator("code", has_text="pi-a1")).to_be_visible()
    expect(page.locator('[data-status-for="pi-a1"]')).to_have_text(re.compile(r"^(on|off)line$"))
    expect(page.get_by_text("Bob home")).to_have_count(0)
    expect(page.locator('[data-device="pi-b1"]')).to_have_count(0)


def test_wrong_password_keeps_the_resident_on_the_login_page(page, sign_in, alice_home):
    sign_in(page, "alice", "not-the-password")

    expect(page).to_have_url(re.compile(r"/login/$"))
    expect(page.locator(".error")).to_contain_text("didn't match")


def test_dashboard_fits_a_phone_screen_without_sideways_scrolling(new_page, sign_in, alice_home):
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True)

    sign_in(page, "alice")

    expect(page.locator('[data-device="pi-a1"]')).to_be_visible()
    widths = page.evaluate(
        "() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
    )
    assert widths["inner"] == PHONE["width"]
    assert widths["scroll"] <= widths["inner"], widths
