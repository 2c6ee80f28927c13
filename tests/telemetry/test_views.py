"""The history and analytics pages: who may open them, the period they show, their links, and
that they render without touching readings (the browser fetches the figures)."""

import re
import zoneinfo
from datetime import timedelta

import pytest

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices.models import Site

READING_TABLES = ("energy_readings", "rollup_15m", "rollup_1h", "rollup_1d", "rollup_dirty")


def history(site_id: int, query: str = "") -> str:
    return f"/sites/{site_id}/history/{'?' + query if query else ''}"


def attribute(html: str, name: str) -> str:
    match = re.search(rf'{name}="([^"]*)"', html)
    assert match, name
    return match.group(1).replace("&amp;", "&")


# --- the history page ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_history_page_is_a_frame_that_names_the_api_it_draws_from(client, alice, alice_home):
    client.force_login(alice)
    site = alice_home["site"]

    with CaptureQueriesContext(connection) as queries_run:
        response = client.get(history(site.id, "period=day&date=2026-10-25"))

    # then: no query over readings or rollups; the page points at the JSON and the CSV
    assert response.status_code == 200
    assert not [
        q for q in queries_run.captured_queries if any(t in q["sql"] for t in READING_TABLES)
    ]
    html = response.content.decode()
    assert "Alice home" in html
    assert "Sunday 25 October 2026" in html
    api = f"/api/v1/sites/{site.id}/energy/?period=day&date=2026-10-25"
    assert attribute(html, "data-api") == api
    assert f'href="{api.replace("&", "&amp;")}&amp;format=csv"' in html
    assert "vendor/uplot/uPlot.iife.min.js" in html
    assert "js/history.js" in html


@pytest.mark.django_db
def test_history_page_query_count_is_small_and_fixed(
    client, alice, alice_home, django_assert_max_num_queries
):
    client.force_login(alice)

    with django_assert_max_num_queries(6):
        response = client.get(history(alice_home["site"].id, "period=year&date=2026-01-01"))
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "title", "previous", "following"),
    [
        ("period=day&date=2026-03-29", "Sunday 29 March 2026", "2026-03-28", "2026-03-30"),
        (
            "period=week&date=2026-10-28",
            "26 October \N{EN DASH} 1 November 2026",
            "2026-10-19",
            "2026-11-02",
        ),
        (
            "period=week&date=2026-01-01",
            "29 December 2025 \N{EN DASH} 4 January 2026",
            "2025-12-22",
            "2026-01-05",
        ),
        ("period=month&date=2026-02-14", "February 2026", "2026-01-01", "2026-03-01"),
        ("period=year&date=2025-07-01", "2025", "2024-01-01", "2026-01-01"),
    ],
)
def test_history_page_shows_the_period_and_links_to_its_neighbours(
    client, alice, alice_home, query, title, previous, following
):
    client.force_login(alice)
    site = alice_home["site"]

    html = client.get(history(site.id, query)).content.decode()

    assert title in html
    kind = query.split("&")[0].split("=")[1]
    assert f'href="/sites/{site.id}/history/?period={kind}&amp;date={previous}" rel="prev"' in html
    assert f'href="/sites/{site.id}/history/?period={kind}&amp;date={following}" rel="next"' in html


@pytest.mark.django_db
def test_history_page_tabs_keep_the_date_and_there_is_no_next_after_today(
    client, alice, alice_home
):
    client.force_login(alice)
    site = alice_home["site"]
    today = timezone.now().astimezone(zoneinfo.ZoneInfo(site.timezone)).date()

    html = client.get(history(site.id, "period=month&date=2026-10-25")).content.decode()
    current = client.get(history(site.id, "period=year")).content.decode()

    for kind in ("day", "week", "month", "year"):
        assert f'href="/sites/{site.id}/history/?period={kind}&amp;date=2026-10-25"' in html
    assert 'aria-current="page">Month<' in html
    assert 'rel="next"' not in current
    assert f">{today.year}<" in current


@pytest.mark.django_db
def test_history_page_defaults_to_today_in_the_sites_time(client, alice, alice_home):
    client.force_login(alice)
    site = alice_home["site"]
    Site.objects.filter(pk=site.pk).update(timezone="Pacific/Kiritimati")  # UTC+14
    today = timezone.now().astimezone(zoneinfo.ZoneInfo("Pacific/Kiritimati"))

    html = client.get(history(site.id)).content.decode()

    api = attribute(html, "data-api")
    assert api.endswith(f"period=day&date={today.date().isoformat()}")


@pytest.mark.django_db
def test_a_resident_gets_404_for_another_residents_site(client, alice, alice_home, bob_home):
    client.force_login(alice)

    theirs = client.get(history(bob_home["site"].id))
    missing = client.get(history(999_999))

    for response in (theirs, missing):
        assert response.status_code == 404
        html = response.content.decode()
        assert "does not exist or is not one of yours" in html
        assert "Bob home" not in html


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["operator", "admin_user"])
def test_operators_open_any_sites_history(client, request, who, bob_home):
    client.force_login(request.getfixturevalue(who))

    response = client.get(history(bob_home["site"].id, "period=week"))

    assert response.status_code == 200
    assert "Bob home" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("period=decade", "use day, week, month or year"),
        ("date=2026-02-30", "not a day of the calendar"),
        ("date=25/10/2026", "use YYYY-MM-DD"),
        ("period=day&date=1850-01-01", "between 2000-01-01 and 2099-12-31"),
    ],
)
def test_bad_period_or_date_is_a_400_page_saying_what_was_wrong(
    client, alice, alice_home, query, says
):
    client.force_login(alice)

    response = client.get(history(alice_home["site"].id, query))

    assert response.status_code == 400
    assert says in response.content.decode()


