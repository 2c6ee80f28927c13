"""Site outages reconciled from power reports, and their settlement in the ledger."""

from datetime import timedelta
from decimal import Decimal

import pytest

from django.db import IntegrityError

from devices import services as device_services
from devices.models import Site
from outages import services
from outages.models import CreditEntry, CreditPolicy, Outage, PowerEvent
from outages.selectors import credit_balance
from tests.outages.conftest import at, reconcile


def outages(home):
    return list(
        Outage.objects.filter(site=home["site"])
        .order_by("started_at")
        .values_list("started_at", "ended_at", "momentary", "status")
    )


def entries(home):
    return list(
        CreditEntry.objects.filter(site=home["site"])
        .order_by("id")
        .values_list("outage__started_at", "amount", "currency", "revision")
    )


def test_an_ended_cut_is_stored_and_paid_once_by_the_policy(home, ofgem, report):
    # given a 24-hour cut seen by one device
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 24 * 60)

    # when the site is reconciled twice
    first = reconcile(home)
    second = reconcile(home)

    # then one ended outage, paid £95 + £45 once
    assert outages(home) == [(at(0), at(24 * 60), False, "ended")]
    assert entries(home) == [(at(0), Decimal("140.00"), "GBP", 1)]
    assert (first.created, len(first.entries)) == (1, 1)
    assert (second.created, second.updated, len(second.entries)) == (0, 0, 0)
    assert Outage.objects.get().credit_policy == ofgem


def test_an_open_cut_is_stored_and_not_paid_until_it_ends(home, ofgem, report):
    report(home["a"], "lost", 0)
    report(home["b"], "lost", 5)
    report(home["a"], "restored", 13 * 60)
    reconcile(home)

    assert outages(home) == [(at(0), None, False, "open")]
    assert entries(home) == []

    # the last device still without mains gets it back
    report(home["b"], "restored", 13 * 60 + 30)
    result = reconcile(home)

    assert result.updated == 1
    assert outages(home) == [(at(0), at(13 * 60 + 30), False, "ended")]
    assert entries(home) == [(at(0), Decimal("95.00"), "GBP", 1)]


def test_a_momentary_cut_is_kept_and_never_paid(home, report, settings):
    settings.OUTAGE_MOMENTARY_THRESHOLD = timedelta(minutes=5)
    zero_threshold = CreditPolicy.objects.create(
        name="Pays from the first minute",
        currency="EUR",
        threshold=timedelta(0),
        base_amount=Decimal("10.00"),
        is_default=True,
    )
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 4)

    reconcile(home)

    assert outages(home) == [(at(0), at(4), True, "ended")]
    assert entries(home) == []
    assert Outage.objects.get().credit_policy == zero_threshold


def test_a_late_earlier_report_moves_the_outage_start_and_pays_the_difference(home, ofgem, report):
    # given a 12-hour cut already paid £95
    report(home["a"], "lost", 12 * 60)
    report(home["a"], "restored", 24 * 60)
    reconcile(home)
    # when the second Pi replays that it lost mains 12 hours earlier still
    report(home["b"], "lost", 0)
    report(home["b"], "restored", 12 * 60 + 1)
    result = reconcile(home)

    # then the same outage now runs 24 hours, and its £45 more is one new entry: nothing voided
    assert outages(home) == [(at(0), at(24 * 60), False, "ended")]
    assert entries(home) == [
        (at(0), Decimal("95.00"), "GBP", 1),
        (at(0), Decimal("45.00"), "GBP", 2),
    ]
    assert (result.created, result.updated, result.voided) == (0, 1, 0)
    assert credit_balance([home["site"].id]) == {"GBP": Decimal("140.00")}


def test_a_late_report_that_lengthens_an_ended_cut_pays_the_difference(home, ofgem, report):
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 12 * 60)
    reconcile(home)
    # the second Pi was without mains until later, and reports it only now
    report(home["b"], "lost", 1)
    report(home["b"], "restored", 24 * 60)
    reconcile(home)

    assert outages(home) == [(at(0), at(24 * 60), False, "ended")]
    assert entries(home) == [
        (at(0), Decimal("95.00"), "GBP", 1),
        (at(0), Decimal("45.00"), "GBP", 2),
    ]


def test_a_late_earlier_restore_shortens_an_ended_cut_and_takes_the_difference_back(
    home, ofgem, report
):
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 24 * 60)
    reconcile(home)
    # the Pi's buffered report shows mains came back at 13 h; the 24 h one repeated a state
    report(home["a"], "restored", 13 * 60)
    reconcile(home)

    assert outages(home) == [(at(0), at(13 * 60), False, "ended")]
    assert entries(home) == [
        (at(0), Decimal("140.00"), "GBP", 1),
        (at(0), Decimal("-45.00"), "GBP", 2),
    ]


