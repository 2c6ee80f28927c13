"""The outages API at /api/v1/: outages with their credit, credit policies, the ledger and its
balance, and each site's own credit policy in the sites API. Who sees what, the shapes, the 400s
and the query counts of the lists."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from django.utils import timezone

from devices import services as device_services
from devices.models import Site
from outages import services
from outages.models import CreditEntry, CreditPolicy, Outage, OutageStatus, SitePolicy
from tests.outages.conftest import at, report_cut

API = "/api/v1/"
OFGEM_SHAPE = {
    "name": "Ofgem normal weather",
    "currency": "GBP",
    "threshold": "PT12H",
    "base_amount": "95.00",
    "tiers": [{"after": "PT12H", "period": "PT12H", "amount": "45.00"}],
    "count_started_periods": False,
    "cap": None,
    "min_sites_affected": 1,
    "is_default": False,
}


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def cut(device, *, lost: datetime, restored: datetime | None = None) -> Outage:
    """Report a cut and give back the site outage it made."""
    report_cut(device, lost=lost, restored=restored)
    return Outage.objects.get(site_id=device.site_id, started_at=lost)


@pytest.fixture
def alice_cut(alice_home, ofgem):
    """Alice's 12-hour cut, paid £95 by the default Ofgem policy."""
    return cut(alice_home["device"], lost=at(0), restored=at(12 * 60))


@pytest.fixture
def bob_cut(bob_home, ofgem):
    return cut(bob_home["device"], lost=at(60), restored=at(60 + 24 * 60))


@pytest.fixture
def alice_client(api_client_for, alice):
    return api_client_for(alice)


@pytest.fixture
def operator_client(api_client_for, operator):
    return api_client_for(operator)


@pytest.fixture
def staff_client(api_client_for, admin_user):
    return api_client_for(admin_user)


def errors_of(response) -> dict:
    assert response.status_code == 400, response.content
    return response.json()["errors"]


# --- outages/ -----------------------------------------------------------------------------------


def test_an_ended_outage_shows_its_times_and_what_the_ledger_paid(alice_client, alice_cut):
    response = alice_client.get(f"{API}outages/{alice_cut.id}/")

    assert response.status_code == 200
    assert response.json() == {
        "id": alice_cut.id,
        "kind": "site",
        "site": alice_cut.site_id,
        "feeder": alice_cut.site.feeder_id,  # the site's
        "transformer": None,
        "grid_outage": None,
        "sites_affected": 1,
        "customer_minutes": None,
        "start": iso(at(0)),
        "end": iso(at(12 * 60)),
        "duration_s": 43200.0,
        "momentary": False,
        "status": "ended",
        "credit": {"paid": [{"currency": "GBP", "amount": "95.00"}], "quote": None},
        "policy": "Ofgem normal weather",
    }


def test_an_open_outage_shows_the_live_quote_of_its_policy(alice_client, alice_home, ofgem):
    started = timezone.now() - timedelta(hours=1)
    outage = cut(alice_home["device"], lost=started)

    body = alice_client.get(f"{API}outages/{outage.id}/").json()

    assert (body["status"], body["end"], body["policy"]) == ("open", None, "Ofgem normal weather")
    assert 3600 <= body["duration_s"] < 3600 + 60
    quote = body["credit"]["quote"]
    assert {k: v for k, v in quote.items() if k != "quoted_at"} == {
        "currency": "GBP",
        "amount": "0.00",
        "next_amount": "95.00",
        "next_step_after": "PT12H",
        "next_step_at": iso(started + timedelta(hours=12)),
    }
    assert body["credit"]["paid"] == []


def test_an_open_outage_past_its_threshold_quotes_the_amount_so_far(
    alice_client, alice_home, ofgem
):
    started = timezone.now() - timedelta(hours=13)
    outage = cut(alice_home["device"], lost=started)

    quote = alice_client.get(f"{API}outages/{outage.id}/").json()["credit"]["quote"]

    assert (quote["amount"], quote["next_amount"], quote["next_step_after"]) == (
        "95.00",
        "140.00",
        "P1D",
    )


