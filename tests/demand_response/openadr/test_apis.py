"""`/api/v1/openadr/connections/`: staff configure VTN connections, operators read them,
residents are refused; input is validated with errors naming the field; the client key is
write-only; what the VEN process writes is read-only."""

from datetime import timedelta

import pytest

from django.utils import timezone

from demand_response.models import VtnConnection
from demand_response.openadr import services

URL = "/api/v1/openadr/connections/"
pytestmark = pytest.mark.django_db

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def clients(api_client_for, alice, operator, admin_user):
    return {
        "alice": api_client_for(alice),
        "operator": api_client_for(operator),
        "staff": api_client_for(admin_user),
    }


def body(program, /, **given) -> dict:
    return {
        "vtn_url": "https://vtn.example/OpenADR2/Simple/2.0b/",
        "ven_name": "portal",
        "program": program.pk,
        "poll_interval_s": 5,
        "target_map": {"R1": {"feeders": ["FD-1"]}},
    } | given


def _event(event_id: str, number: int) -> dict:
    start = timezone.now() + timedelta(hours=1)
    return {
        "event_descriptor": {"event_id": event_id, "modification_number": number,
                             "event_status": "far"},
        "active_period": {"dtstart": start, "duration": timedelta(hours=1)},
        "event_signals": [{"signal_name": "SIMPLE", "intervals": [{"signal_payload": 1}]}],
    }  # fmt: skip


def errors_of(response) -> dict:
    assert response.status_code == 400, response.content
    return response.json()["errors"]


def test_staff_create_a_connection_and_the_key_is_never_shown(clients, program, feeder):
    response = clients["staff"].post(
        URL, body(program, client_cert=CERT, client_key=KEY), format="json"
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["vtn_url"] == "https://vtn.example/OpenADR2/Simple/2.0b"
    assert data["has_client_key"] is True and "client_key" not in data
    assert (data["state"], data["last_poll_at"], data["ven_id"]) == ("new", None, "")
    assert VtnConnection.objects.get().client_key == KEY


def test_what_the_ven_writes_is_read_only(clients, program):
    created = clients["staff"].post(URL, body(program), format="json").json()
    response = clients["staff"].patch(
        f"{URL}{created['id']}/", {"state": "registered", "ven_id": "forged", "enabled": False},
        format="json",
    )  # fmt: skip
    assert response.status_code == 200
    connection = VtnConnection.objects.get()
    assert (connection.state, connection.ven_id, connection.enabled) == ("new", "", False)


def test_operators_read_but_cannot_change_and_residents_are_refused(clients, program):
    created = clients["staff"].post(URL, body(program), format="json").json()
    assert clients["operator"].get(URL).json()["results"][0]["id"] == created["id"]
    assert clients["operator"].get(f"{URL}{created['id']}/").status_code == 200
    assert (
        clients["operator"].post(URL, body(program, ven_name="x"), format="json").status_code == 403
    )
    assert clients["operator"].delete(f"{URL}{created['id']}/").status_code == 403
    assert clients["alice"].get(URL).status_code == 403
    assert clients["alice"].get(f"{URL}{created['id']}/").status_code == 403


@pytest.mark.parametrize(
    ("given", "field", "says"),
    [
        ({"vtn_url": "ftp://vtn.example/"}, "vtn_url", "http"),
        ({"poll_interval_s": 0}, "poll_interval_s", ""),
        ({"target_map": {"R1": {"feeders": ["NOPE"]}}}, "target_map", "Unknown feeders"),
        ({"target_map": {"R1": {"sites": [999999]}}}, "target_map", "Unknown sites"),
        ({"target_map": {"R1": "FD-1"}}, "target_map", "feeders"),
        ({"client_cert": CERT}, "client_cert", "together"),
        ({"client_cert": "not pem", "client_key": KEY}, "client_cert", "PEM"),
        ({"program": 999999}, "program", ""),
        ({"opt_rule": "sometimes"}, "opt_rule", ""),
    ],
)
def test_bad_input_is_a_400_naming_the_field(clients, program, feeder, given, field, says):
    errors = errors_of(clients["staff"].post(URL, body(program, **given), format="json"))
    assert field in errors, errors
    assert says in str(errors[field])


def test_a_connection_events_came_from_cannot_be_deleted(clients, program, alice_home):
    created = clients["staff"].post(URL, body(program, target_map={}), format="json").json()
    services.vtn_event_receive(connection_id=created["id"], event=_event("e", 0))
    assert clients["staff"].delete(f"{URL}{created['id']}/").status_code == 409
    unused = clients["staff"].post(URL, body(program, ven_name="other"), format="json").json()
    assert clients["staff"].delete(f"{URL}{unused['id']}/").status_code == 204


def test_an_event_says_which_vtn_event_it_came_from(clients, program, alice_home, schedule):
    created = clients["staff"].post(URL, body(program, target_map={}), format="json").json()
    services.vtn_event_receive(connection_id=created["id"], event=_event("UTIL-1", 4))
    ours = schedule()
    events = {e["id"]: e for e in clients["operator"].get("/api/v1/dr/events/").json()["results"]}
    from_vtn = next(e for e in events.values() if e["source"])
    assert from_vtn["source"] == {
        "vtn_connection": created["id"], "vtn_event_id": "UTIL-1", "modification_number": 4,
        "answer": "optOut",
    }  # fmt: skip
    assert events[ours.pk]["source"] is None


def test_the_connection_list_takes_as_many_queries_for_one_as_for_five(
    clients, program, django_assert_max_num_queries
):
    clients["staff"].post(URL, body(program, ven_name="v0"), format="json")
    with django_assert_max_num_queries(20) as one:
        assert len(clients["operator"].get(URL).json()["results"]) == 1
    queries = len(one.captured_queries)  # read now: each request below empties Django's log
    for n in range(1, 5):
        clients["staff"].post(URL, body(program, ven_name=f"v{n}"), format="json")
    with django_assert_max_num_queries(queries):
        assert len(clients["operator"].get(URL).json()["results"]) == 5