def test_a_void_outage_derived_again_is_paid_again(home, ofgem, report):
    # given two cuts of a, the later paid £95
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 30)
    report(home["a"], "lost", 60)
    report(home["a"], "restored", 60 + 12 * 60)
    reconcile(home)
    # b's cut bridging them merges the two: the later one is void and its £95 taken back...
    report(home["b"], "lost", 20)
    reconcile(home)
    assert [status for *_, status in outages(home)] == ["open", "void"]
    # ...until b's restore shows mains came back between them
    report(home["b"], "restored", 25)
    reconcile(home)

    assert outages(home) == [
        (at(0), at(30), False, "ended"),
        (at(60), at(60 + 12 * 60), False, "ended"),
    ]
    paid = {start: total for start, total in _sums(home).items()}
    assert paid == {at(0): Decimal("0"), at(60): Decimal("95.00")}
    assert [e[3] for e in entries(home) if e[0] == at(60)] == [1, 2, 3]


def _sums(home):
    totals = {}
    for start, amount, _currency, _revision in entries(home):
        totals[start] = totals.get(start, Decimal(0)) + amount
    for start, *_ in outages(home):
        totals.setdefault(start, Decimal(0))
    return totals


def test_without_any_policy_there_is_no_credit(home, report):
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 48 * 60)

    reconcile(home)

    assert outages(home) == [(at(0), at(48 * 60), False, "ended")]
    assert entries(home) == []


def test_a_policy_assigned_later_never_pays_cuts_settled_before_it(home, report):
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 24 * 60)
    reconcile(home)  # settled with no policy: nothing owed
    CreditPolicy.objects.filter(name="Ofgem normal weather").update(is_default=True)

    # a new cut reconciles the site again
    report(home["a"], "lost", 48 * 60)
    report(home["a"], "restored", 60 * 60)
    reconcile(home)

    assert entries(home) == [(at(48 * 60), Decimal("95.00"), "GBP", 1)]


def test_the_site_policy_wins_over_the_default(home, ofgem, report):
    delhi = CreditPolicy.objects.get(name="Delhi")
    services.site_credit_policy_set(site_id=home["site"].id, policy_id=delhi.id)
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 150)  # 2 h 30 min: 50 + 50 + 100

    reconcile(home)

    assert entries(home) == [(at(0), Decimal("200.00"), "INR", 1)]


def test_a_policy_for_widespread_cuts_pays_nothing_for_one_site(home, report):
    new_york = CreditPolicy.objects.get(name="New York")
    services.site_credit_policy_set(site_id=home["site"].id, policy_id=new_york.id)
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 5 * 24 * 60)  # $50 if it affected 20,000 sites

    reconcile(home)

    assert outages(home) == [(at(0), at(5 * 24 * 60), False, "ended")]
    assert entries(home) == []


def test_an_outage_keeps_the_policy_it_was_first_settled_under(home, ofgem, report):
    report(home["a"], "lost", 0)
    report(home["a"], "restored", 12 * 60)
    reconcile(home)
    # the site moves to Delhi's policy; a late report lengthens the cut to 24 h
    delhi = CreditPolicy.objects.get(name="Delhi")
    services.site_credit_policy_set(site_id=home["site"].id, policy_id=delhi.id)
    report(home["b"], "lost", 10)
    report(home["b"], "restored", 24 * 60)
    reconcile(home)

    assert [(e[1], e[2]) for e in entries(home)] == [
        (Decimal("95.00"), "GBP"),
        (Decimal("45.00"), "GBP"),
    ]


