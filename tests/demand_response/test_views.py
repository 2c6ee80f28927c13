"""The demand-response pages: who may see and do what, the event form's errors in plain words,
the report's CSV with the worked example's figures (tests/demand_response/test_settlement.py),
and the live figures the pages show (load against baseline, kWh saved so far)."""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from django.urls import reverse

from demand_response import selectors, services
from demand_response.models import Event, Invitation
from tests.demand_response.test_settlement import END, START, worked_example

pytestmark = pytest.mark.django_db


def _form(program, **given) -> dict:
    start = datetime.now(UTC) + timedelta(hours=2)
    return {
        "program": program.pk,
        "start": start.strftime("%Y-%m-%dT%H:%M"),
        "end": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),
        "signal_type": "level",
        "signal_value": "2",
        "target_feeders": [program.eligible_feeders.get().pk],
        "randomization_s": "0",
    } | given


def test_residents_get_403_from_every_operator_page_and_strangers_the_login(
    client, alice, alice_home, schedule
):
    event = schedule()
    urls = [
        reverse("dr-page-events"),
        reverse("dr-page-event", args=[event.pk]),
        reverse("dr-page-event-summary", args=[event.pk]),
        reverse("dr-page-event-csv", args=[event.pk]),
    ]
    for url in urls:
        assert client.get(url).status_code == 302
    client.force_login(alice)
    for url in urls:
        assert client.get(url).status_code == 403
    assert client.post(reverse("dr-page-event-cancel", args=[event.pk])).status_code == 403
    assert Event.objects.get(pk=event.pk).status == "scheduled"


def test_an_operator_schedules_an_event_from_the_form_and_sees_it_listed(
    client, operator, program, alice_home, bob_home
):
    client.force_login(operator)
    response = client.post(reverse("dr-page-events"), _form(program))
    event = Event.objects.get()
    assert response.status_code == 302
    assert response.url == reverse("dr-page-event", args=[event.pk])
    assert set(event.invitations.values_list("site_id", flat=True)) == {
        alice_home["site"].pk,
        bob_home["site"].pk,
    }
    page = client.get(reverse("dr-page-events")).content.decode()
    assert f'data-event="{event.pk}"' in page
    assert "level 2" in page
    assert "Demand response" in page  # the nav link


@pytest.mark.parametrize(
    ("given", "field", "words"),
    [
        ({"end": "2020-01-01T00:00"}, "end", "The end must be after the start."),
        ({"start": "2020-01-01T00:00"}, "start", "The start is in the past"),
        ({"target_feeders": []}, "target_sites", "Target at least one site or feeder."),
        ({"signal_value": "7"}, "signal_value", "A level must be a whole number from 0 to 3."),
        ({"start": "tomorrow"}, "start", "Enter a valid date/time."),
    ],
)
def test_a_bad_event_is_refused_with_the_reason_on_its_field_and_nothing_created(
    client, operator, program, alice_home, given, field, words
):
    client.force_login(operator)
    response = client.post(reverse("dr-page-events"), _form(program, **given))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert any(words in message for message in errors[field]), errors
    assert f'data-error-for="{field}"' in response.content.decode()
    assert not Event.objects.exists()


def test_an_operator_cancels_a_scheduled_event_and_a_get_cancels_nothing(
    client, operator, schedule, alice_home
):
    event = schedule(now=None, start=datetime.now(UTC) + timedelta(hours=1),
                     end=datetime.now(UTC) + timedelta(hours=2))  # fmt: skip
    client.force_login(operator)
    assert client.get(reverse("dr-page-event-cancel", args=[event.pk])).status_code == 405
    response = client.post(reverse("dr-page-event-cancel", args=[event.pk]))
    assert response.status_code == 302
    assert Event.objects.get(pk=event.pk).status == "cancelled"
    page = client.get(reverse("dr-page-event", args=[event.pk])).content.decode()
    assert "Cancelled" in page and "data-cancel-event" not in page


def test_the_report_csv_has_each_site_and_the_total_as_computed_by_hand(
    client, operator, schedule, alice_home, bob_home
):
    # given the worked example settled: Alice 2.0 kWh baseline, 0.8 used, 1.2 delivered, paid
    # 1.2 x 0.2375 = 0.285 -> 0.29 EUR; Bob only 3 clean days: no baseline, not paid
    event = worked_example(schedule, alice_home, bob_home)
    services.event_settle(event_id=event.pk)
    client.force_login(operator)
    response = client.get(reverse("dr-page-event-csv", args=[event.pk]))
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    alice, bob = alice_home["site"], bob_home["site"]
    assert rows == [
        ["site_id", "site", "status", "baseline_kwh", "adjustment", "actual_kwh",
         "delivered_kwh", "reward", "currency", "baseline_days"],
        [str(alice.pk), "Alice home", "ok", "2.0000", "1.0000", "0.8000", "1.2000", "0.29",
         "EUR", "10"],
        [str(bob.pk), "Bob home", "insufficient_baseline", "", "", "1.0000", "0.0000", "0.00",
         "EUR", "3"],
        ["", "TOTAL", "1 of 2 sites paid", "", "", "", "1.2000", "0.29", "EUR", ""],
    ]  # fmt: skip
    page = client.get(reverse("dr-page-event", args=[event.pk])).content.decode()
    assert "data-dr-report" in page and "€0.29" in page


