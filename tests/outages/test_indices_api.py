"""`GET /api/v1/outages/indices/`: IEEE 1366 indices of a feeder over a period, from outages
reconciled from real power reports, against figures worked out by hand."""

import pytest

from devices import services as device_services
from devices.models import Feeder, Site
from outages import services
from tests.outages.conftest import at

URL = "/api/v1/outages/indices/"
DAY = {"start": at(0).isoformat(), "end": at(24 * 60).isoformat()}


def cut(site, start, end):
    device = site.devices.first()
    for state, minutes in [("lost", start), ("restored", end)]:
        services.power_event_record(
            device_id=device.id,
            site_id=site.id,
            device_uid=device.uid,
            state=state,
            at=at(minutes),
        )
    services.site_outages_reconcile(site_id=site.id)


@pytest.fixture
def ten_sites(alice_home):
    """Alice's site and nine more on her feeder, each with a Pi."""
    feeder = alice_home["site"].feeder
    sites = [alice_home["site"]]
    for n in range(9):
        site = Site.objects.create(name=f"Neighbour {n}", feeder=feeder)
        device_services.device_create(uid=f"pi-n{n}", site=site)
        sites.append(site)
    return sites


@pytest.fixture
def other_feeder(ten_sites):
    """A second feeder with one site of Bob's that was cut for a day: never in the first's."""
    feeder = Feeder.objects.create(
        code="FD-2", name="F2", transformer=ten_sites[0].feeder.transformer
    )
    site = Site.objects.create(name="Far away", feeder=feeder)
    device_services.device_create(uid="pi-far", site=site)
    cut(site, 0, 24 * 60)
    return feeder


def test_the_worked_example_of_ten_sites(ten_sites, other_feeder, operator, api_client_for):
    # sustained cuts of 30 min at 3 sites and of 90 min at 5; a 1-minute one at 2
    for site in ten_sites[:3]:
        cut(site, 60, 90)
    for site in ten_sites[3:8]:
        cut(site, 120, 210)
    for site in ten_sites[8:]:
        cut(site, 300, 301)

    response = api_client_for(operator).get(URL, {"feeder": ten_sites[0].feeder_id, **DAY})

    assert response.status_code == 200, response.content
    assert response.json() == {
        "feeder": ten_sites[0].feeder_id,
        "feeder_code": "FD-1",
        "start": "2026-11-22T10:00:00Z",
        "end": "2026-11-23T10:00:00Z",
        "momentary_threshold_s": 180,
        "customers_served": 10,
        "sustained_interruptions": 8,
        "momentary_interruptions": 2,
        "customer_minutes": 540.0,
        "saifi": 0.8,
        "saidi": 54.0,
        "caidi": 67.5,
        "maifi": 0.2,
    }


def test_outages_are_clipped_to_the_period_and_an_open_one_runs_until_now(
    ten_sites, operator, api_client_for
):
    cut(ten_sites[0], 60, 180)  # 2 h, of which the last hour is in the period
    device = ten_sites[1].devices.first()
    services.power_event_record(
        device_id=device.id, site_id=ten_sites[1].id, device_uid=device.uid, state="lost", at=at(0)
    )
    services.site_outages_reconcile(site_id=ten_sites[1].id)  # open since T0, so past the end

    response = api_client_for(operator).get(
        URL,
        {
            "feeder": ten_sites[0].feeder_id,
            "start": at(120).isoformat(),
            "end": at(240).isoformat(),
        },
    )

    body = response.json()
    assert (body["sustained_interruptions"], body["customer_minutes"]) == (2, 60.0 + 120.0)


def test_operators_without_a_feeder_get_every_site(
    ten_sites, other_feeder, operator, api_client_for
):
    cut(ten_sites[0], 60, 90)

    body = api_client_for(operator).get(URL, DAY).json()

    assert body["feeder"] is None
    assert (body["customers_served"], body["sustained_interruptions"]) == (11, 2)
    assert body["customer_minutes"] == 30.0 + 24 * 60


def test_residents_see_their_own_feeders_indices(ten_sites, alice, api_client_for):
    cut(ten_sites[0], 60, 90)

    response = api_client_for(alice).get(URL, {"feeder": ten_sites[0].feeder_id, **DAY})

    assert response.status_code == 200
    assert response.json()["saifi"] == 0.1


def test_residents_get_404_for_another_feeder(other_feeder, alice, api_client_for):
    response = api_client_for(alice).get(URL, {"feeder": other_feeder.id, **DAY})

    assert response.status_code == 404
    assert "none of your sites" in response.json()["detail"]


def test_residents_must_name_their_feeder(ten_sites, alice, api_client_for):
    response = api_client_for(alice).get(URL, DAY)

    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["feeder"]


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"feeder": "FD-1"}, "feeder"),
        ({"feeder": "0"}, "feeder"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01T00:00:00Z"}, "end"),
        ({"start": at(60).isoformat(), "end": at(60).isoformat()}, "end"),
        ({"start": at(120).isoformat(), "end": at(60).isoformat()}, "end"),
    ],
)
def test_a_bad_parameter_is_named_in_a_400(ten_sites, operator, api_client_for, params, bad):
    response = api_client_for(operator).get(URL, params)

    assert response.status_code == 400
    assert list(response.json()["errors"]) == [bad]


def test_an_unknown_feeder_is_404_for_operators(ten_sites, operator, api_client_for):
    response = api_client_for(operator).get(URL, {"feeder": 999_999})

    assert response.status_code == 404


def test_anonymous_callers_get_401(db, api_client_for):
    assert api_client_for(None).get(URL).status_code == 401
