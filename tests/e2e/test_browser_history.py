"""The history and analytics pages in a real Chromium: figures fetched from the API and drawn in
the browser, period switching, the CSV download, the operators' tables, and phone widths.

Set E2E_SCREENSHOTS=<folder> to keep screenshots of each page on desktop and on a phone.
"""

import csv
import io
import os
import re
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from django.db import transaction

from devices import services as device_services
from devices.models import Device
from telemetry import queries, rollups
from telemetry.services import readings_insert
from tests.e2e.conftest import PHONE

pytestmark = pytest.mark.browser

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY = date(2026, 10, 25)  # 25 hours in Lisbon
ACCENT = (11, 122, 85)  # the bars' colour, #0b7a55
DESKTOP = {"width": 1280, "height": 900}


def _us(ts: datetime) -> int:
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _insert(rows: list[tuple[int, datetime, float]]) -> None:
    with transaction.atomic():
        readings_insert(
            sensor_ids=[r[0] for r in rows],
            times_us=[_us(r[1]) for r in rows],
            values=[r[2] for r in rows],
        )


@pytest.fixture
def october(alice_home):
    """Alice's meter reads 0.25 kWh every quarter-hour through October 2026 (1 kWh an hour, so
    25 kWh on the 25th); her kitchen Pi counts 10 kWh on the 25th."""
    site = alice_home["site"]
    meter, _ = device_services.device_create(
        uid="meter-a", name="Utility meter", site=site, kind="meter",
        sensors=[{"key": "energy_kwh", "kind": "energy", "unit": "kWh"}],
    )  # fmt: skip
    counter = device_services.sensor_create(
        device=alice_home["device"], key="energy_kwh", kind="energy", unit="kWh"
    )
    lo = queries.local_midnight(date(2026, 10, 1), LISBON)
    hi = queries.local_midnight(date(2026, 11, 1), LISBON)
    quarters = [
        lo + timedelta(minutes=15 * n) for n in range(int((hi - lo) / timedelta(minutes=15)))
    ]
    day_lo = queries.local_midnight(DAY, LISBON)
    _insert(
        [(meter.sensors.get().id, t, 0.25) for t in quarters]
        + [
            (counter.id, day_lo - timedelta(minutes=1), 500.0),
            (counter.id, day_lo + timedelta(hours=6), 504.0),
            (counter.id, day_lo + timedelta(hours=20), 510.0),
        ]
    )
    rollups.rollups_refresh()
    return site