def test_the_chart_sums_the_invited_sites_load_against_the_baselines_they_have(
    schedule, alice_home, bob_home
):
    # given the worked example: both homes use 1 kW an hour before; in the event Alice 0.8 kW
    # (baseline 2 kW), Bob 1 kW (no baseline)
    event = worked_example(schedule, alice_home, bob_home)
    chart = selectors.event_load_chart(event=event, now=END)
    assert chart["quarters"][0] == (START - timedelta(hours=1)).timestamp()
    assert chart["baseline_kw"] == [None] * 4 + [2.0] * 4
    assert chart["actual_kw"] == [2.0] * 4 + [1.8] * 4
    assert (chart["sites"], chart["sites_with_baseline"]) == (2, 1)


def test_saved_so_far_is_the_baseline_so_far_minus_what_was_used(schedule, alice_home, bob_home):
    # half an hour in: baseline 2 x 0.5 kWh, used 2 x 0.2 kWh
    event = worked_example(schedule, alice_home, bob_home)
    saving = selectors.site_event_saving(
        event=event, site=alice_home["site"], now=START + timedelta(minutes=30)
    )
    assert saving == {
        "baseline_kwh": Decimal("1.0"),
        "actual_kwh": Decimal("0.4"),
        "saved_kwh": Decimal("0.6"),
    }
    assert selectors.site_event_saving(event=event, site=bob_home["site"], now=END) is None


def test_a_resident_opts_in_for_their_own_site_only(client, alice, schedule, alice_home, bob_home):
    event = schedule(now=None, start=datetime.now(UTC) + timedelta(hours=1),
                     end=datetime.now(UTC) + timedelta(hours=2))  # fmt: skip
    mine = Invitation.objects.get(event=event, site=alice_home["site"])
    bobs = Invitation.objects.get(event=event, site=bob_home["site"])
    client.force_login(alice)
    url = "dr-page-invitation-respond"
    assert client.post(reverse(url, args=[bobs.pk]), {"response": "opt_in"}).status_code == 404
    response = client.post(reverse(url, args=[mine.pk]), {"response": "opt_in"})
    assert response.status_code == 302 and response.url == reverse("dashboard")
    mine.refresh_from_db()
    bobs.refresh_from_db()
    assert (mine.status, mine.answered_by, mine.responder) == ("opted_in", "resident", alice)
    assert bobs.status == "pending"
    page = client.get(reverse("dashboard")).content.decode()
    assert f'data-dr-invitation="{mine.pk}"' in page and "You are taking part." in page
    assert f'data-dr-invitation="{bobs.pk}"' not in page
    assert client.get(reverse("dr-page-site-panel", args=[bob_home["site"].pk])).status_code == 404


def test_a_refused_answer_says_why_and_changes_nothing(client, alice, schedule, alice_home):
    event = schedule(now=None, start=datetime.now(UTC) + timedelta(hours=1),
                     end=datetime.now(UTC) + timedelta(hours=2))  # fmt: skip
    services.event_cancel(event_id=event.pk)
    mine = Invitation.objects.get(event=event, site=alice_home["site"])
    client.force_login(alice)
    url = reverse("dr-page-invitation-respond", args=[mine.pk])
    response = client.post(url, {"response": "opt_in"}, follow=True)
    assert "The event is cancelled; it takes no answers." in response.content.decode()
    response = client.post(url, {"response": "maybe"}, follow=True)
    assert "Answer &quot;opt_in&quot; or &quot;opt_out&quot;." in response.content.decode()
    assert Invitation.objects.get(pk=mine.pk).status == "pending"


def test_the_dashboard_reads_invitations_in_a_fixed_number_of_queries(
    client, alice, schedule, alice_home, django_assert_max_num_queries
):
    client.force_login(alice)
    soon = datetime.now(UTC) + timedelta(hours=1)
    schedule(now=None, start=soon, end=soon + timedelta(hours=1))
    with django_assert_max_num_queries(40) as one:
        client.get(reverse("dashboard"))
    for n in range(2, 6):
        schedule(now=None, start=soon + timedelta(hours=n), end=soon + timedelta(hours=n + 1))
    with django_assert_max_num_queries(len(one.captured_queries)):
        response = client.get(reverse("dashboard"))
    assert response.content.decode().count("data-dr-invitation=") == 5


def test_an_event_days_ahead_shows_its_page_with_an_empty_chart(
    client, operator, schedule, alice_home
):
    soon = datetime.now(UTC) + timedelta(days=3)
    event = schedule(now=None, start=soon, end=soon + timedelta(hours=1))
    client.force_login(operator)
    response = client.get(reverse("dr-page-event", args=[event.pk]))
    assert response.status_code == 200
    chart = response.context["chart"]
    assert set(chart["actual_kw"]) == {None} and chart["sites_with_baseline"] == 0


def test_the_events_page_reads_in_a_fixed_number_of_queries(
    client, operator, schedule, alice_home, bob_home, django_assert_max_num_queries
):
    client.force_login(operator)
    soon = datetime.now(UTC) + timedelta(hours=1)
    schedule(now=None, start=soon, end=soon + timedelta(hours=1))
    with django_assert_max_num_queries(40) as one:
        client.get(reverse("dr-page-events"))
    for n in range(2, 6):
        schedule(now=None, start=soon + timedelta(hours=n), end=soon + timedelta(hours=n + 1))
    with django_assert_max_num_queries(len(one.captured_queries)):
        response = client.get(reverse("dr-page-events"))
    assert response.content.decode().count("data-event=") == 5
