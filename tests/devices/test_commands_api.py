"""Commands through the REST API: who may send which, what a bad one is told, and progress."""

from datetime import timedelta

import pytest
from rest_framework.test import APIClient

from django.utils import timezone

from devices import services
from devices.models import Command, CommandStatus

API = "/api/v1/"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def commands_url(uid: str) -> str:
    return f"{API}devices/{uid}/commands/"


def command_url(command) -> str:
    return f"{API}commands/{command.id if isinstance(command, Command) else command}/"


# --- issuing -----------------------------------------------------------------------------------


def test_operator_issues_a_command_and_gets_202_with_the_pending_command(
    alice_home, operator, api_client_for
):
    before = timezone.now()

    response = api_client_for(operator).post(
        commands_url("pi-a1"), {"name": "curtail", "args": {"kw": 1.5}, "ttl_s": 60}, format="json"
    )

    assert response.status_code == 202, response.json()
    body = response.json()
    assert {k: body[k] for k in ("device", "name", "args", "status", "detail", "sent_at")} == {
        "device": "pi-a1",
        "name": "curtail",
        "args": {"kw": 1.5},
        "status": "pending",
        "detail": "",
        "sent_at": None,
    }
    command = Command.objects.get(pk=body["id"])
    assert command.device == alice_home["device"]
    assert command.created_by == operator
    assert (
        before + timedelta(seconds=60)
        <= command.expires_at
        <= timezone.now() + timedelta(seconds=60)
    )


def test_command_without_args_or_ttl_gets_defaults(alice_home, operator, api_client_for):
    response = api_client_for(operator).post(commands_url("pi-a1"), {"name": "ping"}, format="json")

    assert response.status_code == 202, response.json()
    command = Command.objects.get(pk=response.json()["id"])
    assert command.args == {}
    assert command.expires_at - command.created_at == pytest.approx(
        services.DEFAULT_COMMAND_TTL, abs=timedelta(seconds=5)
    )


def test_unknown_command_name_is_400_listing_the_known_ones(alice_home, operator, api_client_for):
    response = api_client_for(operator).post(
        commands_url("pi-a1"), {"name": "selfdestruct"}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "name": [
            "Unknown command 'selfdestruct'; "
            "known commands: curtail, ping, relay, restore, simulate_mains."
        ]
    }
    assert not Command.objects.exists()


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"name": "relay", "args": {"state": "dim"}}, "args", 'relay takes {"state": "on"}'),
        ({"name": "relay"}, "args", 'relay takes {"state": "on"}'),
        ({"name": "curtail", "args": {"kw": -1}}, "args", "curtail takes"),
        ({"name": "curtail", "args": {"kw": True}}, "args", "curtail takes"),
        ({"name": "ping", "args": {"x": 1}}, "args", "ping takes no args"),
        ({"name": "ping", "args": [1]}, "args", "dictionary"),
        ({"name": "ping", "ttl_s": 0}, "ttl_s", "greater than or equal to 1"),
        ({"name": "bad name!"}, "name", "letters, numbers"),
        ({}, "name", "required"),
    ],
    ids=[
        "relay-bad-state",
        "relay-no-args",
        "curtail-negative",
        "curtail-bool",
        "ping-with-args",
        "args-not-object",
        "ttl-zero",
        "name-not-slug",
        "name-missing",
    ],
)
def test_bad_command_is_400_saying_what_is_wrong(
    alice_home, operator, api_client_for, payload, field, words
):
    response = api_client_for(operator).post(commands_url("pi-a1"), payload, format="json")

    assert response.status_code == 400
    errors = response.json()["errors"]
    assert list(errors) == [field]
    assert words in " ".join(errors[field]), errors
    assert not Command.objects.exists()


def test_resident_switches_the_relay_of_their_own_controllable_device(
    alice_home, alice, api_client_for
):
    response = api_client_for(alice).post(
        commands_url("pi-a1"), {"name": "relay", "args": {"state": "off"}}, format="json"
    )

    assert response.status_code == 202, response.json()
    assert Command.objects.get().created_by == alice