def test_a_next_step_past_year_9999_is_shown_as_none_not_a_500(alice_client, alice_home, ofgem):
    # given a policy stored without the model's checks, its threshold past any date
    CreditPolicy.objects.filter(pk=ofgem.pk).update(threshold=timedelta(days=99_999_999))
    outage = cut(alice_home["device"], lost=timezone.now() - timedelta(hours=1))

    # when the resident lists and opens the open cut
    listed = alice_client.get(f"{API}outages/")
    opened = alice_client.get(f"{API}outages/{outage.id}/")

    # then both answer, with no instant for the next step
    assert (listed.status_code, opened.status_code) == (200, 200)
    assert opened.json()["credit"]["quote"]["next_step_at"] is None


def test_an_open_outage_without_any_policy_has_no_quote(alice_client, alice_home):
    outage = cut(alice_home["device"], lost=timezone.now() - timedelta(hours=1))

    body = alice_client.get(f"{API}outages/{outage.id}/").json()

    assert (body["policy"], body["credit"]) == (None, {"paid": [], "quote": None})


def test_a_resident_gets_404_for_another_residents_outage_exactly_as_for_a_missing_one(
    alice_client, bob_cut
):
    foreign = alice_client.get(f"{API}outages/{bob_cut.id}/")
    missing = alice_client.get(f"{API}outages/{bob_cut.id + 1000}/")

    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


def test_residents_list_their_own_outages_and_operators_all(
    alice_client, operator_client, alice_cut, bob_cut
):
    mine = alice_client.get(f"{API}outages/").json()
    everyone = operator_client.get(f"{API}outages/").json()

    assert [row["id"] for row in mine["results"]] == [alice_cut.id]
    assert mine["count"] == 1
    assert [row["id"] for row in everyone["results"]] == [bob_cut.id, alice_cut.id]


@pytest.fixture
def three_cuts(alice_home, bob_home, ofgem):
    """Alice: a cut at T0 ended at T0+12h, and an open one from T0+2 days; Bob: T0+1h to +25h."""
    return {
        "alice_ended": cut(alice_home["device"], lost=at(0), restored=at(12 * 60)),
        "alice_open": cut(alice_home["device"], lost=at(2 * 24 * 60)),
        "bob": cut(bob_home["device"], lost=at(60), restored=at(25 * 60)),
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("open=true", ["alice_open"]),
        ("open=false", ["bob", "alice_ended"]),
        ("kind=site", ["alice_open", "bob", "alice_ended"]),
        ("kind=feeder", []),
        # overlapping the range: still going on after start, started before end
        (f"start={iso(at(13 * 60))}", ["alice_open", "bob"]),
        (f"end={iso(at(30))}", ["alice_ended"]),
        (f"start={iso(at(11 * 60))}&end={iso(at(11 * 60 + 1))}", ["bob", "alice_ended"]),
        (f"start={iso(at(26 * 60))}&end={iso(at(40 * 60))}", []),
        (f"start={iso(at(26 * 60))}", ["alice_open"]),
        # ordered by the names the API shows (an open cut's end last going up, first going down)
        ("ordering=start", ["alice_ended", "bob", "alice_open"]),
        ("ordering=end", ["alice_ended", "bob", "alice_open"]),
        ("ordering=-end", ["alice_open", "bob", "alice_ended"]),
    ],
)
def test_outage_filters(operator_client, three_cuts, query, expected):
    response = operator_client.get(f"{API}outages/?{query.replace('+', '%2B')}")

    assert response.status_code == 200, response.content
    assert [row["id"] for row in response.json()["results"]] == [
        three_cuts[name].id for name in expected
    ]


def test_outages_filter_by_site_and_feeder(operator_client, three_cuts, alice_home, feeder):
    by_site = operator_client.get(f"{API}outages/?site={alice_home['site'].id}").json()
    by_feeder = operator_client.get(f"{API}outages/?feeder={feeder.id}").json()

    assert [row["id"] for row in by_site["results"]] == [
        three_cuts["alice_open"].id,
        three_cuts["alice_ended"].id,
    ]
    assert by_feeder["count"] == 3


