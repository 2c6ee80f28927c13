"""The admin of outages and credits, driven as a superuser would: policies and site assignments
are edited there; outages, power events and the ledger are only read."""

from datetime import timedelta
from decimal import Decimal

import pytest

from outages import services
from outages.models import CreditPolicy, SitePolicy
from tests.outages.conftest import at


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def paid_cut(alice_home, ofgem):
    device = alice_home["device"]
    for state, minutes in [("lost", 0), ("restored", 12 * 60)]:
        services.power_event_record(
            device_id=device.id,
            site_id=device.site_id,
            device_uid=device.uid,
            state=state,
            at=at(minutes),
        )
    services.site_outages_reconcile(site_id=device.site_id)


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("creditpolicy", "Ofgem normal weather"),
        ("outage", "Alice home"),
        ("creditentry", "95.00 GBP"),
        ("powerevent", "Mains restored"),
    ],
)
def test_changelists_show_the_rows(admin_client, paid_cut, path, shown):
    response = admin_client.get(f"/admin/outages/{path}/")

    assert response.status_code == 200
    assert shown in response.content.decode()


@pytest.mark.parametrize("path", ["outage", "creditentry", "powerevent"])
def test_derived_rows_and_the_ledger_cannot_be_added_changed_or_deleted(
    admin_client, paid_cut, path
):
    changelist = admin_client.get(f"/admin/outages/{path}/")
    row = changelist.context["cl"].result_list[0]

    assert admin_client.get(f"/admin/outages/{path}/add/").status_code == 403
    assert admin_client.get(f"/admin/outages/{path}/{row.pk}/delete/").status_code == 403
    # the change page shows the row read only
    page = admin_client.get(f"/admin/outages/{path}/{row.pk}/change/")
    assert page.status_code == 200
    assert 'type="submit" value="Save"' not in page.content.decode()


def test_policy_form_refuses_unreadable_tiers_with_the_reason(admin_client):
    response = admin_client.post(
        "/admin/outages/creditpolicy/add/",
        {
            "name": "Broken",
            "currency": "GBP",
            "threshold": "12:00:00",
            "base_amount": "95.00",
            "tiers": '[{"after": "PT12H", "period": "PT0S", "amount": "45.00"}]',
            "min_sites_affected": "1",
        },
    )

    assert response.status_code == 200
    assert "tiers[0].period must be longer than zero" in response.content.decode()
    assert not CreditPolicy.objects.filter(name="Broken").exists()


@pytest.mark.parametrize("threshold", ["12", "00:61:00", "1:30"])
def test_policy_form_refuses_a_threshold_in_neither_form(admin_client, threshold):
    """Django's duration field would take these as 12 s, 61 min and 90 s."""
    response = admin_client.post(
        "/admin/outages/creditpolicy/add/",
        {
            "name": "Vague",
            "currency": "GBP",
            "threshold": threshold,
            "base_amount": "95.00",
            "tiers": "[]",
            "min_sites_affected": "1",
        },
    )

    assert response.status_code == 200
    assert (
        "Give a duration as ISO 8601 (PT12H) or HH:MM:SS (12:00:00)." in response.content.decode()
    )
    assert not CreditPolicy.objects.filter(name="Vague").exists()


def test_policy_form_shows_a_threshold_of_days_as_it_reads_it(admin_client, db):
    policy = CreditPolicy.objects.create(
        name="Three days", currency="USD", threshold=timedelta(hours=72), base_amount=0
    )
    page = admin_client.get(f"/admin/outages/creditpolicy/{policy.pk}/change/").content.decode()
    assert 'value="3 00:00:00"' in page

    form = {"name": "Three days", "currency": "USD", "threshold": "3 00:00:00"}
    form |= {"base_amount": "0", "tiers": "[]", "min_sites_affected": "1"}
    response = admin_client.post(f"/admin/outages/creditpolicy/{policy.pk}/change/", form)

    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.threshold == timedelta(hours=72)


def test_policy_form_saves_tiers_normalised(admin_client):
    response = admin_client.post(
        "/admin/outages/creditpolicy/add/",
        {
            "name": "Short cuts",
            "currency": "EUR",
            "threshold": "00:05:00",
            "base_amount": "1.00",
            "tiers": '[{"after": "00:05:00", "period": "00:05:00", "amount": "0.50"}]',
            "min_sites_affected": "1",
            "is_default": "on",
        },
    )

    assert response.status_code == 302
    saved = CreditPolicy.objects.get(name="Short cuts")
    assert saved.tiers == [{"after": "PT5M", "period": "PT5M", "amount": "0.50"}]
    assert (saved.base_amount, saved.is_default) == (Decimal("1.00"), True)


def test_a_site_is_given_its_own_policy(admin_client, alice_home):
    delhi = CreditPolicy.objects.get(name="Delhi")

    response = admin_client.post(
        "/admin/outages/sitepolicy/add/",
        {"site": alice_home["site"].id, "policy": delhi.id},
    )

    assert response.status_code == 302
    assert SitePolicy.objects.get(site=alice_home["site"]).policy == delhi


def test_the_site_page_sets_and_clears_the_sites_own_policy(admin_client, alice_home):
    site = alice_home["site"]
    delhi = CreditPolicy.objects.get(name="Delhi")
    page = admin_client.get(f"/admin/devices/site/{site.id}/change/")
    form = {
        **page.context["adminform"].form.initial,
        "residents": [user.pk for user in site.residents.all()],
        "feeder": site.feeder_id,
        "rooms-TOTAL_FORMS": "0",
        "rooms-INITIAL_FORMS": "0",
    }

    assert "credit_policy_choice-TOTAL_FORMS" in page.content.decode()
    given = admin_client.post(
        f"/admin/devices/site/{site.id}/change/",
        {
            **form,
            "credit_policy_choice-TOTAL_FORMS": "1",
            "credit_policy_choice-INITIAL_FORMS": "0",
            "credit_policy_choice-0-policy": delhi.id,
            "credit_policy_choice-0-site": site.id,
        },
    )
    assert given.status_code == 302, given.context and given.context["errors"]
    assert SitePolicy.objects.get(site=site).policy == delhi

    cleared = admin_client.post(
        f"/admin/devices/site/{site.id}/change/",
        {
            **form,
            "credit_policy_choice-TOTAL_FORMS": "1",
            "credit_policy_choice-INITIAL_FORMS": "1",
            "credit_policy_choice-0-policy": delhi.id,
            "credit_policy_choice-0-site": site.id,
            "credit_policy_choice-0-DELETE": "on",
        },
    )
    assert cleared.status_code == 302
    assert not SitePolicy.objects.filter(site=site).exists()