def test_resident_may_not_curtail_their_own_device(alice_home, alice, api_client_for):
    response = api_client_for(alice).post(
        commands_url("pi-a1"), {"name": "curtail", "args": {"kw": 1}}, format="json"
    )

    assert response.status_code == 403
    assert response.json()["detail"] == "Residents may only switch the relay on or off."
    assert not Command.objects.exists()


def test_resident_cannot_command_another_residents_device(
    alice_home, bob_home, alice, api_client_for
):
    response = api_client_for(alice).post(
        commands_url("pi-b1"), {"name": "relay", "args": {"state": "off"}}, format="json"
    )

    assert response.status_code == 404
    assert not Command.objects.exists()


def test_resident_cannot_command_their_own_device_that_is_not_controllable(
    alice_home, alice, api_client_for
):
    services.device_update(device=alice_home["device"], controllable=False)

    response = api_client_for(alice).post(
        commands_url("pi-a1"), {"name": "relay", "args": {"state": "on"}}, format="json"
    )

    assert response.status_code == 403
    assert response.json()["detail"] == "This device is not controllable."
    assert not Command.objects.exists()


def test_operator_commanding_an_unknown_device_gets_404(db, operator, api_client_for):
    response = api_client_for(operator).post(commands_url("pi-zz"), {"name": "ping"}, format="json")

    assert response.status_code == 404


# --- progress ----------------------------------------------------------------------------------


def test_command_detail_shows_its_progress(alice_home, operator, api_client_for):
    client = api_client_for(operator)
    command = services.command_issue(device=alice_home["device"], name="restore")

    pending = client.get(command_url(command)).json()
    services.command_mark_sent(command_id=command.id, device_id=alice_home["device"].id)
    sent = client.get(command_url(command)).json()
    services.command_complete(
        command_id=command.id,
        device_id=alice_home["device"].id,
        status="failed",
        detail="relay stuck",
    )
    failed = client.get(command_url(command)).json()

    assert (pending["id"], pending["status"], pending["sent_at"]) == (
        str(command.id),
        "pending",
        None,
    )
    assert sent["status"] == "sent"
    assert sent["sent_at"] is not None
    assert (failed["status"], failed["detail"]) == ("failed", "relay stuck")
    assert failed["completed_at"] is not None


def test_expired_command_shows_as_expired(alice_home, alice, api_client_for):
    command = services.command_issue(device=alice_home["device"], name="ping")
    services.commands_expire(now=command.expires_at)

    response = api_client_for(alice).get(command_url(command))

    assert response.status_code == 200
    assert response.json()["status"] == CommandStatus.EXPIRED


def test_resident_sees_their_own_devices_command(alice_home, alice, api_client_for):
    command = services.command_issue(device=alice_home["device"], name="ping")

    response = api_client_for(alice).get(command_url(command))

    assert response.status_code == 200
    assert response.json()["device"] == "pi-a1"


def test_resident_cannot_see_another_residents_command(alice_home, bob_home, alice, api_client_for):
    command = services.command_issue(device=bob_home["device"], name="ping")

    response = api_client_for(alice).get(command_url(command))

    assert response.status_code == 404


def test_unknown_command_id_is_404(db, operator, api_client_for):
    response = api_client_for(operator).get(command_url("00000000-0000-0000-0000-000000000000"))

    assert response.status_code == 404


# --- anonymous ---------------------------------------------------------------------------------


def test_anonymous_cannot_issue_commands(alice_home):
    response = APIClient().post(commands_url("pi-a1"), {"name": "ping"}, format="json")

    assert response.status_code == 401
    assert not Command.objects.exists()


def test_anonymous_cannot_read_a_command(alice_home):
    command = services.command_issue(device=alice_home["device"], name="ping")

    response = APIClient().get(command_url(command))

    assert response.status_code == 401
