"""The outage pages: the dashboard's banner, the resident's history, the fleet page's open
outages and the operators' grid page; who may see what, and their query counts."""

import json
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from asgiref.sync import async_to_sync

from django.utils import timezone

from devices.groups import fleet_group, site_group
from devices.models import Site
from energy_portal import realtime
from energy_portal.redis_client import sync_client
from outages import services
from outages.models import CreditPolicy, Outage, OutageKind, OutageStatus
from tests.outages.conftest import report_cut

pytestmark = pytest.mark.django_db


@pytest.fixture
def short_policy(db):
    """A default policy that pays £1.00 at 10 min and £0.50 per further 10 min."""
    CreditPolicy.objects.filter(is_default=True).update(is_default=False)
    return CreditPolicy.objects.create(
        name="Test short",
        currency="GBP",
        threshold=timedelta(minutes=10),
        base_amount=Decimal("1.00"),
        tiers=[{"after": "PT10M", "period": "PT10M", "amount": "0.50"}],
        is_default=True,
    )


def test_dashboard_shows_an_open_cut_with_its_credit_and_next_step(
    client, alice, alice_home, short_policy, django_capture_on_commit_callbacks
):
    # given a cut at Alice's home that started 15 minutes ago
    started = timezone.now() - timedelta(minutes=15)
    with django_capture_on_commit_callbacks():
        report_cut(alice_home["device"], lost=started)
    client.force_login(alice)

    # when she opens her dashboard
    html = client.get("/dashboard/").content.decode()

    # then the banner says since when (her home's local time), what she earned, and what next
    local = timezone.localtime(started, ZoneInfo(alice_home["site"].timezone))
    assert f"Power cut since {local:%H:%M}" in html
    assert "data-outage-amount>£1.00<" in html
    assert "data-outage-next-amount>£1.50<" in html


def test_dashboard_gives_the_day_of_a_next_step_that_is_not_today(client, alice, alice_home, db):
    # given a policy paying only after two days, and a cut at Alice's home since an hour ago
    CreditPolicy.objects.filter(is_default=True).update(is_default=False)
    CreditPolicy.objects.create(
        name="Two days", currency="GBP", threshold=timedelta(days=2), base_amount=Decimal("5"),
        is_default=True,
    )  # fmt: skip
    started = timezone.now() - timedelta(hours=1)
    report_cut(alice_home["device"], lost=started)
    client.force_login(alice)

    html = client.get("/dashboard/").content.decode()

    step = timezone.localtime(started + timedelta(days=2), ZoneInfo(alice_home["site"].timezone))
    assert f"<strong data-outage-next-time>{step:%H:%M:%S} on {step.day} {step:%b}</strong>" in html


def test_dashboard_shows_the_ledger_entry_once_the_cut_ends(
    client, alice, alice_home, short_policy
):
    # given a 72-minute cut that ended an hour ago: £1.00 + 6 x £0.50 = £4.00
    end = timezone.now() - timedelta(hours=1)
    report_cut(alice_home["device"], lost=end - timedelta(minutes=72), restored=end)
    client.force_login(alice)

    html = client.get("/dashboard/").content.decode()

    assert "Cut lasted 1 h 12 min" in html
    assert "£4.00 credited" in html
    assert "Power cut since" not in html
    assert "Credit balance: <span data-credit-balance>£4.00</span>" in html


def test_history_lists_only_the_residents_own_cuts_with_their_credit_and_balance(
    client, alice, alice_home, bob_home, short_policy
):
    now = timezone.now()
    report_cut(
        alice_home["device"], lost=now - timedelta(hours=3), restored=now - timedelta(hours=2)
    )
    report_cut(
        alice_home["device"], lost=now - timedelta(minutes=30), restored=now - timedelta(minutes=29)
    )
    report_cut(bob_home["device"], lost=now - timedelta(hours=5), restored=now - timedelta(hours=4))
    client.force_login(alice)

    html = client.get("/outages/").content.decode()

    assert html.count("data-outage=") == 2
    assert "Bob home" not in html
    assert "1 h 0 min" in html and "£3.50" in html  # 60 min: £1.00 + 5 x £0.50
    assert "momentary (not paid)" in html
    assert 'data-balance="GBP"' in html
    # each cell names its column, for the phone's stacked rows; the threshold in plain words
    assert '<td data-label="Credit">£3.50</td>' in html
    assert "Cuts shorter than 3 min are counted but not paid" in html
    assert "all your homes" not in html  # one home: its balance needs no saying whose


def test_a_resident_cannot_fetch_anothers_site_panel(client, alice, bob_home):
    client.force_login(alice)
    assert client.get(f"/outages/site/{bob_home['site'].id}/").status_code == 404


@pytest.mark.parametrize("url", ["/outages/grid/", "/outages/open/"])
def test_operator_pages_refuse_residents(client, alice, url):
    client.force_login(alice)
    assert client.get(url).status_code == 403


def test_fleet_page_lists_open_site_outages_under_their_feeder(
    client, operator, alice_home, bob_home, short_policy
):
    report_cut(alice_home["device"], lost=timezone.now() - timedelta(minutes=5))
    client.force_login(operator)

    html = client.get("/fleet/").content.decode()

    assert 'data-open-feeder="FD-1"' in html
    assert f'data-open-site="{alice_home["site"].id}"' in html
    assert f'data-open-site="{bob_home["site"].id}"' not in html