def _screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("E2E_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _accent_pixels(page: Page, selector: str) -> int:
    """How many pixels of the chart's canvas have the bars' colour."""
    return page.locator(selector).evaluate(
        """(el, rgb) => {
            const canvas = el.querySelector("canvas");
            const context = canvas.getContext("2d");
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] === rgb[0] && data[i + 1] === rgb[1] && data[i + 2] === rgb[2]) n++;
            }
            return n;
        }""",
        list(ACCENT),
    )


def _fits_the_screen(page: Page) -> None:
    widths = page.evaluate(
        "() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
    )
    assert widths["scroll"] <= widths["inner"], widths


def test_resident_sees_a_dst_day_switches_to_the_month_and_downloads_its_csv(
    new_page, sign_in, october
):
    page = new_page(viewport=DESKTOP, accept_downloads=True)
    sign_in(page, "alice")
    # given: the dashboard links to the history
    page.click("[data-history-link]")
    expect(page).to_have_url(re.compile(rf"/sites/{october.id}/history/$"))

    # when: the day of the autumn clock change
    page.goto(f"/sites/{october.id}/history/?period=day&date={DAY.isoformat()}")

    # then: 25 hourly bars drawn from the API, with the total, its cost and the change
    root = page.locator("[data-history]")
    expect(root).to_have_attribute("data-loaded", "true")
    expect(page.locator("[data-period-title]")).to_have_text("Sunday 25 October 2026")
    expect(page.locator("[data-total-energy]")).to_have_text("25.000")
    expect(page.locator("[data-total-cost]")).to_have_text("€5.00")
    expect(page.locator("[data-change]")).to_have_text("+4.2%")
    expect(page.locator("[data-previous-text]")).to_have_text("vs 24.000 kWh the previous day")
    chart = page.locator("[data-history-chart]")
    expect(chart.locator("canvas")).to_be_visible()
    assert _accent_pixels(page, "[data-history-chart]") > 1000
    expect(page.locator("[data-slots] tbody tr")).to_have_count(25)
    expect(page.locator("[data-slots] tbody tr").nth(1)).to_contain_text(
        "01:00 WEST\N{EN DASH}01:00 WET"
    )
    devices = page.locator('[data-breakdown="devices"] tbody tr')
    expect(devices.first).to_contain_text("pi-a1")
    expect(devices.first).to_contain_text("10.000 kWh")
    expect(devices.first).to_contain_text("€2.00")
    expect(devices.nth(1)).to_contain_text("Rest of the home")
    expect(devices.nth(1)).to_contain_text("15.000 kWh")
    expect(devices.nth(1)).to_contain_text("€3.00")
    expect(page.locator('[data-breakdown="rooms"] tbody tr').first).to_contain_text("Kitchen")
    _screenshot(page, "history-day-desktop")

    # when: the month tab
    page.click('[data-period-tab="month"]')

    # then: the days of October, the 25th with its 25 hours
    expect(page).to_have_url(re.compile(r"period=month&date=2026-10-25"))
    expect(root).to_have_attribute("data-loaded", "true")
    expect(page.locator("[data-period-title]")).to_have_text("October 2026")
    expect(page.locator("[data-total-energy]")).to_have_text("745.000")
    expect(page.locator("[data-total-cost]")).to_have_text("€149.00")
    expect(page.locator("[data-slots-energy]")).to_have_text("745.000")
    expect(page.locator("[data-slots-cost]")).to_have_text("€149.00")
    expect(page.locator("[data-slots] tbody tr")).to_have_count(31)
    assert _accent_pixels(page, "[data-history-chart]") > 1000
    _screenshot(page, "history-month-desktop")

    # and the CSV link downloads what is shown
    with page.expect_download() as download_info:
        page.click("[data-csv-link]")
    download = download_info.value
    assert download.suggested_filename == f"energy-site{october.id}-month-2026-10-01.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
    assert len(rows) == 31
    by_day = {row["start"][:10]: row for row in rows}
    assert (by_day["2026-10-25"]["energy_kwh"], by_day["2026-10-25"]["cost"]) == ("25.0", "5.00")
    assert (by_day["2026-10-24"]["energy_kwh"], by_day["2026-10-24"]["currency"]) == ("24.0", "EUR")


def test_clicking_a_day_of_the_month_opens_that_day(new_page, sign_in, october):
    page = new_page(viewport=DESKTOP)
    sign_in(page, "alice")
    page.goto(f"/sites/{october.id}/history/?period=month&date=2026-10-01")
    expect(page.locator("[data-history]")).to_have_attribute("data-loaded", "true")

    page.locator("[data-figures] summary").click()
    page.get_by_role("link", name="Sun 25 Oct 2026").click()

    expect(page).to_have_url(re.compile(r"period=day&date=2026-10-25"))
    expect(page.locator("[data-total-energy]")).to_have_text("25.000")


def test_operator_sees_the_feeder_table_and_a_device_not_reporting(
    new_page, sign_in, october, operator
):
    # given: Alice's Pi online but silent for a month
    Device.objects.filter(uid="pi-a1").update(online=True, last_seen=datetime.now(UTC))
    page = new_page(viewport=DESKTOP)
    sign_in(page, "olga")

    # when
    page.goto(f"/analytics/?period=day&date={DAY.isoformat()}")

    # then
    root = page.locator("[data-analytics]")
    expect(root).to_have_attribute("data-energy-loaded", "true")
    feeder = page.locator('[data-feeders] tr[data-feeder="FD-1"]')
    expect(feeder).to_contain_text("TR-1")
    expect(feeder).to_contain_text("25.000")
    expect(page.locator("[data-grid-energy]")).to_have_text("25.000")
    assert _accent_pixels(page, "[data-feeder-chart]") > 100
    expect(page.locator(f'[data-top-sites] tr[data-site="{october.id}"]')).to_contain_text(
        "Alice home"
    )
    expect(root).to_have_attribute("data-not-reporting-loaded", "15")
    silent = page.locator('[data-not-reporting] tr[data-device="pi-a1"]')
    expect(silent).to_contain_text("online, silent")
    expect(silent).to_contain_text("Oct")  # its last reading, on 25 October
    expect(page.locator('[data-not-reporting] tr[data-device="meter-a"]')).to_contain_text(
        "offline"
    )
    _screenshot(page, "analytics-desktop")

    # and the top site opens its history for the same day
    page.locator("[data-top-sites]").get_by_role("link", name="Alice home").click()
    expect(page).to_have_url(
        re.compile(rf"/sites/{october.id}/history/\?period=day&date=2026-10-25")
    )
    expect(page.locator("[data-total-energy]")).to_have_text("25.000")


HISTORY = "/sites/{site}/history/?date=2026-10-25&period="


@pytest.mark.parametrize(
    ("name", "who", "path", "loaded"),
    [
        ("history-day", "alice", HISTORY + "day", "data-loaded"),
        ("history-week", "alice", HISTORY + "week", "data-loaded"),
        ("history-month", "alice", HISTORY + "month", "data-loaded"),
        ("history-year", "alice", HISTORY + "year", "data-loaded"),
        ("analytics", "olga", "/analytics/?period=week&date=2026-10-25", "data-energy-loaded"),
        ("analytics-year", "olga", "/analytics/?period=year&date=2026-10-25", "data-energy-loaded"),
    ],
)
def test_pages_fit_a_phone_screen_without_sideways_scrolling(
    new_page, sign_in, october, operator, name, who, path, loaded
):
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    sign_in(page, who)

    page.goto(path.format(site=october.id))

    expect(page.locator(f"[{loaded}]")).to_have_attribute(loaded, "true")
    if who == "olga":
        expect(page.locator("[data-not-reporting] tbody tr").first).to_be_visible()
    _fits_the_screen(page)
    _screenshot(page, f"{name}-phone")


def test_rows_shown_add_up_to_the_totals_shown(new_page, sign_in, alice_home):
    # given three hours of 1/3 kWh: each shown as 0.333 kWh and €0.07
    meter, _ = device_services.device_create(
        uid="meter-t", site=alice_home["site"], kind="meter",
        sensors=[{"key": "energy_kwh", "kind": "energy", "unit": "kWh"}],
    )  # fmt: skip
    lo = queries.local_midnight(date(2026, 5, 10), LISBON)
    _insert([(meter.sensors.get().id, lo + timedelta(hours=h), 1 / 3) for h in range(3)])
    page = new_page(viewport=DESKTOP)
    sign_in(page, "alice")

    page.goto(f"/sites/{alice_home['site'].id}/history/?period=day&date=2026-05-10")

    expect(page.locator("[data-history]")).to_have_attribute("data-loaded", "true")
    page.locator("[data-figures] summary").click()
    rows = page.locator("[data-slots] tbody tr")
    expect(rows.first).to_contain_text("0.333")
    expect(rows.first).to_contain_text("€0.07")
    expect(page.locator("[data-total-energy]")).to_have_text("0.999")
    expect(page.locator("[data-total-cost]")).to_have_text("€0.21")
    expect(page.locator("[data-slots-energy]")).to_have_text("0.999")
    _screenshot(page, "history-adds-up-desktop")


@pytest.mark.parametrize("who", ["alice", "olga"])
def test_the_date_field_shows_and_takes_iso_dates(new_page, sign_in, alice_home, operator, who):
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True, locale="en-US")
    sign_in(page, who)
    path = f"/sites/{alice_home['site'].id}/history/" if who == "alice" else "/analytics/"
    page.goto(f"{path}?period=week&date=2026-10-28")

    # then the field shows the ISO date as it is, whatever the browser's locale
    field = page.locator("#jump-date")
    expect(field).to_have_value("2026-10-28")
    assert field.evaluate("el => el.type") == "text"

    # when another ISO date is typed and shown
    field.fill("2026-03-29")
    with page.expect_navigation():
        page.get_by_role("button", name="Show").click()
    expect(page).to_have_url(re.compile(r"date=2026-03-29"))
    expect(page.locator("#jump-date")).to_have_value("2026-03-29")

    # and a date in another format is refused by the field, before any request
    field = page.locator("#jump-date")
    field.fill("29/03/2026")
    assert field.evaluate("el => el.checkValidity()") is False
    _fits_the_screen(page)