def test_new_power_report_reconciles_the_site_after_commit(
    home, ofgem, eager_celery, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        services.power_event_record(
            device_id=home["a"].id,
            site_id=home["site"].id,
            device_uid="pi-a1",
            state="lost",
            at=at(0),
        )
    assert outages(home) == [(at(0), None, False, "open")]

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.power_event_record(
            device_id=home["a"].id,
            site_id=home["site"].id,
            device_uid="pi-a1",
            state="restored",
            at=at(12 * 60),
        )
    assert outages(home) == [(at(0), at(12 * 60), False, "ended")]
    assert entries(home) == [(at(0), Decimal("95.00"), "GBP", 1)]
    # the power report's live message, the reconcile, and the outage-changed message
    assert len(callbacks) == 3

    # a repeated report is not new: nothing is queued
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        services.power_event_record(
            device_id=home["a"].id,
            site_id=home["site"].id,
            device_uid="pi-a1",
            state="restored",
            at=at(12 * 60),
        )
    assert callbacks == []
    assert PowerEvent.objects.count() == 2


def test_credit_settle_appends_only_the_difference_and_repeats_write_nothing(home):
    site_id = home["site"].id

    first = services.credit_settle(
        site_id=site_id, amount=Decimal("12.50"), currency="EUR", memo="DR event 7", dr_event_id=7
    )
    again = services.credit_settle(
        site_id=site_id, amount=Decimal("12.50"), currency="EUR", memo="DR event 7", dr_event_id=7
    )
    corrected = services.credit_settle(
        site_id=site_id, amount=Decimal("10.00"), currency="EUR", memo="DR event 7", dr_event_id=7
    )

    assert [(e.amount, e.revision) for e in first] == [(Decimal("12.50"), 1)]
    assert again == []
    assert [(e.amount, e.revision, e.memo) for e in corrected] == [
        (Decimal("-2.50"), 2, "correction: DR event 7")
    ]
    assert credit_balance([site_id]) == {"EUR": Decimal("10.00")}


def test_credit_settle_in_another_currency_takes_the_first_back(home):
    site_id = home["site"].id
    services.credit_settle(
        site_id=site_id, amount=Decimal("5.00"), currency="EUR", memo="m", dr_event_id=8
    )

    services.credit_settle(
        site_id=site_id, amount=Decimal("400.00"), currency="INR", memo="m", dr_event_id=8
    )

    assert credit_balance([site_id]) == {"INR": Decimal("400.00")}


def test_credit_settle_needs_exactly_one_reason(home):
    with pytest.raises(ValueError, match="exactly one reason"):
        services.credit_settle(site_id=home["site"].id, amount=Decimal(1), currency="EUR", memo="m")


def test_the_same_revision_of_one_reason_cannot_be_written_twice(home):
    fields = {
        "site": home["site"],
        "amount": Decimal(1),
        "currency": "EUR",
        "dr_event_id": 9,
        "revision": 1,
    }
    CreditEntry.objects.create(**fields)

    with pytest.raises(IntegrityError):
        CreditEntry.objects.create(**fields)


@pytest.fixture
def neighbours(alice_home, bob_home):
    """Three sites on one feeder, one Pi each: Alice's, Bob's and Carol's."""
    carol = Site.objects.create(name="Carol home", feeder=alice_home["site"].feeder)
    carol_pi, _ = device_services.device_create(uid="pi-c1", site=carol)
    return [alice_home["device"], bob_home["device"], carol_pi]


def test_a_policy_for_widespread_cuts_pays_once_late_reports_grow_the_grid_outage(
    neighbours, report, eager_celery, django_capture_on_commit_callbacks
):
    CreditPolicy.objects.create(
        name="Three sites or more",
        currency="GBP",
        threshold=timedelta(minutes=10),
        base_amount=Decimal("5.00"),
        min_sites_affected=3,
        is_default=True,
    )
    alice_pi, bob_pi, carol_pi = neighbours

    def paid(device):
        return list(
            CreditEntry.objects.filter(site=device.site_id)
            .order_by("revision")
            .values_list("amount", "revision")
        )

    # given Alice's and Bob's hour-long cuts a minute apart: a feeder outage of 2 sites
    with django_capture_on_commit_callbacks(execute=True):
        report(alice_pi, "lost", 0)
        report(alice_pi, "restored", 60)
        report(bob_pi, "lost", 1)
        report(bob_pi, "restored", 60)
    feeder_outage = Outage.objects.get(kind="feeder")
    assert feeder_outage.sites_affected == 2
    assert paid(alice_pi) == paid(bob_pi) == []

    # when Carol's Pi replays its cut, within the window: 3 sites
    with django_capture_on_commit_callbacks(execute=True):
        report(carol_pi, "lost", 1.5)
        report(carol_pi, "restored", 60)

    # then all three are paid, Alice and Bob by a settlement recomputed for them
    feeder_outage.refresh_from_db()
    assert feeder_outage.sites_affected == 3
    assert paid(alice_pi) == paid(bob_pi) == paid(carol_pi) == [(Decimal("5.0000"), 1)]

    # and when a late report of Carol's shows her cut started long before, out of the window,
    # the grid outage is 2 sites again: Alice's and Bob's credits are taken back by corrections
    with django_capture_on_commit_callbacks(execute=True):
        report(carol_pi, "lost", -30)
    assert paid(alice_pi) == paid(bob_pi) == [(Decimal("5.0000"), 1), (Decimal("-5.0000"), 2)]
    assert CreditEntry.objects.get(site=alice_pi.site_id, revision=2).memo.startswith(
        "correction: "
    )
