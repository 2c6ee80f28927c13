"""The Django admin of the registry, driven as a superuser would."""

import re

import pytest
from knox.models import AuthToken
from rest_framework.test import APIClient

from django.contrib import admin
from django.urls import reverse

from devices import services
from devices.models import Command, Device, Room, Sensor, Site, hash_token

CHANGELIST = "/admin/devices/device/"
TOKEN_RE = re.compile(r'<code class="device-token">([A-Za-z0-9_-]+)</code>')


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def issued_tokens(response) -> list[str]:
    return TOKEN_RE.findall(response.content.decode())


def test_device_changelist_shows_online_and_last_seen_columns(admin_client, alice_home):
    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    html = response.content.decode()
    assert "column-online" in html
    assert "column-last_seen" in html
    assert "pi-a1" in html


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("q=pi-b1", "pi-b1", "pi-a1"),
        ("q=Alice", "pi-a1", "pi-b1"),
        ("online__exact=1", "pi-b1", "pi-a1"),
        ("online__exact=0", "pi-a1", "pi-b1"),
        ("site__id__exact={alice_site}", "pi-a1", "pi-b1"),
        ("kind__exact=pi&controllable__exact=1&site__feeder__id__exact={feeder}", "pi-a1", None),
    ],
)
def test_device_changelist_search_and_filters(
    admin_client, alice_home, bob_home, feeder, query, shown, hidden
):
    Device.objects.filter(uid="pi-b1").update(online=True)
    query = query.format(alice_site=alice_home["site"].id, feeder=feeder.id)

    response = admin_client.get(f"{CHANGELIST}?{query}")

    assert response.status_code == 200
    uids = {device.uid for device in response.context["cl"].result_list}
    assert shown in uids
    assert hidden not in uids


def test_device_changelist_query_count_does_not_grow_with_devices(
    admin_client, alice_home, django_assert_max_num_queries
):
    # given: twenty devices, each in a room (the room's name shows its site)
    for n in range(20):
        room = Room.objects.create(site=alice_home["site"], name=f"Room {n}")
        services.device_create(uid=f"pi-{n:03}", site=alice_home["site"], room=room)

    # when / then
    with django_assert_max_num_queries(10):
        response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 21


def test_rotate_tokens_action_shows_each_new_token_once_and_changes_the_hashes(
    admin_client, alice_home, bob_home
):
    devices = [alice_home["device"], bob_home["device"]]
    old_hashes = {device.uid: device.token_hash for device in devices}

    # when
    response = admin_client.post(
        CHANGELIST,
        {"action": "rotate_tokens", "_selected_action": [device.pk for device in devices]},
    )

    # then: the page lists one new token per device and the stored hashes are those tokens'
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    tokens = issued_tokens(response)
    assert len(tokens) == 2
    html = response.content.decode()
    assert all(html.count(token) == 1 for token in tokens)
    new_hashes = dict(Device.objects.values_list("uid", "token_hash"))
    assert sorted(new_hashes.values()) == sorted(hash_token(token) for token in tokens)
    assert all(new_hashes[uid] != old for uid, old in old_hashes.items())
    assert alice_home["token"] not in html


def test_adding_a_device_with_an_inline_sensor_shows_its_token(admin_client, alice_home):
    site, room = alice_home["site"], alice_home["room"]

    response = admin_client.post(
        f"{CHANGELIST}add/",
        {
            "uid": "pi-admin",
            "name": "Hall Pi",
            "kind": "pi",
            "site": site.id,
            "room": room.id,
            "flexible_kw": "0",
            "sensors-TOTAL_FORMS": "1",
            "sensors-INITIAL_FORMS": "0",
            "sensors-MIN_NUM_FORMS": "0",
            "sensors-MAX_NUM_FORMS": "1000",
            "sensors-0-key": "power_w",
            "sensors-0-kind": "power",
            "sensors-0-unit": "W",
        },
    )

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    [token] = issued_tokens(response)
    device = Device.objects.get(uid="pi-admin")
    assert device.token_hash == hash_token(token)
    assert [s.public_id for s in Sensor.objects.filter(device=device)] == ["pi-admin.power_w"]


