"""Server-rendered pages: sign-in, the resident's dashboard and the operators' fleet page."""

import re
from datetime import timedelta

import pytest

from django.contrib.auth import SESSION_KEY
from django.test import Client
from django.utils import timezone

from devices import services
from devices.models import Device, Feeder, Room, Sensor, Site, Transformer
from telemetry.services import readings_insert
from tests.conftest import PASSWORD, SENSORS


def badge(html: str, uid: str) -> str | None:
    """The status badge a page shows for a device: 'online', 'offline' or None if absent."""
    match = re.search(rf'class="badge (\w+)" data-status-for="{re.escape(uid)}"', html)
    return match.group(1) if match else None


def listed_devices(response) -> list[str]:
    return re.findall(r'data-device="([^"]+)"', response.content.decode())


def add_devices(site: Site, count: int, prefix: str) -> None:
    room = Room.objects.create(site=site, name=f"Room {prefix}")
    for n in range(count):
        services.device_create(uid=f"{prefix}-{n:03}", site=site, room=room, sensors=SENSORS)


# --- sign-in ----------------------------------------------------------------------------------


def test_login_page_shows_the_form(client, db):
    response = client.get("/login/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="username"' in html
    assert 'name="password"' in html
    assert "csrfmiddlewaretoken" in html


def test_login_with_the_right_password_signs_in_and_lands_on_the_dashboard(
    client, alice, alice_home
):
    response = client.post("/login/", {"username": "alice", "password": PASSWORD}, follow=True)

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/dashboard/"
    assert int(client.session[SESSION_KEY]) == alice.pk
    assert "Alice home" in response.content.decode()


def test_login_with_a_wrong_password_shows_an_error(client, alice):
    response = client.post("/login/", {"username": "alice", "password": "nope"})

    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    assert SESSION_KEY not in client.session


def _fail_login(client, username: str, *, address: str = "192.0.2.10"):
    return client.post("/login/", {"username": username, "password": "nope"}, REMOTE_ADDR=address)


def test_too_many_wrong_passwords_get_a_page_saying_to_wait_with_429(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _fail_login(client, "alice").status_code == 200

    response = _fail_login(client, "alice")

    assert response.status_code == 429
    assert response["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    assert "registration/locked_out.html" in [t.name for t in response.templates]
    html = response.content.decode()
    assert "Please wait before signing in again" in html
    assert f"Wait at most {int(settings.AXES_COOLOFF_TIME.total_seconds()) // 60} minutes" in html
    assert "portal.css" in html  # the portal's own styled page, not a bare text


def test_a_locked_out_user_cannot_sign_in_with_the_right_password(client, alice, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _fail_login(client, "alice")

    response = client.post(
        "/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="192.0.2.10"
    )

    assert response.status_code == 429
    assert SESSION_KEY not in client.session


def test_another_user_from_another_address_signs_in_while_one_is_locked_out(
    client, alice, bob, settings
):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _fail_login(client, "alice")

    response = Client().post(
        "/login/", {"username": "bob", "password": PASSWORD}, REMOTE_ADDR="198.51.100.20"
    )

    assert response.status_code == 302
    assert response["Location"] == "/"


@pytest.mark.parametrize("path", ["/", "/dashboard/", "/fleet/"])
def test_pages_send_anonymous_visitors_to_login(client, db, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith(f"/login/?next={path}")


@pytest.mark.parametrize(("who", "lands_on"), [("alice", "/dashboard/"), ("operator", "/fleet/")])
def test_home_sends_each_role_to_its_page(client, request, who, lands_on):
    client.force_login(request.getfixturevalue(who))

    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == lands_on


# --- dashboard --------------------------------------------------------------------------------


def test_dashboard_lists_only_the_residents_own_sites_and_devices(
    client, alice, alice_home, bob_home
):
    # given: Alice's Pi is online, Bob's is offline
    Device.objects.filter(uid="pi-a1").update(online=True)
    client.force_login(alice)

    # when
    response = client.get("/dashboard/")

    # then
    assert response.status_code == 200
    html = response.content.decode()
    assert "Alice home" in html
    assert listed_devices(response) == ["pi-a1"]
    assert badge(html, "pi-a1") == "online"
    assert "Bob home" not in html
    assert "pi-b1" not in html


def test_dashboard_shows_offline_devices_as_offline(client, bob, bob_home):
    client.force_login(bob)

    html = client.get("/dashboard/").content.decode()

    assert badge(html, "pi-b1") == "offline"


def test_dashboard_of_a_resident_without_sites_says_so(client, make_user, alice_home):
    client.force_login(make_user("carol"))

    response = client.get("/dashboard/")

    assert response.status_code == 200
    assert "no homes linked" in response.content.decode()
    assert listed_devices(response) == []


def test_dashboard_cards_show_an_inverters_output_and_a_heat_pumps_outdoor_temperature(
    client, alice, alice_home
):
    # given: at Alice's, a PV inverter generating 1.5 kW and a heat pump drawing 800 W at 4 °C
    site, now = alice_home["site"], timezone.now()
    services.device_create(uid="pv-1", site=site, kind="pv_inverter", sensors=[
        {"key": "pv_w", "kind": "generation", "unit": "W"},
        {"key": "pv_energy_kwh", "kind": "generation", "unit": "kWh"},
    ])  # fmt: skip
    services.device_create(uid="hp-1", site=site, kind="hvac", sensors=[
        {"key": "power_w", "kind": "power", "unit": "W"},
        {"key": "outdoor_temp_c", "kind": "temperature", "unit": "°C"},
    ])  # fmt: skip
    at = int((now - timedelta(minutes=1)).timestamp() * 1e6)
    ids = {s.key + s.device.uid: s.id for s in Sensor.objects.select_related("device")}
    readings_insert(
        sensor_ids=[ids["pv_wpv-1"], ids["pv_energy_kwhpv-1"], ids["power_whp-1"],
                    ids["outdoor_temp_chp-1"]],
        times_us=[at] * 4, values=[1500.0, 4321.0, 800.0, 4.0],
    )  # fmt: skip
    client.force_login(alice)

    html = re.sub(r"\s+", " ", client.get("/dashboard/").content.decode())

    # then the inverter's output is shown and charted, its counter is not on the card
    assert '<span class="metric-value" data-metric-for="pv-1:pv_w">1500</span>' in html
    assert "W generated" in html
    assert f'data-chart-for="pv-1" data-chart-key="pv_w" data-chart-sensor="{ids["pv_wpv-1"]}"' in (
        html
    )
    assert "pv-1:pv_energy_kwh" not in html
    # and the heat pump shows its outdoor temperature next to its power
    assert 'data-metric-for="hp-1:outdoor_temp_c">4.0</span><span class="muted">°C outside' in html
    assert html.index('data-metric-for="hp-1:power_w"') < html.index("hp-1:outdoor_temp_c")
    # and what the panels make is not counted as what the home uses now
    assert 'data-metric-for="pv-1:pv_w" data-power-unit' not in html
    assert 'data-metric-for="hp-1:power_w" data-power-unit="W" data-value="800.0"' in html


@pytest.mark.parametrize("devices_per_site", [1, 20])
def test_dashboard_query_count_does_not_grow_with_devices(
    client, alice, alice_home, django_assert_max_num_queries, devices_per_site
):
    # given: a second site of Alice's, both with many devices
    second = Site.objects.create(name="Alice cabin")
    second.residents.add(alice)
    add_devices(alice_home["site"], devices_per_site, "pi-h")
    add_devices(second, devices_per_site, "pi-c")
    client.force_login(alice)

    # when / then (7 for the session, the user, the homes, their devices with rooms, their
    # sensors, the role and the demand-response panel; 2 for the outage panel: cuts and
    # balances; 1 for the relays; 4 for the figures: latest readings with the last hour, the
    # energy plan, stored site days, the energy of both sites)
    with django_assert_max_num_queries(14):
        response = client.get("/dashboard/")
    assert len(listed_devices(response)) == 1 + 2 * devices_per_site


# --- fleet ------------------------------------------------------------------------------------


def test_fleet_page_is_forbidden_for_residents(client, alice, alice_home):
    client.force_login(alice)

    response = client.get("/fleet/")

    assert response.status_code == 403
    assert "pi-a1" not in response.content.decode()


@pytest.mark.parametrize("who", ["operator", "admin_user"])
def test_fleet_page_lists_every_device_with_counts_for_operators(
    client, request, who, alice_home, bob_home
):
    Device.objects.filter(uid="pi-b1").update(online=True)
    client.force_login(request.getfixturevalue(who))

    response = client.get("/fleet/")

    assert response.status_code == 200
    assert listed_devices(response) == ["pi-a1", "pi-b1"]
    assert response.context["counts"] == {"total": 2, "online": 1, "offline": 1}
    html = response.content.decode()
    assert (badge(html, "pi-a1"), badge(html, "pi-b1")) == ("offline", "online")


@pytest.fixture
def second_feeder(feeder):
    transformer = Transformer.objects.get(pk=feeder.transformer_id)
    return Feeder.objects.create(code="FD-2", name="F2", transformer=transformer)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("online=true", ["pi-b1"]),
        ("online=false", ["pi-a1", "pi-c1"]),
        ("feeder={feeder}", ["pi-a1", "pi-b1"]),
        ("feeder={second_feeder}", ["pi-c1"]),
        ("q=bob", ["pi-b1"]),
        ("q=pi-c", ["pi-c1"]),
        ("site={alice_site}&online=false", ["pi-a1"]),
        ("kind=hvac", ["pi-c1"]),
        ("q=nothing-like-this", []),
    ],
)
def test_fleet_page_filters(
    client, operator, alice_home, bob_home, feeder, second_feeder, query, expected
):
    # given: Bob's Pi online; an HVAC unit on a second feeder
    Device.objects.filter(uid="pi-b1").update(online=True)
    other = Site.objects.create(name="Clinic", feeder=second_feeder)
    services.device_create(uid="pi-c1", site=other, kind="hvac")
    client.force_login(operator)
    query = query.format(
        feeder=feeder.id, second_feeder=second_feeder.id, alice_site=alice_home["site"].id
    )

    response = client.get(f"/fleet/?{query}")

    assert response.status_code == 200
    assert listed_devices(response) == expected


@pytest.mark.parametrize("query", ["online=maybe", "feeder=abc", "feeder=999999", "page=xyz"])
def test_fleet_page_ignores_filters_it_cannot_read(client, operator, alice_home, query):
    client.force_login(operator)

    response = client.get(f"/fleet/?{query}")

    assert response.status_code == 200
    assert listed_devices(response) == ["pi-a1"]


def test_fleet_page_paginates_and_keeps_the_filters(client, operator, alice_home):
    add_devices(alice_home["site"], 120, "pi-m")
    client.force_login(operator)

    first = client.get("/fleet/?q=pi-m")
    second = client.get("/fleet/?q=pi-m&page=2")

    assert len(listed_devices(first)) == 100
    assert 'href="?q=pi-m&page=2"' in first.content.decode()
    assert len(listed_devices(second)) == 20


@pytest.mark.parametrize("devices", [1, 40])
def test_fleet_page_query_count_does_not_grow_with_devices(
    client, operator, alice_home, bob_home, django_assert_max_num_queries, devices
):
    add_devices(alice_home["site"], devices, "pi-q")
    client.force_login(operator)

    # (two of them for the open outages panel: the open outages, the suspected ones; one for the
    # power column: the page's power sensors and their latest readings; one for the feeder the
    # filter names)
    with django_assert_max_num_queries(12):
        response = client.get(f"/fleet/?feeder={alice_home['site'].feeder_id}")
    assert len(listed_devices(response)) == 2 + devices


def fleet_row(html: str, uid: str) -> str:
    match = re.search(rf'<tr data-device="{re.escape(uid)}">.*?</tr>', html, re.S)
    assert match, f"no row for {uid}"
    return re.sub(r"\n\s*", "", match.group(0))


def test_fleet_rows_show_each_device_its_power_site_feeder_state_and_kind(
    client, operator, alice_home
):
    # given: Alice's Pi online with a reading a minute old; at a site without a feeder, an HVAC
    # unit never seen, in no room, with no sensor and a name to escape; a plug whose power
    # sensors are listed by key (the first is the one shown, in its unit)
    now = timezone.now()
    pi = alice_home["device"]
    seen = now - timedelta(minutes=3)
    Device.objects.filter(pk=pi.pk).update(online=True, last_seen=seen)
    readings_insert(sensor_ids=[pi.sensors.get(key="power_w").id],
                    times_us=[int((now - timedelta(minutes=1)).timestamp() * 1e6)],
                    values=[1234.5])  # fmt: skip
    clinic = Site.objects.create(name="Café <&> Co")
    services.device_create(uid="hvac-1", site=clinic, kind="hvac", name='Heat "pump" <b>')
    services.device_create(uid="plug-1", site=clinic, kind="plug", sensors=[
        {"key": "z_power", "kind": "power", "unit": "W"},
        {"key": "a_power", "kind": "power", "unit": "kW"},
    ])  # fmt: skip
    client.force_login(operator)

    html = client.get("/fleet/").content.decode()

    assert fleet_row(html, "pi-a1") == (
        '<tr data-device="pi-a1"><td><a href="/devices/pi-a1/"><code>pi-a1</code> </a></td>'
        '<td class="num"><span data-metric-for="pi-a1:power_w">1234</span> '
        '<span class="muted small">W</span></td>'
        f'<td><a href="/sites/{alice_home["site"].id}/history/">Alice home</a> / Kitchen</td>'
        '<td>FD-1</td><td><span class="badge online" data-status-for="pi-a1">online</span></td>'
        f'<td><span data-last-seen-for="pi-a1" data-ts="{seen.isoformat()}">'
        '3\xa0minutes ago</span></td><td class="hide-phone">Raspberry Pi</td></tr>'
    )
    assert fleet_row(html, "hvac-1") == (
        '<tr data-device="hvac-1"><td><a href="/devices/hvac-1/"><code>hvac-1</code> '
        "Heat &quot;pump&quot; &lt;b&gt;</a></td>"
        '<td class="num"><span class="muted">\N{EN DASH}</span></td>'
        f'<td><a href="/sites/{clinic.id}/history/">Café &lt;&amp;&gt; Co</a></td>'
        "<td>\N{EM DASH}</td>"
        '<td><span class="badge offline" data-status-for="hvac-1">offline</span></td>'
        '<td><span data-last-seen-for="hvac-1" data-ts="">never</span></td>'
        f'<td class="hide-phone">{Device(kind="hvac").get_kind_display()}</td></tr>'
    )
    assert '<span data-metric-for="plug-1:a_power">\N{EN DASH}</span> ' in fleet_row(html, "plug-1")
    assert '<span class="muted small">kW</span>' in fleet_row(html, "plug-1")


def test_fleet_pages_list_devices_by_site_name_then_uid(client, operator, feeder):
    # given: 150 devices on sites whose names sort against their creation order
    for n in range(3):
        site = Site.objects.create(name=f"Site {'cba'[n]}", feeder=feeder)
        for m in range(50):
            services.device_create(uid=f"d{n}-{(m * 7) % 50:02}", site=site)
    client.force_login(operator)

    listed = [*listed_devices(client.get("/fleet/")), *listed_devices(client.get("/fleet/?page=2"))]

    by_site = {"Site a": 2, "Site b": 1, "Site c": 0}
    assert listed == [f"d{n}-{m:02}" for n in by_site.values() for m in range(50)]


# --- a device's page and the fleet's links -------------------------------------------------


def test_a_residents_device_page_shows_its_readings_and_commands(client, alice, alice_home):
    device = alice_home["device"]
    services.command_issue(device=device, name="relay", args={"state": "off"}, user=alice)
    client.force_login(alice)

    response = client.get(f"/devices/{device.uid}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert 'data-metric-for="pi-a1:power_w"' in page and 'data-chart-for="pi-a1"' in page
    assert "<code>relay</code> state=off" in page and "Pending" in page
    assert 'id="dashboard-series"' in page


def test_a_resident_cannot_open_another_homes_device(client, alice, bob_home):
    client.force_login(alice)
    response = client.get(f"/devices/{bob_home['device'].uid}/")
    assert response.status_code == 404
    assert "No device with this id is yours to see." in response.content.decode()


def test_operators_open_any_device_and_fleet_rows_link_to_it_and_its_site(
    client, operator, alice_home
):
    client.force_login(operator)
    device, site = alice_home["device"], alice_home["site"]

    fleet = client.get("/fleet/").content.decode()
    assert f'href="/devices/{device.uid}/"' in fleet
    assert f'href="/sites/{site.id}/history/"' in fleet
    assert 'data-metric-for="pi-a1:power_w"' in fleet  # the power column, live
    assert client.get(f"/devices/{device.uid}/").status_code == 200