def test_a_feeder_outage_is_listed_with_its_sites_under_its_feeder(
    operator_client, alice_home, bob_home, feeder, ofgem
):
    # given two sites of one feeder cut a minute apart, for an hour
    cut(alice_home["device"], lost=at(0), restored=at(60))
    cut(bob_home["device"], lost=at(1), restored=at(61))

    # when the operator lists the feeder's outages
    rows = operator_client.get(f"{API}outages/?feeder={feeder.id}&kind=feeder").json()["results"]

    # then one feeder outage: both sites, 120 customer-minutes, its members pointing at it
    assert [(r["kind"], r["feeder"], r["site"], r["sites_affected"]) for r in rows] == [
        ("feeder", feeder.id, None, 2)
    ]
    assert Decimal(rows[0]["customer_minutes"]) == 120  # 60 + 60
    members = operator_client.get(f"{API}outages/?feeder={feeder.id}&kind=site").json()
    assert {r["grid_outage"] for r in members["results"]} == {rows[0]["id"]}
    # which name the feeder they are on, as the feeder outage does
    assert {r["feeder"] for r in members["results"]} == {feeder.id}


def test_void_outages_are_listed_only_when_asked_for(operator_client, alice_home, ofgem):
    device = alice_home["device"]
    earlier = cut(device, lost=at(0), restored=at(30))
    first = cut(device, lost=at(60), restored=at(120))
    # a late report of a second Pi shows mains never came back in between: the two cuts are one,
    # held by the earlier outage, and the later one becomes void
    second_pi, _ = device_services.device_create(uid="pi-a2", site=alice_home["site"])
    for state, minutes in [("lost", 20), ("restored", 70)]:
        services.power_event_record(
            device_id=second_pi.id,
            site_id=second_pi.site_id,
            device_uid=second_pi.uid,
            state=state,
            at=at(minutes),
        )
    services.site_outages_reconcile(site_id=second_pi.site_id)

    listed = operator_client.get(f"{API}outages/").json()["results"]
    void = operator_client.get(f"{API}outages/?status=void").json()["results"]

    assert Outage.objects.get(pk=first.pk).status == OutageStatus.VOID
    assert [row["id"] for row in listed] == [earlier.id]
    assert [row["id"] for row in void] == [first.id]
    # and a void one is still found by its id, as its ledger entries name it
    opened = operator_client.get(f"{API}outages/{first.id}/")
    assert (opened.status_code, opened.json()["status"]) == (200, "void")


def test_a_resident_filtering_by_another_residents_site_gets_the_400_of_a_missing_one(
    alice_client, bob_home, alice_cut
):
    foreign = alice_client.get(f"{API}outages/?site={bob_home['site'].id}")
    missing = alice_client.get(f"{API}outages/?site=999999")

    assert "site" in errors_of(foreign)
    assert errors_of(foreign) == errors_of(missing)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (f"start={iso(at(60))}&end={iso(at(0))}", "end"),
        ("start=yesterday", "start"),
        ("kind=street", "kind"),
        ("status=gone", "status"),
        ("open=maybe", "open"),
        ("ordering=duration", "ordering"),
        ("ordering=start,-started", "ordering"),
        ("ordering=--start", "ordering"),
    ],
)
def test_bad_outage_filters_are_400_naming_the_parameter(operator_client, query, field):
    assert field in errors_of(operator_client.get(f"{API}outages/?{query}"))


@pytest.fixture
def many_cuts(make_user, feeder, ofgem):
    """Make `n` sites of one resident, each with an ended paid cut and an open one; half the
    sites have their own (Delhi) policy."""
    delhi = CreditPolicy.objects.get(name="Delhi")
    resident = make_user("carol")
    made = {"count": 0}

    def make(n: int):
        for _ in range(n):
            i = made["count"]
            made["count"] += 1
            site = Site.objects.create(name=f"Home {i}", feeder=feeder)
            site.residents.add(resident)
            ended = Outage.objects.create(
                site=site, started_at=at(0), ended_at=at(13 * 60), status=OutageStatus.ENDED
            )
            CreditEntry.objects.create(
                site=site, outage=ended, amount=Decimal(95), currency="GBP", revision=1
            )
            Outage.objects.create(site=site, started_at=timezone.now() - timedelta(minutes=90))
            if i % 2:
                SitePolicy.objects.create(site=site, policy=delhi)

    make.resident = resident
    return make


