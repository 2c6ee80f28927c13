"""The registry API at /api/v1/: tokens, who sees and changes what, validation, lists, schema."""

import json
from decimal import Decimal

import pytest
import yaml
from knox.models import AuthToken
from rest_framework.test import APIClient

from devices import selectors, services
from devices.models import (
    Device,
    Feeder,
    Room,
    Sensor,
    Site,
    Substation,
    Transformer,
    hash_token,
)
from tests.conftest import PASSWORD, SENSORS

API = "/api/v1/"
REGISTRY = ["substations", "transformers", "feeders", "sites", "rooms", "devices", "sensors"]
MODELS = {
    "substations": Substation,
    "transformers": Transformer,
    "feeders": Feeder,
    "sites": Site,
    "rooms": Room,
    "devices": Device,
    "sensors": Sensor,
}
STAFF_ROLES = ["admin_user", "operator"]


@pytest.fixture(params=STAFF_ROLES)
def staff_client(request, api_client_for):
    """A client for each role allowed to change the registry: a superuser and an operator."""
    return api_client_for(request.getfixturevalue(request.param))


def errors_of(response) -> dict:
    body = response.json()
    assert "detail" in body, body
    return body["errors"]


# --- authentication ---------------------------------------------------------------------------


def test_token_endpoint_returns_a_token_that_authenticates(alice):
    client = APIClient()

    response = client.post(
        f"{API}auth/token/", {"username": "alice", "password": PASSWORD}, format="json"
    )

    assert response.status_code == 200
    token = response.json()["token"]
    assert AuthToken.objects.filter(user=alice).count() == 1
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get(f"{API}sites/").status_code == 200


def test_token_endpoint_rejects_bad_credentials_with_400_and_a_message(alice):
    response = APIClient().post(
        f"{API}auth/token/", {"username": "alice", "password": "wrong"}, format="json"
    )

    assert response.status_code == 400
    messages = errors_of(response)["non_field_errors"]
    assert "Unable to log in" in messages[0]
    assert not AuthToken.objects.filter(user=alice).exists()


def test_token_endpoint_names_missing_fields():
    response = APIClient().post(f"{API}auth/token/", {}, format="json")

    assert response.status_code == 400
    assert set(errors_of(response)) == {"username", "password"}


@pytest.mark.parametrize("endpoint", REGISTRY)
def test_anonymous_gets_401_on_registry_endpoints(db, endpoint):
    response = APIClient().get(f"{API}{endpoint}/")

    assert response.status_code == 401
    assert response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Token")


