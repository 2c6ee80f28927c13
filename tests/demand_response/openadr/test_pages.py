"""What operators and staff see of the VEN: the events page's source column and connections
table (state, last poll, answers and reports sent), the event page's VTN panel, the admin."""

from datetime import timedelta

import pytest

from django.urls import reverse
from django.utils import timezone

from demand_response.models import VenState, VtnConnection, VtnMessageKind
from demand_response.openadr import services

pytestmark = pytest.mark.django_db


@pytest.fixture
def from_vtn(program, alice_home):
    connection = VtnConnection.objects.create(
        vtn_url="http://127.0.0.1:8299/OpenADR2/Simple/2.0b", ven_name="utility-ven",
        program=program,
    )  # fmt: skip
    services.connection_state_set(
        connection_id=connection.pk, state=VenState.REGISTERED, polled=True, ven_id="V-42"
    )
    start = timezone.now() + timedelta(hours=1)
    services.vtn_event_receive(
        connection_id=connection.pk,
        event={
            "event_descriptor": {"event_id": "UTIL-7", "modification_number": 2,
                                 "event_status": "far"},
            "active_period": {"dtstart": start, "duration": timedelta(hours=1)},
            "event_signals": [{"signal_name": "SIMPLE", "intervals": [{"signal_payload": 2}]}],
        },
    )  # fmt: skip
    services.vtn_message_log(
        connection_id=connection.pk, kind=VtnMessageKind.REPORT,
        report_name="TELEMETRY_USAGE", value=1234.5,
    )  # fmt: skip
    connection.refresh_from_db()
    return connection


def test_the_events_page_shows_the_source_and_the_connection(client, operator, from_vtn):
    client.force_login(operator)
    page = client.get(reverse("dr-page-events")).content.decode()
    assert "VTN utility-ven: UTIL-7 #2 (optOut)" in page
    assert 'data-vtn-state="registered"' in page
    assert from_vtn.last_poll_at is not None
    assert "TELEMETRY_USAGE = 1234.5" in page
    assert 'data-vtn-message="created_event"' in page


def test_the_event_page_shows_its_vtn_and_answers(client, operator, from_vtn):
    client.force_login(operator)
    event = from_vtn.vtn_events.get().event
    page = client.get(reverse("dr-page-event", args=[event.pk])).content.decode()
    assert "From VTN utility-ven" in page and "VTN event UTIL-7, modification 2" in page
    assert "oadrCreatedEvent (answer) optOut" in page


def test_the_admin_lists_connections_events_and_messages(client, admin_user, from_vtn):
    client.force_login(admin_user)
    for name in ("vtnconnection", "vtnevent", "vtnmessage", "event"):
        response = client.get(reverse(f"admin:demand_response_{name}_changelist"))
        assert response.status_code == 200, name
    page = client.get(
        reverse("admin:demand_response_vtnconnection_change", args=[from_vtn.pk])
    ).content.decode()
    assert "UTIL-7" in page and "V-42" in page


def test_the_admin_never_shows_the_client_key_and_keeps_it_when_left_empty(
    client, admin_user, from_vtn
):
    key = "-----BEGIN PRIVATE KEY-----\nSECRETKEYBODY\n-----END PRIVATE KEY-----\n"
    VtnConnection.objects.filter(pk=from_vtn.pk).update(client_cert="-----BEGIN CERTIFICATE-----")
    from_vtn.refresh_from_db()
    from_vtn.client_key = key
    from_vtn.save()
    client.force_login(admin_user)
    url = reverse("admin:demand_response_vtnconnection_change", args=[from_vtn.pk])
    page = client.get(url).content.decode()
    assert "SECRETKEYBODY" not in page
    form = {
        "vtn_url": from_vtn.vtn_url, "ven_name": "renamed", "program": from_vtn.program_id,
        "enabled": "on", "poll_interval_s": 3, "target_map": "{}", "opt_rule": "any_opted_in",
        "client_cert": from_vtn.client_cert, "client_key": "", "vtn_ca_cert": "",
        "vtn_fingerprint": "",
        **{f"{prefix}-{field}": value for prefix in ("vtn_events", "messages")
           for field, value in (("TOTAL_FORMS", 0), ("INITIAL_FORMS", 0))},
    }  # fmt: skip
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:3000]
    from_vtn.refresh_from_db()
    assert (from_vtn.ven_name, from_vtn.client_key) == ("renamed", key)