@pytest.mark.parametrize("ordering", ["start", "-start", "end", "-end"])
def test_pages_of_outages_sharing_an_instant_neither_repeat_nor_skip_one(
    api_client_for, many_cuts, ordering
):
    # given: seven sites cut at one instant and ended at one instant, each with an open cut too
    many_cuts(7)
    client = api_client_for(many_cuts.resident)

    # when: the resident reads them three at a time in that order
    rows, url = [], f"{API}outages/?ordering={ordering}&page_size=3"
    while url:
        page = client.get(url).json()
        rows += page["results"]
        url = page["next"]

    # then: each outage once, in the order asked, ties broken by id the same way
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted(Outage.objects.values_list("id", flat=True))
    field, descending = ordering.lstrip("-"), ordering.startswith("-")

    def key(row):  # an open cut's end (null) last going up, first going down
        return row[field] is None, row[field] or "", row["id"]

    assert rows == sorted(rows, key=key, reverse=descending)


# token, user's groups (operator check), count, page, ledger sums, site policies, default policy
OUTAGE_LIST_QUERIES = 7


@pytest.mark.parametrize("sites", [2, 10])
def test_outage_list_query_count_does_not_grow_with_rows(
    api_client_for, many_cuts, django_assert_num_queries, sites
):
    many_cuts(sites)
    client = api_client_for(many_cuts.resident)

    with django_assert_num_queries(OUTAGE_LIST_QUERIES):
        response = client.get(f"{API}outages/?page_size=100")

    rows = response.json()["results"]
    assert len(rows) == 2 * sites
    open_rows = [row for row in rows if row["status"] == "open"]
    assert {row["policy"] for row in open_rows} == {"Ofgem normal weather", "Delhi"}
    # Delhi pays ₹100 for a cut of 1 h 30 min (two started hours)
    assert {row["credit"]["quote"]["amount"] for row in open_rows} == {"0.00", "100.00"}


# --- credit-policies/ ---------------------------------------------------------------------------


def test_a_policy_is_created_and_read_back_in_the_documented_shape(staff_client, db):
    CreditPolicy.objects.filter(name="Ofgem normal weather").delete()

    created = staff_client.post(f"{API}credit-policies/", OFGEM_SHAPE, format="json")
    read = staff_client.get(f"{API}credit-policies/{created.json()['id']}/")

    assert created.status_code == 201, created.content
    assert read.json() == {"id": created.json()["id"], **OFGEM_SHAPE}


def test_durations_are_taken_as_hh_mm_ss_and_returned_as_iso_8601(staff_client, db):
    policy = {
        **OFGEM_SHAPE,
        "name": "Short",
        "threshold": "00:05:00",
        "tiers": [{"after": "00:05:00", "period": "1 00:00:00", "amount": "0.5"}],
        "cap": "10",
    }

    body = staff_client.post(f"{API}credit-policies/", policy, format="json").json()

    assert (body["threshold"], body["tiers"], body["cap"]) == (
        "PT5M",
        [{"after": "PT5M", "period": "P1D", "amount": "0.5"}],
        "10.00",
    )
    assert CreditPolicy.objects.get(name="Short").threshold == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"tiers": [{"after": "PT12H", "period": "PT0S", "amount": "45.00"}]},
            "tiers",
            "tiers[0].period must be longer than zero",
        ),
        (
            {"tiers": [{"after": "PT12H", "period": "soon", "amount": "45.00"}]},
            "tiers",
            "tiers[0].period: give a duration",
        ),
        ({"tiers": [{"after": "PT12H"}]}, "tiers", "tiers[0] needs exactly after, period"),
        ({"threshold": "twelve hours"}, "threshold", "ISO 8601 (PT12H) or HH:MM:SS"),
        ({"threshold": "12"}, "threshold", "ISO 8601 (PT12H) or HH:MM:SS"),  # not 12 seconds
        ({"threshold": "00:61:00"}, "threshold", "ISO 8601 (PT12H) or HH:MM:SS"),
        (
            {"tiers": [{"after": "1:30", "period": "PT1H", "amount": "1"}]},
            "tiers",
            "tiers[0].after: give a duration",
        ),
        ({"threshold": "-PT1H"}, "threshold", "must not be negative"),
        ({"threshold": "P999999999999D"}, "threshold", "ISO 8601"),
        ({"currency": "gbp"}, "currency", "ISO 4217"),
        ({"currency": "XYZ"}, "currency", "'XYZ' is no ISO 4217 currency"),
        ({"currency": "XAU"}, "currency", "not of a currency anyone is paid in"),
        ({"threshold": "P99999999D"}, "threshold", "at most ten years"),
        (
            {"tiers": [{"after": "P3661D", "period": "PT12H", "amount": "1"}]},
            "tiers",
            "tiers[0].after: at most ten years",
        ),
        (
            {"tiers": [{"after": "PT12H", "period": "P999999999999D", "amount": "1"}]},
            "tiers",
            "tiers[0].period: give a duration",
        ),
        ({"cap": "100.005"}, "cap", "whole number of 0.01"),
        ({"min_sites_affected": 0}, "min_sites_affected", "greater than or equal to 1"),
        ({"base_amount": "-1"}, "base_amount", "greater than or equal to 0"),
        ({"name": "Delhi"}, "name", "already exists"),
    ],
)
def test_bad_policies_are_400_naming_the_field(staff_client, db, change, field, message):
    response = staff_client.post(
        f"{API}credit-policies/", {**OFGEM_SHAPE, "name": "New", **change}, format="json"
    )

    errors = errors_of(response)
    assert list(errors) == [field]
    assert message in " ".join(errors[field])
    assert not CreditPolicy.objects.filter(name="New").exists()