@pytest.mark.parametrize("path", ["/history/", "/sites/1/history/", "/analytics/"])
def test_pages_send_anonymous_visitors_to_login(client, db, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.django_db
def test_dashboard_links_each_site_to_its_history(client, alice, alice_home):
    second = Site.objects.create(name="Alice cabin")
    second.residents.add(alice)
    client.force_login(alice)

    html = client.get("/dashboard/").content.decode()

    for site in (alice_home["site"], second):
        assert f'href="/sites/{site.id}/history/" data-history-link' in html


@pytest.mark.django_db
def test_history_menu_opens_a_residents_only_home(client, alice, alice_home):
    client.force_login(alice)

    response = client.get("/history/")

    assert response.status_code == 302
    assert response["Location"] == f"/sites/{alice_home['site'].id}/history/"


@pytest.mark.django_db
def test_history_menu_lists_the_homes_of_a_resident_with_several(client, alice, alice_home):
    second = Site.objects.create(name="Alice cabin")
    second.residents.add(alice)
    client.force_login(alice)

    response = client.get("/history/")

    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="/sites/{alice_home["site"].id}/history/"' in html
    assert f'href="/sites/{second.id}/history/"' in html


# --- the analytics page --------------------------------------------------------------------------


def test_analytics_page_is_forbidden_for_residents(client, alice, alice_home):
    client.force_login(alice)

    assert client.get("/analytics/").status_code == 403


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["operator", "admin_user"])
def test_analytics_page_is_a_frame_for_operators(client, request, who, alice_home):
    client.force_login(request.getfixturevalue(who))

    with CaptureQueriesContext(connection) as queries_run:
        response = client.get("/analytics/?period=week&date=2026-10-28")

    assert response.status_code == 200
    assert not [
        q for q in queries_run.captured_queries if any(t in q["sql"] for t in READING_TABLES)
    ]
    assert len(queries_run.captured_queries) <= 5
    html = response.content.decode()
    assert attribute(html, "data-energy-api") == (
        "/api/v1/analytics/energy/?period=week&date=2026-10-26"
    )
    assert attribute(html, "data-not-reporting-api") == "/api/v1/analytics/not-reporting/"
    assert "26 October \N{EN DASH} 1 November 2026" in html
    assert "js/analytics.js" in html


@pytest.mark.django_db
def test_analytics_page_has_a_year_view_by_month(client, operator):
    client.force_login(operator)

    response = client.get("/analytics/?period=year&date=2026-10-28")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-period-tab="year"' in html
    assert attribute(html, "data-energy-api") == (
        "/api/v1/analytics/energy/?period=year&date=2026-01-01"
    )
    assert "Energy by month" in html
    assert "2026" in html


@pytest.mark.django_db
def test_analytics_page_refuses_an_unknown_period_with_400(client, operator):
    client.force_login(operator)

    response = client.get("/analytics/?period=fortnight")

    assert response.status_code == 400
    assert "use day, week, month or year" in response.content.decode()


# --- a future period, and the date field ------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("kind", ["day", "week", "month", "year"])
def test_a_period_wholly_in_the_future_says_so_instead_of_zeros(
    client, operator, alice, alice_home, kind
):
    site = alice_home["site"]
    later = timezone.now().astimezone(zoneinfo.ZoneInfo(site.timezone)).date()
    later = later.replace(year=later.year + 1)
    for who, path in ((alice, history(site.id)), (operator, "/analytics/")):
        client.force_login(who)

        html = client.get(f"{path}?period={kind}&date={later.isoformat()}").content.decode()

        assert f"{later.isoformat()} is in the future; nothing measured yet." in html
        # nothing to fetch, no figures to show
        assert "data-api=" not in html
        assert "data-energy-api=" not in html
        assert "data-total-energy" not in html
        assert "data-grid-energy" not in html
        assert "data-csv-link" not in html


@pytest.mark.django_db
def test_the_current_period_is_not_in_the_future(client, alice, alice_home):
    client.force_login(alice)
    site = alice_home["site"]
    today = timezone.now().astimezone(zoneinfo.ZoneInfo(site.timezone)).date()
    tomorrow = today + timedelta(days=1)

    html = client.get(history(site.id, f"period=year&date={tomorrow.isoformat()}")).content
    html = html.decode()

    if tomorrow.year == today.year:  # the year holding today has begun
        assert "is in the future" not in html
        assert "data-api=" in html
    day = client.get(history(site.id, f"period=day&date={tomorrow.isoformat()}")).content
    assert f"{tomorrow.isoformat()} is in the future" in day.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["history", "/analytics/"])
def test_the_date_field_holds_an_iso_date_as_text(client, operator, alice_home, path):
    client.force_login(operator)
    if path == "history":
        path = history(alice_home["site"].id)

    html = client.get(f"{path}?period=week&date=2026-10-28").content.decode()

    field = re.search(r'<input type="text" id="jump-date"[^>]*>', html)
    assert field, "the date field is a text field (type=date shows the locale's format)"
    assert 'value="2026-10-28"' in field.group(0)
    assert 'placeholder="YYYY-MM-DD"' in field.group(0)
    assert 'pattern="[0-9]{4}-[0-9]{2}-[0-9]{2}"' in field.group(0)


@pytest.mark.django_db
@pytest.mark.parametrize(("who", "sees"), [("operator", True), ("alice", False)])
def test_analytics_is_in_the_menu_of_operators_only(client, request, who, sees):
    client.force_login(request.getfixturevalue(who))

    html = client.get("/dashboard/").content.decode()

    assert ('href="/analytics/"' in html) is sees
    assert ('href="/history/"' in html) is not sees