@pytest.mark.parametrize("who", ["alice", "olga"])
def test_a_future_period_says_so_instead_of_zeros(new_page, sign_in, alice_home, operator, who):
    later = (datetime.now(LISBON).date() + timedelta(days=400)).isoformat()
    page = new_page(viewport=DESKTOP)
    sign_in(page, who)
    path = f"/sites/{alice_home['site'].id}/history/" if who == "alice" else "/analytics/"

    page.goto(f"{path}?period=month&date={later}")

    expect(page.locator("[data-future]")).to_have_text(
        f"{later} is in the future; nothing measured yet."
    )
    expect(page.locator("[data-total-energy], [data-grid-energy]")).to_have_count(0)
    _screenshot(page, f"future-{who}-desktop")


def test_operator_sees_the_grid_by_month_in_the_year(new_page, sign_in, october, operator):
    page = new_page(viewport=DESKTOP)
    sign_in(page, "olga")

    page.goto("/analytics/?period=year&date=2026-10-25")

    root = page.locator("[data-analytics]")
    expect(root).to_have_attribute("data-energy-loaded", "true")
    expect(page.locator("[data-period-title]")).to_have_text("2026")
    expect(page.locator('[data-period-tab="year"]')).to_have_attribute("aria-current", "page")
    expect(page.locator("[data-grid-energy]")).to_have_text("745.000")
    page.locator("[data-figures] summary").click()
    months = page.locator("[data-grid-slots] tbody tr")
    expect(months).to_have_count(12)
    expect(page.locator('[data-grid-slots] tr[data-slot="2026-10-01"]')).to_contain_text("745.000")
    expect(page.locator("[data-grid-slots-total]")).to_have_text("745.000")
    assert _accent_pixels(page, "[data-slot-chart]") > 100
    _screenshot(page, "analytics-year-desktop")