def test_a_second_default_is_refused_naming_the_current_one(staff_client, ofgem):
    response = staff_client.post(
        f"{API}credit-policies/", {**OFGEM_SHAPE, "name": "New", "is_default": True}, format="json"
    )

    assert errors_of(response) == {
        "is_default": [
            f"'Ofgem normal weather' (id {ofgem.id}) is already the default policy; set its "
            "is_default to false first."
        ]
    }
    assert list(CreditPolicy.objects.filter(is_default=True)) == [ofgem]


def test_the_default_moves_by_unsetting_the_old_one_first(staff_client, ofgem):
    delhi = CreditPolicy.objects.get(name="Delhi")

    unset = staff_client.patch(
        f"{API}credit-policies/{ofgem.id}/", {"is_default": False}, format="json"
    )
    moved = staff_client.patch(
        f"{API}credit-policies/{delhi.id}/", {"is_default": True}, format="json"
    )
    again = staff_client.patch(
        f"{API}credit-policies/{delhi.id}/", {"is_default": True}, format="json"
    )

    assert (unset.status_code, moved.status_code, again.status_code) == (200, 200, 200)
    assert list(CreditPolicy.objects.filter(is_default=True)) == [delhi]


def test_a_partial_update_checks_the_whole_policy(staff_client, ofgem):
    # GBP allows pence: a cap in tenths of a penny is refused even when only the cap changes
    response = staff_client.patch(
        f"{API}credit-policies/{ofgem.id}/", {"cap": "99.999"}, format="json"
    )

    assert "cap" in errors_of(response)


def test_operators_read_policies_and_only_staff_change_them(
    operator_client, alice_client, staff_client, ofgem
):
    assert operator_client.get(f"{API}credit-policies/").status_code == 200
    assert operator_client.get(f"{API}credit-policies/{ofgem.id}/").status_code == 200
    assert (
        operator_client.post(f"{API}credit-policies/", OFGEM_SHAPE, format="json").status_code
        == 403
    )
    assert (
        operator_client.patch(f"{API}credit-policies/{ofgem.id}/", {"cap": "1"}).status_code == 403
    )
    assert operator_client.delete(f"{API}credit-policies/{ofgem.id}/").status_code == 403
    assert alice_client.get(f"{API}credit-policies/").status_code == 403
    assert staff_client.delete(f"{API}credit-policies/{ofgem.id}/").status_code == 204


def test_a_policy_that_priced_an_outage_cannot_be_deleted(staff_client, alice_cut, ofgem):
    response = staff_client.delete(f"{API}credit-policies/{ofgem.id}/")

    assert response.status_code == 409
    assert "outages" in response.json()["detail"]
    assert CreditPolicy.objects.filter(pk=ofgem.pk).exists()