def test_grid_page_shows_feeder_outages_and_indices(client, operator, alice_home, bob_home):
    # given both homes of FD-1 cut together for an hour, ended: one feeder outage
    now = timezone.now()
    for home in (alice_home, bob_home):
        report_cut(home["device"], lost=now - timedelta(hours=2), restored=now - timedelta(hours=1))
    assert Outage.objects.filter(kind=OutageKind.FEEDER, status=OutageStatus.ENDED).count() == 1
    client.force_login(operator)

    html = client.get("/outages/grid/").content.decode()

    assert html.count("data-grid-outage=") == 1
    assert "Feeder FD-1" in html
    # SAIFI 2 interruptions / 2 customers = 1; SAIDI 120 min / 2 = 60; CAIDI 60; MAIFI 0
    assert '<td class="num" data-index="saifi">1.000</td>' in html
    assert '<td class="num" data-index="saidi">60.0</td>' in html
    assert '<td class="num" data-index="caidi">60.0</td>' in html
    assert '<td class="num" data-index="maifi">0.000</td>' in html


def test_grid_page_says_an_open_outages_customer_minutes_count_once_cuts_end(
    client, operator, alice_home, bob_home
):
    # given both homes of FD-1 out for an hour, still out: their minutes are not counted yet
    now = timezone.now()
    for home in (alice_home, bob_home):
        report_cut(home["device"], lost=now - timedelta(hours=1))
    client.force_login(operator)

    html = client.get("/outages/grid/").content.decode()

    row = html[html.index("data-grid-outage=") :].split("</tr>")[0]
    assert "still out" in row and "so far" in row
    assert "once cuts end" in row and ">0<" not in row


def _heard(pubsub) -> list[tuple[str, dict]]:
    heard = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        if message["type"] == "message":
            heard.append((message["channel"].decode(), json.loads(message["data"])))
    return heard


def test_reconcile_tells_the_site_and_the_fleet_when_outages_change(
    alice_home, django_capture_on_commit_callbacks
):
    # given a viewer of the site and one of the fleet, listening on Redis as the live hub does
    device = alice_home["device"]
    groups = [site_group(device.site_id), fleet_group()]
    async_to_sync(realtime.viewers_join)(groups, "test-viewer")
    pubsub = sync_client().pubsub()
    pubsub.subscribe(*[realtime.live_channel(group) for group in groups])
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.power_event_record(
                device_id=device.id,
                site_id=device.site_id,
                device_uid=device.uid,
                state="lost",
                at=timezone.now(),
            )
        _heard(pubsub)  # the power report's own messages

        # when the site is reconciled (a cut opens), then again with nothing new
        with django_capture_on_commit_callbacks(execute=True):
            services.site_outages_reconcile(site_id=device.site_id)
        opened = _heard(pubsub)
        with django_capture_on_commit_callbacks(execute=True):
            services.site_outages_reconcile(site_id=device.site_id)
        again = _heard(pubsub)
    finally:
        pubsub.close()
        async_to_sync(realtime.viewers_leave)(groups, "test-viewer")

    # then both groups heard of the change once, and of no change nothing
    expected = {"type": "outage", "site": device.site_id, "feeder": device.site.feeder_id}
    assert sorted(opened) == sorted((realtime.live_channel(group), expected) for group in groups)
    assert again == []


@pytest.mark.parametrize("cuts", [1, 8])
def test_outage_pages_query_counts_do_not_grow_with_outages(
    client,
    alice,
    operator,
    alice_home,
    bob_home,
    short_policy,
    cuts,
    django_assert_max_num_queries,
):
    now = timezone.now()
    second = Site.objects.create(name="Alice cabin", feeder=alice_home["site"].feeder)
    second.residents.add(alice)
    for i in range(cuts):
        start = now - timedelta(hours=2 * i + 3)
        report_cut(alice_home["device"], lost=start, restored=start + timedelta(minutes=40))
        report_cut(bob_home["device"], lost=start, restored=start + timedelta(minutes=40))
    report_cut(alice_home["device"], lost=now - timedelta(minutes=20))
    client.force_login(alice)
    # (12 for the homes, devices and outage panels; 6 for the relays and the energy figures,
    # stored site days included; 1 for the demand-response panels)
    with django_assert_max_num_queries(19):
        assert client.get("/dashboard/").status_code == 200
    with django_assert_max_num_queries(10):
        assert client.get("/outages/").status_code == 200
    client.force_login(operator)
    with django_assert_max_num_queries(12):
        assert client.get("/outages/grid/").status_code == 200
    with django_assert_max_num_queries(16):
        assert client.get("/fleet/").status_code == 200


def test_the_grid_page_says_when_a_date_is_not_one_and_shows_the_default_period(client, operator):
    client.force_login(operator)
    response = client.get("/outages/grid/", {"start": "2026-02-30", "end": "soon"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "From: &#x27;2026-02-30&#x27; is not a date; write it as YYYY-MM-DD" in page
    assert "To: &#x27;soon&#x27; is not a date" in page
    assert 'placeholder="YYYY-MM-DD"' in page