def test_wrong_token_gets_401(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    response = client.get(f"{API}devices/")

    assert response.status_code == 401
    assert "token" in response.json()["detail"].lower()


# --- CRUD for staff and operators -------------------------------------------------------------


def test_staff_and_operators_crud_grid_topology(staff_client):
    # given / when: a substation, a transformer under it and a feeder under that are created
    sub = staff_client.post(f"{API}substations/", {"code": "SUB-9", "name": "South"})
    assert sub.status_code == 201, sub.json()
    tr = staff_client.post(
        f"{API}transformers/",
        {"code": "TR-9", "name": "T9", "substation": sub.json()["id"], "capacity_kva": "630.0"},
    )
    assert tr.status_code == 201, tr.json()
    fd = staff_client.post(
        f"{API}feeders/", {"code": "FD-9", "name": "F9", "transformer": tr.json()["id"]}
    )
    assert fd.status_code == 201, fd.json()

    # then: each reads back, updates and deletes, leaf first
    feeder_url = f"{API}feeders/{fd.json()['id']}/"
    assert staff_client.get(feeder_url).json()["code"] == "FD-9"
    assert staff_client.patch(feeder_url, {"name": "Feeder nine"}).json()["name"] == "Feeder nine"
    tr_url = f"{API}transformers/{tr.json()['id']}/"
    put = staff_client.put(
        tr_url,
        {"code": "TR-9", "name": "Big", "substation": sub.json()["id"], "capacity_kva": "1000.0"},
    )
    assert put.status_code == 200
    assert put.json()["capacity_kva"] == "1000.0"
    sub_url = f"{API}substations/{sub.json()['id']}/"
    assert staff_client.patch(sub_url, {"name": "Southern"}).json()["name"] == "Southern"
    for url in (feeder_url, tr_url, sub_url):
        assert staff_client.delete(url).status_code == 204
        assert staff_client.get(url).status_code == 404


def test_staff_and_operators_crud_sites_and_rooms(staff_client, feeder, alice):
    created = staff_client.post(
        f"{API}sites/",
        {
            "name": "Depot",
            "address": "Rua 1",
            "residents": [alice.id],
            "timezone": "Europe/Madrid",
            "tariff_per_kwh": "0.1500",
            "currency": "EUR",
            "cpe": "PT0099",
            "feeder": feeder.id,
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    site_url = f"{API}sites/{created.json()['id']}/"
    assert created.json()["residents"] == [alice.id]

    room = staff_client.post(f"{API}rooms/", {"site": created.json()["id"], "name": "Garage"})
    assert room.status_code == 201, room.json()
    room_url = f"{API}rooms/{room.json()['id']}/"
    assert staff_client.patch(room_url, {"name": "Shed"}).json()["name"] == "Shed"

    put = staff_client.put(
        site_url,
        {
            "name": "Depot 2",
            "residents": [],
            "timezone": "UTC",
            "tariff_per_kwh": "0.3000",
            "currency": "GBP",
            "feeder": None,
        },
        format="json",
    )
    assert put.status_code == 200, put.json()
    site = Site.objects.get(pk=created.json()["id"])
    assert (site.name, site.currency, site.tariff_per_kwh) == ("Depot 2", "GBP", Decimal("0.3"))
    assert not site.residents.exists()

    assert staff_client.delete(room_url).status_code == 204
    assert staff_client.delete(site_url).status_code == 204
    assert not Site.objects.filter(pk=site.pk).exists()


def test_staff_and_operators_crud_devices_by_uid(staff_client, alice_home):
    site, room = alice_home["site"], alice_home["room"]
    created = staff_client.post(
        f"{API}devices/", {"uid": "pi-new", "site": site.id, "kind": "hvac"}, format="json"
    )
    assert created.status_code == 201, created.json()
    url = f"{API}devices/pi-new/"

    assert staff_client.get(url).json()["kind"] == "hvac"
    patched = staff_client.patch(
        url, {"room": room.id, "controllable": True, "flexible_kw": "3.5"}, format="json"
    )
    assert patched.status_code == 200, patched.json()
    assert (patched.json()["room"], patched.json()["flexible_kw"]) == (room.id, "3.50")
    put = staff_client.put(
        url,
        {"uid": "pi-new", "name": "Boiler", "kind": "water_heater", "site": site.id},
        format="json",
    )
    assert put.status_code == 200, put.json()
    device = Device.objects.get(uid="pi-new")
    assert (device.name, device.kind, device.room_id) == ("Boiler", "water_heater", room.id)

    assert staff_client.delete(url).status_code == 204
    assert staff_client.get(url).status_code == 404


def test_staff_and_operators_crud_sensors_by_public_id(staff_client, alice_home):
    created = staff_client.post(
        f"{API}sensors/",
        {"device": "pi-a1", "key": "energy_wh", "kind": "energy", "unit": "Wh"},
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["id"] == "pi-a1.energy_wh"
    url = f"{API}sensors/pi-a1.energy_wh/"

    assert staff_client.get(url).json()["unit"] == "Wh"
    assert staff_client.patch(url, {"unit": "kWh"}).json()["unit"] == "kWh"
    put = staff_client.put(
        url, {"device": "pi-a1", "key": "energy_wh", "kind": "energy", "unit": "MWh"}
    )
    assert put.status_code == 200, put.json()
    assert Sensor.objects.get(device__uid="pi-a1", key="energy_wh").unit == "MWh"

    assert staff_client.delete(url).status_code == 204
    assert staff_client.get(url).status_code == 404
    assert staff_client.get(f"{API}sensors/pi-a1.power_w/").status_code == 200


def test_deleting_topology_still_in_use_is_409_with_a_message(api_client_for, admin_user, feeder):
    # given: the feeder's transformer still has a feeder and the feeder a site
    Site.objects.create(name="On feeder", feeder=feeder)
    client = api_client_for(admin_user)

    # when
    response = client.delete(f"{API}transformers/{feeder.transformer_id}/")

    # then
    assert response.status_code == 409
    assert "feeder" in response.json()["detail"].lower()
    assert Transformer.objects.filter(pk=feeder.transformer_id).exists()
    assert client.delete(f"{API}feeders/{feeder.id}/").status_code == 409


# --- device tokens ----------------------------------------------------------------------------


def test_creating_a_device_returns_its_token_once_and_stores_only_its_hash(
    api_client_for, operator, alice_home
):
    client = api_client_for(operator)

    # when
    created = client.post(
        f"{API}devices/",
        {
            "uid": "pi-0042",
            "site": alice_home["site"].id,
            "room": alice_home["room"].id,
            "sensors": SENSORS,
        },
        format="json",
    )

    # then: the answer has the token and the sensors; only the token's hash is in the database
    assert created.status_code == 201, created.json()
    token = created.json()["token"]
    assert len(token) >= 40
    device = Device.objects.get(uid="pi-0042")
    assert device.token_hash == hash_token(token)
    assert token not in device.token_hash
    assert [s["id"] for s in created.json()["sensors"]] == ["pi-0042.power_w", "pi-0042.voltage_v"]
    # and reading the device never shows the token or its hash again
    for url in (f"{API}devices/pi-0042/", f"{API}devices/"):
        response = client.get(url)
        assert response.status_code == 200
        assert token not in response.content.decode()
        assert device.token_hash not in response.content.decode()
    assert "token" not in client.get(f"{API}devices/pi-0042/").json()


def test_rotate_token_returns_a_new_token_and_the_old_one_stops_matching(
    api_client_for, operator, alice_home
):
    old_token = alice_home["token"]
    old_hash = Device.objects.get(uid="pi-a1").token_hash

    response = api_client_for(operator).post(f"{API}devices/pi-a1/rotate-token/")

    assert response.status_code == 200
    body = response.json()
    assert body["uid"] == "pi-a1"
    assert body["token"] != old_token
    device = Device.objects.get(uid="pi-a1")
    assert device.token_hash == hash_token(body["token"]) != old_hash
    assert device.token_rotated_at is not None
    assert selectors.device_by_token(token=old_token) is None
    assert selectors.device_by_token(token=body["token"]) == device


def test_residents_cannot_rotate_tokens(api_client_for, alice, alice_home, bob_home):
    client = api_client_for(alice)
    hashes = dict(Device.objects.values_list("uid", "token_hash"))

    assert client.post(f"{API}devices/pi-a1/rotate-token/").status_code == 403
    assert client.post(f"{API}devices/pi-b1/rotate-token/").status_code == 404
    assert dict(Device.objects.values_list("uid", "token_hash")) == hashes


# --- residents --------------------------------------------------------------------------------


def test_residents_list_only_their_own_registry(api_client_for, alice, alice_home, bob_home):
    client = api_client_for(alice)

    def listed(endpoint, key="id"):
        response = client.get(f"{API}{endpoint}/")
        assert response.status_code == 200
        return sorted(row[key] for row in response.json()["results"])

    assert listed("sites") == [alice_home["site"].id]
    assert listed("rooms") == [alice_home["room"].id]
    assert listed("devices", key="uid") == ["pi-a1"]
    assert listed("sensors") == ["pi-a1.power_w", "pi-a1.voltage_v"]
    # the shared feeder shows once, though both residents' sites hang off it
    assert listed("feeders") == [alice_home["site"].feeder_id]
    assert len(listed("substations")) == len(listed("transformers")) == 1


def test_resident_without_sites_sees_empty_lists(api_client_for, make_user, alice_home):
    client = api_client_for(make_user("carol"))

    for endpoint in REGISTRY:
        response = client.get(f"{API}{endpoint}/")
        assert response.status_code == 200
        assert response.json()["count"] == 0, endpoint


def _others_objects(bob_home):
    return {
        "sites": f"{API}sites/{bob_home['site'].id}/",
        "rooms": f"{API}rooms/{bob_home['room'].id}/",
        "devices": f"{API}devices/pi-b1/",
        "sensors": f"{API}sensors/pi-b1.power_w/",
    }


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
@pytest.mark.parametrize("kind", ["sites", "rooms", "devices", "sensors"])
def test_resident_gets_404_on_another_residents_objects(
    api_client_for, alice, alice_home, bob_home, kind, method
):
    url = _others_objects(bob_home)[kind]
    filter_to_bob = {
        "sites": "pk",
        "rooms": "site_id",
        "devices": "site_id",
        "sensors": "device__site_id",
    }

    response = getattr(api_client_for(alice), method)(url, {"name": "mine"}, format="json")

    assert response.status_code == 404
    assert response.json()["detail"]
    assert MODELS[kind].objects.filter(**{filter_to_bob[kind]: bob_home["site"].id}).exists()
    assert Site.objects.get(pk=bob_home["site"].id).name == "Bob home"


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
@pytest.mark.parametrize(
    "url",
    ["sites/{site}/", "rooms/{room}/", "devices/pi-a1/", "sensors/pi-a1.power_w/"],
)
def test_resident_gets_403_changing_their_own_objects(
    api_client_for, alice, alice_home, method, url
):
    url = API + url.format(site=alice_home["site"].id, room=alice_home["room"].id)
    client = api_client_for(alice)
    before = client.get(url).json()

    response = getattr(client, method)(url, {**before, "name": "Renamed"}, format="json")

    assert response.status_code == 403
    assert "operators" in response.json()["detail"]
    assert client.get(url).json() == before


@pytest.mark.parametrize("endpoint", REGISTRY)
def test_resident_cannot_create_anything(api_client_for, alice, alice_home, endpoint):
    transformer = alice_home["site"].feeder.transformer
    payloads = {
        "substations": {"code": "S", "name": "S"},
        "transformers": {"code": "T", "name": "T", "substation": transformer.substation_id},
        "feeders": {"code": "F", "name": "F", "transformer": transformer.id},
        "sites": {"name": "Mine too"},
        "rooms": {"site": alice_home["site"].id, "name": "Attic"},
        "devices": {"uid": "pi-mine", "site": alice_home["site"].id},
        "sensors": {"device": "pi-a1", "key": "extra", "kind": "power"},
    }
    count = MODELS[endpoint].objects.count()

    response = api_client_for(alice).post(f"{API}{endpoint}/", payloads[endpoint], format="json")

    assert response.status_code == 403
    assert response.json()["detail"]
    assert MODELS[endpoint].objects.count() == count


# --- no names leak to residents through filters -----------------------------------------------


@pytest.fixture
def bob_elsewhere(bob_home):
    """Bob's site moved onto a grid of its own, named so that any listing of it shows."""
    substation = Substation.objects.create(code="SUB-BOB", name="Bobs substation")
    transformer = Transformer.objects.create(
        code="TR-BOB", name="Bobs transformer", substation=substation
    )
    feeder = Feeder.objects.create(code="FD-BOB", name="Bobs feeder", transformer=transformer)
    Site.objects.filter(pk=bob_home["site"].id).update(feeder=feeder)
    Room.objects.filter(pk=bob_home["room"].id).update(name="Bobs den")
    return {**bob_home, "feeder": feeder, "transformer": transformer, "substation": substation}


# endpoint: its filters on related rows and the model each one names
RELATED_FILTERS = {
    "devices": {"site": Site, "room": Room, "site__feeder": Feeder},
    "rooms": {"site": Site},
    "sites": {"feeder": Feeder},
    "feeders": {"transformer": Transformer},
    "transformers": {"substation": Substation},
}


@pytest.mark.parametrize("endpoint", list(RELATED_FILTERS))
def test_residents_filter_form_lists_none_of_another_residents_names(
    api_client_for, alice, alice_home, bob_elsewhere, endpoint
):
    response = api_client_for(alice).get(f"{API}{endpoint}/?format=api")

    assert response.status_code == 200
    page = response.content.decode()
    for parameter in RELATED_FILTERS[endpoint]:
        assert f'name="{parameter}"' in page  # the filter form is there, with this choice
    for name in ["Bob home", "Bobs"]:
        assert name not in page, name
    if endpoint == "devices":  # the resident's own rows are still offered
        assert "Alice home / Kitchen" in page


@pytest.mark.parametrize(
    ("action", "field"), [("commands", 'name="ttl_s"'), ("rotate-token", "<form")]
)
def test_residents_forms_of_device_actions_list_none_of_another_residents_names(
    api_client_for, alice, alice_home, bob_elsewhere, action, field
):
    response = api_client_for(alice).get(f"{API}devices/pi-a1/{action}/?format=api")

    page = response.content.decode()
    assert field in page  # the action's own form, not the device's with every site and room
    for name in ["Bob home", "Bobs"]:
        assert name not in page, name


@pytest.mark.parametrize(
    ("endpoint", "parameter"),
    [
        (endpoint, parameter)
        for endpoint, filters in RELATED_FILTERS.items()
        for parameter in filters
    ],
)
def test_filtering_on_another_residents_id_answers_as_on_a_missing_one(
    api_client_for, alice, alice_home, bob_elsewhere, endpoint, parameter
):
    model = RELATED_FILTERS[endpoint][parameter]
    bobs = bob_elsewhere[model.__name__.lower()].id
    missing = model.objects.order_by("-pk").values_list("pk", flat=True)[0] + 1000
    client = api_client_for(alice)

    foreign = client.get(f"{API}{endpoint}/?{parameter}={bobs}")
    nonexistent = client.get(f"{API}{endpoint}/?{parameter}={missing}")

    assert foreign.status_code == nonexistent.status_code == 400
    assert foreign.content == nonexistent.content


def test_filtering_on_own_related_rows_still_works(
    api_client_for, alice, alice_home, bob_elsewhere
):
    client = api_client_for(alice)
    site, room = alice_home["site"], alice_home["room"]

    def uids(query):
        response = client.get(f"{API}devices/?{query}")
        assert response.status_code == 200, response.json()
        return [row["uid"] for row in response.json()["results"]]

    assert uids(f"site={site.id}") == ["pi-a1"]
    assert uids(f"room={room.id}") == ["pi-a1"]
    assert uids(f"site__feeder={site.feeder_id}") == ["pi-a1"]
    rooms = client.get(f"{API}rooms/?site={site.id}").json()["results"]
    assert [row["id"] for row in rooms] == [room.id]


def test_operators_filter_on_any_residents_rows(
    api_client_for, operator, alice_home, bob_elsewhere
):
    client = api_client_for(operator)

    response = client.get(f"{API}devices/?site__feeder={bob_elsewhere['feeder'].id}")
    page = client.get(f"{API}devices/?format=api").content.decode()

    assert [row["uid"] for row in response.json()["results"]] == ["pi-b1"]
    assert "Bob home / Bobs den" in page and "FD-BOB" in page


# --- filters and pagination -------------------------------------------------------------------


def test_devices_filter_by_site_and_online(api_client_for, operator, alice_home, bob_home):
    Device.objects.filter(uid="pi-b1").update(online=True)
    client = api_client_for(operator)

    def uids(query):
        response = client.get(f"{API}devices/?{query}")
        assert response.status_code == 200
        return [row["uid"] for row in response.json()["results"]]

    assert uids(f"site={alice_home['site'].id}") == ["pi-a1"]
    assert uids("online=true") == ["pi-b1"]
    assert uids("online=false") == ["pi-a1"]
    assert uids(f"site={alice_home['site'].id}&online=true") == []
    assert uids("search=Bob") == ["pi-b1"]


def test_sensors_filter_by_device_uid_and_kind(api_client_for, operator, alice_home, bob_home):
    client = api_client_for(operator)

    by_device = client.get(f"{API}sensors/?device__uid=pi-b1").json()["results"]
    by_kind = client.get(f"{API}sensors/?kind=voltage").json()["results"]

    assert [row["id"] for row in by_device] == ["pi-b1.power_w", "pi-b1.voltage_v"]
    assert sorted(row["id"] for row in by_kind) == ["pi-a1.voltage_v", "pi-b1.voltage_v"]


def test_list_pagination_reports_count_next_and_honours_page_size(
    api_client_for, operator, alice_home
):
    for n in range(4):
        services.device_create(uid=f"pi-p{n}", site=alice_home["site"])
    client = api_client_for(operator)

    first = client.get(f"{API}devices/?page_size=2").json()
    last = client.get(f"{API}devices/?page_size=2&page=3").json()

    assert first["count"] == 5
    assert len(first["results"]) == 2
    assert "page=2" in first["next"]
    assert first["previous"] is None
    assert [row["uid"] for row in last["results"]] == ["pi-p3"]
    assert last["next"] is None


# --- validation and junk ----------------------------------------------------------------------


VALIDATION_CASES = [
    ("duplicate uid", "devices", lambda h: {"uid": "pi-a1", "site": h["a_site"]}, "uid", "exists"),
    (
        "bad timezone",
        "sites",
        lambda h: {"name": "X", "timezone": "Mars/Olympus"},
        "timezone",
        "Mars/Olympus",
    ),
    ("bad currency", "sites", lambda h: {"name": "X", "currency": "euro"}, "currency", "ISO 4217"),
    (
        "unknown currency",
        "sites",
        lambda h: {"name": "X", "currency": "XYZ"},
        "currency",
        "no ISO 4217",
    ),
    (
        "non-numeric tariff",
        "sites",
        lambda h: {"name": "X", "tariff_per_kwh": "cheap"},
        "tariff_per_kwh",
        "number",
    ),
    (
        "room of another site",
        "devices",
        lambda h: {"uid": "pi-x", "site": h["a_site"], "room": h["b_room"]},
        "room",
        "site",
    ),
    (
        "duplicate sensor keys",
        "devices",
        lambda h: {
            "uid": "pi-x",
            "site": h["a_site"],
            "sensors": [{"key": "power_w", "kind": "power"}, {"key": "power_w", "kind": "power"}],
        },
        "sensors",
        "power_w",
    ),
    (
        "unknown sensor kind",
        "devices",
        lambda h: {"uid": "pi-x", "site": h["a_site"], "sensors": [{"key": "k", "kind": "x"}]},
        "sensors",
        "valid choice",
    ),
    (
        "negative flexible load",
        "devices",
        lambda h: {"uid": "pi-x", "site": h["a_site"], "flexible_kw": "-1"},
        "flexible_kw",
        "0",
    ),
    ("uid not a slug", "devices", lambda h: {"uid": "pi 1/2", "site": h["a_site"]}, "uid", "slug"),
    ("unknown site", "devices", lambda h: {"uid": "pi-x", "site": 999999}, "site", "999999"),
    (
        "duplicate sensor key on a device",
        "sensors",
        lambda h: {"device": "pi-a1", "key": "power_w", "kind": "power"},
        "non_field_errors",
        "unique",
    ),
    (
        "sensor of an unknown device",
        "sensors",
        lambda h: {"device": "pi-nope", "key": "k", "kind": "power"},
        "device",
        "pi-nope",
    ),
    (
        "duplicate room name",
        "rooms",
        lambda h: {"site": h["a_site"], "name": "Kitchen"},
        "non_field_errors",
        "unique",
    ),
    ("bad cpe", "sites", lambda h: {"name": "X", "cpe": "pt-1"}, "cpe", "CPE"),
    (
        "negative capacity",
        "transformers",
        lambda h: {"code": "T2", "name": "T", "substation": h["sub"], "capacity_kva": "-5"},
        "capacity_kva",
        "0",
    ),
    ("code with spaces", "substations", lambda h: {"code": "S 1", "name": "S"}, "code", "letters"),
]


@pytest.mark.parametrize(
    ("endpoint", "payload", "field", "says"),
    [case[1:] for case in VALIDATION_CASES],
    ids=[case[0] for case in VALIDATION_CASES],
)
def test_validation_errors_are_400_with_a_message_per_field(
    api_client_for, admin_user, alice_home, bob_home, endpoint, payload, field, says
):
    handles = {
        "a_site": alice_home["site"].id,
        "b_room": bob_home["room"].id,
        "sub": alice_home["site"].feeder.transformer.substation_id,
    }
    count = MODELS[endpoint].objects.count()

    response = api_client_for(admin_user).post(f"{API}{endpoint}/", payload(handles), format="json")

    assert response.status_code == 400
    errors = errors_of(response)
    assert field in errors, errors
    assert says.lower() in json.dumps(errors[field]).lower()
    assert field in response.json()["detail"]
    assert MODELS[endpoint].objects.count() == count


def test_moving_a_device_into_a_room_of_another_site_is_400(
    api_client_for, operator, alice_home, bob_home
):
    response = api_client_for(operator).patch(
        f"{API}devices/pi-a1/", {"room": bob_home["room"].id}, format="json"
    )

    assert response.status_code == 400
    assert "room" in errors_of(response)
    assert Device.objects.get(uid="pi-a1").room_id == alice_home["room"].id


@pytest.mark.parametrize(
    "path",
    [
        "substations/999999/",
        "sites/999999/",
        "sites/abc/",
        "rooms/999999/",
        "devices/pi-nope/",
        "sensors/pi-a1.nope/",
        "sensors/pi-nope.power_w/",
        "sensors/no-dot/",
        "devices/pi-nope/rotate-token/",
        # paths no endpoint matches: the API's JSON 404 too, not Django's page
        "outages/abc/",
        "credit-policies/1.5/",
        "no-such-endpoint/",
        "outages/1/more/",
    ],
)
def test_unknown_ids_are_404_with_a_message(api_client_for, operator, alice_home, path):
    client = api_client_for(operator)
    method = client.post if path.endswith("rotate-token/") else client.get

    response = method(f"{API}{path}")

    assert response.status_code == 404
    assert response.json()["detail"]


@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_an_endpoint_without_its_slash_answers_308_to_it_keeping_the_request(
    api_client_for, operator, method
):
    # (a 301 is followed with a GET, and Django's slash redirect of a POST in development
    # answered an HTML error page)
    response = getattr(api_client_for(operator), method)(f"{API}outages?ordering=start")

    assert response.status_code == 308
    assert response["Location"] == f"{API}outages/?ordering=start"
    assert "final slash" in response.json()["detail"]


@pytest.mark.parametrize("path", ["no-such-endpoint", "outages/abc", "sites/1/nowhere"])
def test_a_path_without_a_slash_that_names_no_endpoint_is_a_json_404(
    api_client_for, operator, path
):
    response = api_client_for(operator).post(f"{API}{path}", {"a": 1}, format="json")

    assert response.status_code == 404
    assert "No API endpoint" in response.json()["detail"]


HUGE = "x" * 100_000
JUNK = [
    ("post", "sites/", {"name": ["list"], "timezone": 5, "tariff_per_kwh": {"a": 1}}),
    ("post", "sites/", {"name": HUGE, "address": HUGE, "currency": HUGE}),
    ("post", "sites/", {"name": "Casa ☀️ 日本", "timezone": "Ásia/Tóquio"}),
    ("post", "sites/", {"name": "nul\x00byte"}),
    ("post", "sites/", {"name": "X", "residents": [99999999999999999999, "a", None]}),
    ("post", "sites/", {"name": "X", "feeder": 99999999999999999999}),
    ("post", "sites/", {"name": "X", "tariff_per_kwh": "NaN"}),
    ("post", "sites/", {"name": "X", "tariff_per_kwh": "1e999"}),
    ("post", "sites/", ["not", "an", "object"]),
    ("post", "sites/", "just a string"),
    ("post", "sites/", None),
    ("post", "devices/", {"uid": "pi-ü-🙂", "site": "{site}"}),
    ("post", "devices/", {"uid": HUGE, "site": "{site}", "name": HUGE}),
    ("post", "devices/", {"uid": "pi-n", "site": "{site}", "flexible_kw": -5}),
    ("post", "devices/", {"uid": "pi-n", "site": "{site}", "flexible_kw": "Infinity"}),
    ("post", "devices/", {"uid": "pi-n", "site": "{site}", "flexible_kw": 10**30}),
    ("post", "devices/", {"uid": "pi-n", "site": "{site}", "sensors": "power_w"}),
    ("post", "devices/", {"uid": "pi-n", "site": "{site}", "sensors": [1, None, []]}),
    ("post", "devices/", {"uid": "pi-n", "site": "{site}", "sensors": [{"key": HUGE}]}),
    ("post", "devices/", {"uid": 12, "site": True, "room": "kitchen", "controllable": "x"}),
    ("post", "devices/", {"uid": None, "site": None}),
    ("post", "sensors/", {"device": ["pi-a1"], "key": {}, "kind": 1}),
    ("post", "rooms/", {"site": -1, "name": ""}),
    ("post", "transformers/", {"code": "T", "name": "T", "substation": 1.5}),
    ("patch", "devices/pi-a1/", {"flexible_kw": -1, "site": "nope"}),
    ("patch", "devices/pi-a1/", {"uid": ""}),
    ("put", "sites/{site}/", {"name": 3}),
    ("patch", "sensors/pi-a1.power_w/", {"device": 5, "key": "bad key!"}),
    ("post", "devices/pi-a1/rotate-token/", {"junk": HUGE}),
    ("post", "auth/token/", {"username": ["a"], "password": {"b": 1}}),
    ("post", "auth/token/", {"username": "nul\x00", "password": "x"}),
    ("get", "devices/?page=abc", None),
    ("get", "devices/?page=999", None),
    ("get", "devices/?page_size=-3", None),
    ("get", "devices/?page_size=abc", None),
    ("get", "devices/?online=maybe", None),
    ("get", "devices/?site=abc", None),
    ("get", "devices/?site=99999999999999999999", None),
    ("get", "devices/?kind=rocket", None),
    ("get", "devices/?ordering=-token_hash,nonsense", None),
    ("get", "devices/?search=%00", None),
    ("get", "sites/?search=" + "☀" * 500, None),
    ("get", "sensors/?device__uid=%00", None),
    ("get", "sensors/pi-a1%00.power_w/", None),
    ("get", "devices/pi%00/", None),
    ("get", "rooms/?site=%00", None),
    ("post", "sensors/", {"device": "pi\x00", "key": "k", "kind": "power"}),
    ("get", "sensors/%E2%98%80.%E2%98%80/", None),
    ("get", "sites/99999999999999999999/", None),
    ("get", "devices/%F0%9F%99%82/", None),
    ("delete", "sites/-1/", None),
]


@pytest.mark.parametrize(("method", "path", "body"), JUNK, ids=range(len(JUNK)))
def test_malformed_input_is_a_json_4xx_never_500(
    api_client_for, admin_user, alice_home, method, path, body
):
    site = alice_home["site"].id
    path = path.replace("{site}", str(site))
    if isinstance(body, dict):
        body = {k: site if v == "{site}" else v for k, v in body.items()}

    response = getattr(api_client_for(admin_user), method)(f"{API}{path}", body, format="json")

    assert response.status_code < 500
    assert isinstance(response.json(), dict)


# Raw JSON bodies: a lone surrogate can only arrive as an escape, which JSON decodes to one.
UNSTORABLE_TEXT = [
    ("get", "devices/?search=%00", None, "search", "Null characters"),
    ("get", "rooms/?site=%00", None, "site", "Null characters"),
    ("get", "sites/?timezone=%00", None, "timezone", "Null characters"),
    ("get", "sensors/?device__uid=%00", None, "device__uid", "Null characters"),
    ("post", "sensors/", r'{"device": "pi\u0000", "key": "k", "kind": "power"}', "device", "Null"),
    ("post", "sensors/", r'{"device": "\ud800", "key": "k", "kind": "power"}', "device", "Surro"),
    ("post", "sensors/", r'{"device": "pi-a1", "key": "k", "kind": "\udfff"}', "kind", r"\udfff"),
    ("post", "devices/", r'{"uid": "pi-x", "kind": "\ud800"}', "kind", r"\ud800"),
    (
        "post",
        "devices/pi-a1/commands/",
        r'{"name": "ping", "args": {"a": "\u0000"}}',
        "args",
        "at a",
    ),
    ("post", "devices/pi-a1/commands/", r'{"name": "ping", "args": {"\ud83d": 1}}', "args", "key"),
    (
        "post",
        "devices/pi-a1/commands/",
        r'{"name": "ping", "args": {"kw": 1e400}}',
        "args",
        "finite",
    ),
    (
        "post",
        "devices/pi-a1/commands/",
        r'{"name": "ping", "args": {"l": [["\u0000"]]}}',
        "args",
        "l[0][0]",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "raw", "field", "words"), UNSTORABLE_TEXT, ids=range(len(UNSTORABLE_TEXT))
)
def test_text_postgresql_cannot_store_is_a_400_naming_the_field(
    api_client_for, admin_user, alice_home, method, path, raw, field, words
):
    client = api_client_for(admin_user)

    if raw is None:
        response = client.get(f"{API}{path}")
    else:
        response = client.generic(
            method.upper(), f"{API}{path}", raw.encode(), content_type="application/json"
        )

    assert response.status_code == 400, response.content
    errors = errors_of(response)
    assert words in " ".join(errors[field]), errors


@pytest.mark.parametrize("path", ["devices/pi%00/", "sensors/pi-a1.power_w%00/"])
def test_an_id_with_a_nul_byte_is_404_like_any_unknown_id(api_client_for, admin_user, path):
    response = api_client_for(admin_user).get(f"{API}{path}")

    assert response.status_code == 404
    assert response.json()["detail"].startswith("No ")


@pytest.mark.parametrize(
    "raw",
    ['{"name": ', "{'name': 'x'}", "\xff\xfe", "[" * 10_000, '{"name": "x"}' + "garbage"],
    ids=["truncated", "single quotes", "binary", "deep nesting", "trailing garbage"],
)
@pytest.mark.parametrize("path", ["sites/", "devices/", "sensors/", "auth/token/"])
def test_invalid_json_body_is_400_with_a_message(api_client_for, admin_user, path, raw):
    client = api_client_for(admin_user)

    response = client.generic(
        "POST", f"{API}{path}", raw.encode("latin-1"), content_type="application/json"
    )

    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]


# --- query counts -----------------------------------------------------------------------------


@pytest.fixture
def big_registry(alice, bob):
    """Twenty of everything, each site with a room and a device with two sensors."""
    for n in range(20):
        substation = Substation.objects.create(code=f"S{n}", name=f"S{n}")
        transformer = Transformer.objects.create(code=f"T{n}", name="T", substation=substation)
        feeder = Feeder.objects.create(code=f"F{n}", name="F", transformer=transformer)
        site = Site.objects.create(name=f"Site {n}", feeder=feeder)
        site.residents.add(alice, bob)
        room = Room.objects.create(site=site, name="Kitchen")
        services.device_create(uid=f"pi-{n:04}", site=site, room=room, sensors=SENSORS)


# Token lookup, operator check, count, page, at most one prefetch: a fixed budget per list.
LIST_QUERY_BUDGET = 5


@pytest.mark.parametrize("endpoint", REGISTRY)
@pytest.mark.parametrize("role", ["operator", "alice"])
def test_list_query_count_does_not_grow_with_rows(
    api_client_for, big_registry, django_assert_max_num_queries, request, endpoint, role
):
    client = api_client_for(request.getfixturevalue(role))

    with django_assert_max_num_queries(LIST_QUERY_BUDGET):
        response = client.get(f"{API}{endpoint}/?page_size=100")

    assert response.status_code == 200
    assert response.json()["count"] >= 20


def test_device_list_shows_sensors_within_the_query_budget(
    api_client_for, operator, big_registry, django_assert_max_num_queries
):
    client = api_client_for(operator)

    with django_assert_max_num_queries(LIST_QUERY_BUDGET):
        rows = client.get(f"{API}devices/?page_size=100").json()["results"]

    assert len(rows) == 20
    assert all(len(row["sensors"]) == 2 for row in rows)
    assert rows[0]["sensors"][0]["id"] == "pi-0000.power_w"


# --- OpenAPI ----------------------------------------------------------------------------------


def test_schema_is_openapi_with_the_registry_paths(db):
    response = APIClient().get(f"{API}schema/")

    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    for endpoint in REGISTRY:
        assert f"/api/v1/{endpoint}/" in schema["paths"]
    assert "/api/v1/devices/{uid}/rotate-token/" in schema["paths"]
    assert "/api/v1/sensors/{id}/" in schema["paths"]
    # generated without a user, the views still reveal their models: ids are typed
    [site_id] = schema["paths"]["/api/v1/sites/{id}/"]["get"]["parameters"]
    assert site_id["schema"]["type"] == "integer"


def test_schema_is_served_as_json_on_request(db):
    response = APIClient().get(f"{API}schema/?format=json")

    assert response.status_code == 200
    assert "/api/v1/auth/token/" in json.loads(response.content)["paths"]


def test_docs_page_loads_swagger_ui_from_local_static_files(client, db):
    response = client.get(f"{API}docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    for cdn in ("cdn", "jsdelivr", "unpkg"):
        assert cdn not in html.lower()
    assets = [
        part.split('"')[0]
        for part in html.replace("src=", "href=").split('href="')[1:]
        if part.split('"')[0].endswith((".js", ".css"))
    ]
    assert len(assets) >= 3, assets
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert client.get(asset).status_code == 200, asset