def test_policy_list_query_count(staff_client, django_assert_num_queries, db):
    # token, count, page (staff need no group lookup)
    with django_assert_num_queries(3):
        response = staff_client.get(f"{API}credit-policies/")

    assert {row["name"] for row in response.json()["results"]} >= {
        "Ofgem normal weather",
        "Delhi",
        "New York",
    }


# --- credits/ -----------------------------------------------------------------------------------


def test_ledger_entries_show_site_amount_currency_reason_and_revision(alice_client, alice_cut):
    entry = CreditEntry.objects.get(outage=alice_cut)

    response = alice_client.get(f"{API}credits/")

    assert response.json()["results"] == [
        {
            "id": entry.id,
            "site": alice_cut.site_id,
            "amount": "95.00",
            "currency": "GBP",
            "reason": {"outage": alice_cut.id, "dr_event": None},
            "created_at": iso(entry.created_at),
            "memo": "cut from 2026-11-22 10:00:00 UTC, PT12H: Ofgem normal weather",
            "revision": 1,
        }
    ]


def test_a_demand_response_payment_names_its_event(alice_client, alice_home):
    services.credit_settle(
        site_id=alice_home["site"].id,
        amount=Decimal("3.20"),
        currency="EUR",
        memo="DR event 7",
        dr_event_id=7,
    )

    row = alice_client.get(f"{API}credits/?dr_event=7").json()["results"][0]

    assert (row["reason"], row["amount"]) == ({"outage": None, "dr_event": 7}, "3.20")


def test_a_resident_sees_only_their_own_entries_and_gets_404_for_others(
    alice_client, operator_client, alice_cut, bob_cut
):
    bobs = CreditEntry.objects.get(outage=bob_cut)

    mine = alice_client.get(f"{API}credits/").json()["results"]
    everyone = operator_client.get(f"{API}credits/").json()["results"]
    foreign = alice_client.get(f"{API}credits/{bobs.id}/")
    missing = alice_client.get(f"{API}credits/{bobs.id + 1000}/")

    assert [row["site"] for row in mine] == [alice_cut.site_id]
    assert len(everyone) == 2
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    # nor may a resident find out whether another's outage exists through the filter
    assert errors_of(alice_client.get(f"{API}credits/?outage={bob_cut.id}")) == errors_of(
        alice_client.get(f"{API}credits/?outage=999999")
    )


def test_credits_filter_by_site_and_outage(operator_client, alice_cut, bob_cut):
    by_site = operator_client.get(f"{API}credits/?site={bob_cut.site_id}").json()["results"]
    by_outage = operator_client.get(f"{API}credits/?outage={alice_cut.id}").json()["results"]

    assert [row["reason"]["outage"] for row in by_site] == [bob_cut.id]
    assert [row["reason"]["outage"] for row in by_outage] == [alice_cut.id]


# token, user's groups, count, page
CREDIT_LIST_QUERIES = 4


@pytest.mark.parametrize("sites", [2, 10])
def test_credit_list_query_count_does_not_grow_with_rows(
    api_client_for, many_cuts, django_assert_num_queries, sites
):
    many_cuts(sites)
    client = api_client_for(many_cuts.resident)

    with django_assert_num_queries(CREDIT_LIST_QUERIES):
        response = client.get(f"{API}credits/?page_size=100")

    assert len(response.json()["results"]) == sites


def test_the_balance_sums_the_callers_sites_per_currency(
    alice_client, operator_client, alice_cut, bob_cut
):
    services.credit_settle(
        site_id=alice_cut.site_id, amount=Decimal("3.20"), currency="EUR", memo="DR", dr_event_id=7
    )

    alices = alice_client.get(f"{API}credits/balance/").json()
    everyones = operator_client.get(f"{API}credits/balance/").json()
    bobs = operator_client.get(f"{API}credits/balance/?site={bob_cut.site_id}").json()

    assert alices == {
        "balances": [
            {"currency": "EUR", "amount": "3.20"},
            {"currency": "GBP", "amount": "95.00"},
        ]
    }
    # Bob's 24-hour cut earns £140
    assert everyones["balances"][1] == {"currency": "GBP", "amount": "235.00"}
    assert bobs == {"balances": [{"currency": "GBP", "amount": "140.00"}]}