def test_adding_a_device_in_a_room_of_another_site_shows_the_error(
    admin_client, alice_home, bob_home
):
    response = admin_client.post(
        f"{CHANGELIST}add/",
        {
            "uid": "pi-admin",
            "kind": "pi",
            "site": alice_home["site"].id,
            "room": bob_home["room"].id,
            "flexible_kw": "0",
            "sensors-TOTAL_FORMS": "0",
            "sensors-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 200
    assert "The room must belong to the device&#x27;s site." in response.content.decode()
    assert not issued_tokens(response)
    assert not Device.objects.filter(uid="pi-admin").exists()


def test_device_change_page_does_not_show_or_reset_the_token(admin_client, alice_home):
    device = alice_home["device"]
    url = reverse("admin:devices_device_change", args=[device.pk])

    page = admin_client.get(url)
    saved = admin_client.post(
        url,
        {
            "uid": "pi-a1",
            "name": "Renamed",
            "kind": "pi",
            "site": device.site_id,
            "room": device.room_id,
            "controllable": "on",
            "flexible_kw": "2",
            "sensors-TOTAL_FORMS": "0",
            "sensors-INITIAL_FORMS": "0",
        },
    )

    assert page.status_code == 200
    assert device.token_hash not in page.content.decode()
    assert saved.status_code == 302
    device_after = Device.objects.get(pk=device.pk)
    assert device_after.name == "Renamed"
    assert device_after.token_hash == hash_token(alice_home["token"])


def test_site_change_page_shows_rooms_inline(admin_client, alice_home):
    Room.objects.create(site=alice_home["site"], name="Cellar")

    response = admin_client.get(reverse("admin:devices_site_change", args=[alice_home["site"].id]))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="rooms-TOTAL_FORMS"' in html
    assert 'value="Kitchen"' in html
    assert 'value="Cellar"' in html


@pytest.mark.parametrize(
    "model",
    [m for m in admin.site._registry if m._meta.app_label == "devices"],
    ids=lambda m: m.__name__,
)
@pytest.mark.parametrize("page", ["changelist", "add"])
def test_every_registry_admin_page_renders(admin_client, alice_home, model, page):
    url = reverse(f"admin:devices_{model._meta.model_name}_{page}")

    response = admin_client.get(f"{url}?q=a" if page == "changelist" else url)

    # Commands are issued through the command path only: the admin lists them, adds none.
    assert response.status_code == (403 if (model, page) == (Command, "add") else 200)


def test_residents_cannot_open_the_admin(client, alice, alice_home):
    client.force_login(alice)

    response = client.get(CHANGELIST)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    assert Site.objects.count() == 1


# --- API tokens of people ----------------------------------------------------------------------


def test_api_token_admin_lists_whose_tokens_and_until_when_but_no_part_of_them(
    admin_client, alice, api_token_for
):
    token = api_token_for(alice)
    stored = AuthToken.objects.get(user=alice)

    listing = admin_client.get(reverse("admin:knox_authtoken_changelist"))
    detail = admin_client.get(reverse("admin:knox_authtoken_change", args=[stored.pk]))

    assert listing.status_code == detail.status_code == 200
    for page in (listing, detail):
        html = page.content.decode()
        assert "alice" in html
        assert token[:8] not in html
    assert reverse("admin:knox_authtoken_add") not in listing.content.decode()  # from sign-in only


def test_deleting_an_api_token_in_the_admin_revokes_it(admin_client, alice, api_token_for):
    token = api_token_for(alice)
    stored = AuthToken.objects.get(user=alice)

    response = admin_client.post(
        reverse("admin:knox_authtoken_delete", args=[stored.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/sites/").status_code == 401