def test_a_resident_asking_the_balance_of_another_residents_site_gets_the_400_of_a_missing_one(
    alice_client, bob_cut
):
    foreign = alice_client.get(f"{API}credits/balance/?site={bob_cut.site_id}")
    missing = alice_client.get(f"{API}credits/balance/?site=999999")

    assert "site" in errors_of(foreign)
    assert errors_of(foreign) == errors_of(missing)


def test_the_ledger_cannot_be_written_through_the_api(staff_client, alice_cut):
    entry = CreditEntry.objects.get(outage=alice_cut)

    assert staff_client.post(f"{API}credits/", {}).status_code == 405
    assert staff_client.delete(f"{API}credits/{entry.id}/").status_code == 405
    assert staff_client.delete(f"{API}outages/{alice_cut.id}/").status_code == 405


# --- sites/: credit_policy ----------------------------------------------------------------------


def test_a_site_has_no_policy_of_its_own_until_given_one(operator_client, alice_home):
    site = alice_home["site"]
    delhi = CreditPolicy.objects.get(name="Delhi")

    before = operator_client.get(f"{API}sites/{site.id}/").json()
    given = operator_client.patch(
        f"{API}sites/{site.id}/", {"credit_policy": delhi.id}, format="json"
    )
    listed = operator_client.get(f"{API}sites/").json()["results"]
    renamed = operator_client.patch(f"{API}sites/{site.id}/", {"name": "Alice's"}, format="json")
    cleared = operator_client.patch(
        f"{API}sites/{site.id}/", {"credit_policy": None}, format="json"
    )

    assert before["credit_policy"] is None
    assert given.json()["credit_policy"] == delhi.id
    assert {row["id"]: row["credit_policy"] for row in listed}[site.id] == delhi.id
    assert renamed.json()["credit_policy"] == delhi.id
    assert cleared.json()["credit_policy"] is None
    assert not SitePolicy.objects.filter(site=site).exists()


def test_a_site_is_created_with_its_policy(operator_client, feeder):
    delhi = CreditPolicy.objects.get(name="Delhi")

    with_policy = operator_client.post(
        f"{API}sites/",
        {"name": "New", "feeder": feeder.id, "credit_policy": delhi.id},
        format="json",
    )
    without = operator_client.post(f"{API}sites/", {"name": "Other"}, format="json")

    assert with_policy.status_code == 201, with_policy.content
    assert with_policy.json()["credit_policy"] == delhi.id
    assert SitePolicy.objects.get(site_id=with_policy.json()["id"]).policy == delhi
    assert without.json()["credit_policy"] is None


def test_an_unknown_policy_is_400_naming_credit_policy(operator_client, alice_home):
    response = operator_client.patch(
        f"{API}sites/{alice_home['site'].id}/", {"credit_policy": 999999}, format="json"
    )

    assert "credit_policy" in errors_of(response)
    assert not SitePolicy.objects.exists()


def test_a_resident_cannot_set_their_sites_policy(alice_client, alice_home):
    delhi = CreditPolicy.objects.get(name="Delhi")

    response = alice_client.patch(
        f"{API}sites/{alice_home['site'].id}/", {"credit_policy": delhi.id}, format="json"
    )

    assert response.status_code == 403
    assert not SitePolicy.objects.exists()


def test_the_schema_types_every_outages_answer(api_client_for, admin_user):
    schema = api_client_for(admin_user).get(f"{API}schema/?format=json").json()

    components = schema["components"]["schemas"]
    assert set(components["Outage"]["properties"]) == {
        "id",
        "kind",
        "site",
        "feeder",
        "transformer",
        "grid_outage",
        "sites_affected",
        "customer_minutes",
        "start",
        "end",
        "duration_s",
        "momentary",
        "status",
        "credit",
        "policy",
    }
    assert components["CreditPolicy"]["properties"]["tiers"]["items"] == {
        "$ref": "#/components/schemas/Tier"
    }
    assert set(components["Quote"]["properties"]) >= {"amount", "next_amount", "next_step_at"}
    assert "credit_policy" in components["Site"]["properties"]
    paths = schema["paths"]
    assert {
        "/api/v1/outages/",
        "/api/v1/outages/{id}/",
        "/api/v1/credit-policies/",
        "/api/v1/credit-policies/{id}/",
        "/api/v1/credits/",
        "/api/v1/credits/balance/",
    } <= set(paths)
